"""The network stages: pairs, train, predict (SMOS, AMSR-E) and the AMSR-E transfer."""

from __future__ import annotations

import xarray as xr

from casm_cloud import storage
from casm_cloud.recipes.casm.common import (
    DIRECT_NETS,
    SMAP_FROM,
    _aggregate,
    _channels,
    _fit,
    _members,
    _open,
    _predict,
    _split,
)
from casm_cloud.recipes.stage import Context


def pairs_params(r) -> dict:
    return dict(channels={k: _channels(r, k) for k in DIRECT_NETS.values()},
                latlon=r.channels.latlon, start=max(r.period.start, SMAP_FROM),
                end=r.period.end, **_split(r))


def _target_params(ctx: Context) -> xr.Dataset:
    """Seasonal parameters of the SMAP target, without the ``variable`` dim."""
    return _open(ctx, "seasonal", "smap.zarr").sel(variable="sm", drop=True)


def run_pairs(ctx: Context, p: dict) -> None:
    from casm_cloud.pairs import build_pairs, write_pairs

    sl = slice(str(p["start"]), str(p["end"]))
    smap = _aggregate(ctx, "smap", ["sm"])["sm"].sel(time=sl)
    split = {k: p[k] for k in ("split", "block_size", "val_fraction", "test_fraction", "seed")}
    for net, kind in DIRECT_NETS.items():
        inputs = _aggregate(ctx, kind, p["channels"][kind]).sel(time=sl)
        pairs = build_pairs(inputs, smap, _open(ctx, "seasonal", f"{kind}.zarr"),
                            _target_params(ctx), include_latlon=p["latlon"], **split)
        with ctx.tasks_bar():
            write_pairs(pairs, ctx.out(f"{net}.zarr"), storage_options=ctx.so,
                        config_hash=ctx.config_hash)


def train_params(r) -> dict:
    return dict(hidden=list(r.network.hidden), activation=r.network.activation,
                n_members=r.ensemble.members, seed=r.training.seed, **_fit(r))


def run_train(ctx: Context, p: dict) -> None:
    """A deep ensemble per directly trained network, members as parallel worker tasks."""
    from casm_cloud.training import train_ensemble

    for net in DIRECT_NETS:
        train_ensemble(ctx.url("pairs", f"{net}.zarr"), ctx.out(net), client=ctx.client,
                       storage_options=ctx.so, **p)


def predict_smos_params(r) -> dict:
    return dict(channels=_channels(r, "smos"), start=max(r.period.start, r.periods.smos_from),
                end=r.period.end, until=None, **_predict(r))


def predict_amsre_params(r) -> dict:
    return dict(channels=_channels(r, "amsr2"), start=r.period.start, end=r.period.end,
                until=r.periods.amsre_until, **_predict(r))


def _run_predict(ctx: Context, p: dict, net: str, kind: str, members_stage: str) -> None:
    from casm_cloud.inference import predict_to_zarr

    end = ctx.end(p["end"]) if p["until"] is None else min(ctx.end(p["end"]), p["until"])
    inputs = _aggregate(ctx, kind, p["channels"]).sel(time=slice(str(p["start"]), str(end)))
    params = {"inputs": _open(ctx, "seasonal", f"{kind}.zarr"),
              "target": _open(ctx, "seasonal", "smap.zarr")}
    out = ctx.out(f"{net}.zarr")
    # A store this stage made under another recipe is replaced (the runner decided to
    # re-run); one of this recipe resumes its finished chunks, or grows (updates).
    state = storage.store_state(out, ctx.so)
    kw = {k: p[k] for k in ("n_noise", "noise_scale", "batch_size", "device", "precision",
                            "tolerance")}
    with ctx.chunk_bar(net) as progress:
        done = predict_to_zarr(inputs, _members(ctx, members_stage, net), params, out,
                               resume=True, append=True,
                               overwrite=state["exists"] and state["config_hash"] != ctx.config_hash,
                               storage_options=ctx.so, client=ctx.client,
                               config_hash=ctx.config_hash, progress=progress, **kw)
    ctx.say(f"precision {done.precision}")


def run_predict_smos(ctx: Context, p: dict) -> None:
    _run_predict(ctx, p, "nn_smos", "smos", "train")


def run_predict_amsre(ctx: Context, p: dict) -> None:
    _run_predict(ctx, p, "nn_amsre", "amsre", "transfer")


# --------------------------------------------------------------------------- transfer
def transfer_params(r) -> dict:
    tp = r.periods.transfer
    return dict(channels=_channels(r, "amsre"), latlon=r.channels.latlon,
                start=max(tp.start, r.period.start),
                end=min(tp.end, r.period.end), freeze_first=r.training.freeze_first,
                fine_tune=_fit(r, "fine_tune_epochs"), **_split(r))


def run_transfer(ctx: Context, p: dict) -> None:
    """Fine-tune each NN_AMSR2 member on AMSR-E TB → NN_SMOS output over their overlap."""
    from casm_cloud.pairs import build_pairs, write_pairs
    from casm_cloud.training import fine_tune_ensemble

    sl = slice(str(p["start"]), str(p["end"]))
    target = _open(ctx, "predict_smos", "nn_smos.zarr")["sm"].sel(time=sl)
    inputs = _aggregate(ctx, "amsre", p["channels"]).sel(time=sl)
    split = {k: p[k] for k in ("split", "block_size", "val_fraction", "test_fraction", "seed")}
    pairs = build_pairs(inputs, target, _open(ctx, "seasonal", "amsre.zarr"),
                        _target_params(ctx), include_latlon=p["latlon"], **split)
    url = ctx.out("pairs.zarr")
    with ctx.tasks_bar():
        write_pairs(pairs, url, storage_options=ctx.so, config_hash=ctx.config_hash)
    fine_tune_ensemble(_members(ctx, "train", "nn_amsr2"), url, ctx.out("nn_amsre"),
                       client=ctx.client, storage_options=ctx.so,
                       freeze_first=p["freeze_first"], **p["fine_tune"])
