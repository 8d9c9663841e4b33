"""The runner: the CASM recipe as resumable stages.

This is the only module that builds clusters, computes and writes (with
the explicit write functions of storage, inference and training that it
calls).  Every stage writes under ``<run_root>/<stage>/`` and finishes by
writing ``<run_root>/<stage>/_stage.json`` with the hash of the recipe
sections it depends on (and of the stages before it).  A stage whose marker
exists with the same hash is skipped, so a killed run continues when the same
command runs again; ``start_from`` re-runs from a stage on.

Stage order (DESIGN.md §1, §3 "CASM training scheme")::

    aggregate → seasonal → pairs → train → predict_smos → transfer
              → predict_amsre → merge → validate → report → export
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from casm_cloud import storage
from casm_cloud.config import Recipe

log = logging.getLogger(__name__)

__all__ = ["STAGES", "run_recipe", "update_recipe", "RunContext", "stage_state"]


@dataclass
class RunContext:
    recipe: Recipe
    client: object = None
    dashboard: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    until: dt.date | None = None  # end of the data after monthly updates
    progress: bool = True           # stage lines on stdout, bars for chunked stages

    @property
    def end(self) -> dt.date:
        """Last day of data: the recipe's period end, or where updates took it."""
        return max(self.recipe.period.end, self.until or self.recipe.period.end)

    @property
    def so(self) -> dict:
        return dict(self.recipe.storage_options)

    def url(self, stage: str, *parts: str) -> str:
        return storage.join(self.recipe.run_root, stage, *parts)

    @property
    def window(self):
        return self.recipe.grid.window()


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _write_dataset(ds: xr.Dataset, url: str, so: dict, config_hash: str) -> None:
    """Write a lazy dataset to Zarr (computing it on the active cluster), then
    mark it complete.  Rewrites whatever was there."""
    storage.remove(url, so)
    ds = ds.copy()
    for v in ds.variables.values():
        v.encoding = {}
    ds.to_zarr(url, mode="w", consolidated=False, storage_options=so or None,
               encoding=storage.zarr_encoding(ds), zarr_format=3)
    storage.mark_complete(url, so, config_hash=config_hash)


def _open(ctx: RunContext, stage: str, name: str) -> xr.Dataset:
    return storage.open_zarr(ctx.url(stage, name), ctx.so, require_complete=True)


def _aggregate(ctx: RunContext, kind: str) -> xr.Dataset:
    """A source's n-day means, its channels in the recipe's order (the model's input order)."""
    return _open(ctx, "aggregate", f"{kind}.zarr")[_channels(ctx.recipe, kind)]


def _target_params(ctx: RunContext) -> xr.Dataset:
    """Seasonal parameters of the SMAP target, without the ``variable`` dim."""
    return _open(ctx, "seasonal", "smap.zarr").sel(variable="sm", drop=True)


def _agg_sources(recipe: Recipe) -> dict[str, str]:
    """Canonical source kind -> catalog entry name, for the entries in use."""
    s = recipe.sources
    out = {"smos": s.smos, "amsre": s.amsre, "amsr2": s.amsr2, "smap": s.smap}
    if s.truth:
        out["truth"] = s.truth
    return out


def _channels(recipe: Recipe, kind: str) -> list[str]:
    if kind == "smos":
        return list(recipe.channels.smos)
    if kind in ("amsre", "amsr2"):
        return list(recipe.channels.amsr)
    if kind == "smap":
        return ["sm"]
    if kind == "truth":
        return ["sm_l1"]
    raise KeyError(kind)


# --------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------
def _aggregated(ctx: RunContext, cat, kind: str, entry: str, start) -> xr.Dataset | None:
    """Lazy n-day means of one source on the window from ``start`` to ``ctx.end``.

    Only complete bins (ending on or before ``ctx.end``) are kept: a partial
    last bin comes with the next update, so stored bins never change.
    ``None`` when the source has no such bin.
    """
    from casm_cloud.aggregate import nday_mean
    from casm_cloud.catalog import open_source

    r = ctx.recipe
    ds = _on_window(ctx, open_source(cat, entry), kind)
    ds = ds[_channels(r, kind)].sel(time=slice(str(start), str(ctx.end)))
    if ds.sizes["time"] == 0:
        return None
    if kind != "truth" and r.sources.era5 and r.aggregate.frozen_skt_k is not None:
        ds = _unfrozen(ctx, cat, ds)
    n = r.aggregate.n_days
    out = nday_mean(ds, n, anchor=str(r.aggregate.anchor), min_count=r.aggregate.min_count)
    last_start = np.datetime64(ctx.end) + np.timedelta64(1 - n, "D")
    out = out.sel(time=slice(None, last_start))
    if out.sizes["time"] == 0:
        return None
    out = out.chunk(_chunks(r))
    out.attrs.update(ctx.window.identity())
    return out


def _on_window(ctx: RunContext, ds: xr.Dataset, kind: str) -> xr.Dataset:
    """A canonical source on the recipe's window (regridded if on another grid)."""
    if "y" not in ds.dims or "x" not in ds.dims:
        from casm_cloud.regrid import regrid_to_window

        return regrid_to_window(ds, ctx.window)
    return _select_window(ds, ctx.window, kind)


def _unfrozen(ctx: RunContext, cat, ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without its days of frozen soil (ERA5 daily-mean ``skt`` below the threshold).

    Days that ERA5 does not cover (yet: its latency is days) are kept.
    """
    from casm_cloud.catalog import open_source

    skt = _on_window(ctx, open_source(cat, ctx.recipe.sources.era5), "era5")["skt"]
    days = ds["time"].dt.floor("D").values
    skt = skt.reindex(time=days).assign_coords(time=ds["time"].values)
    return ds.where(~(skt < ctx.recipe.aggregate.frozen_skt_k))  # NaN skt: not frozen


def stage_aggregate(ctx: RunContext, h: str) -> None:
    """open → regrid (if not on the window) → anchored n-day means → Zarr."""
    from casm_cloud.catalog import open_catalog

    r = ctx.recipe
    cat = open_catalog(r.sources.catalog, storage_options=r.sources.storage_options)
    for kind, entry in _agg_sources(r).items():
        out = _aggregated(ctx, cat, kind, entry, r.period.start)
        if out is None:
            log.warning("aggregate: %s has no complete %d-day bin in %s..%s; skipped", kind,
                        r.aggregate.n_days, r.period.start, ctx.end)
            continue
        _write_dataset(out, ctx.url("aggregate", f"{kind}.zarr"), ctx.so, h)


def _next_bin(ctx: RunContext, stage: str, url: str) -> np.datetime64:
    """Start of the first n-day bin that a stage's store still needs.

    The bin after the stage's last finished run (its marker), or after the
    store's last time where that is earlier (a source that had no data at the
    end of the last run).  An update killed while it grew the store so writes
    the same bins again rather than leaving a hole.
    """
    a = ctx.recipe.aggregate
    step = np.timedelta64(a.n_days, "D")
    prev = (stage_state(ctx.recipe, stage) or {}).get("until", str(ctx.recipe.period.end))
    anchor = np.datetime64(a.anchor, "D")
    end = np.datetime64(prev, "D") + np.timedelta64(1, "D")  # exclusive
    k = (end - anchor).astype(int) // a.n_days                  # bins before k are complete
    last = storage.open_zarr(url, ctx.so)["time"].values[-1].astype("datetime64[D]")
    return min(anchor + k * step, last + step)


def update_aggregate(ctx: RunContext, h: str) -> None:
    """Append the new complete bins of every source to its aggregate store."""
    from casm_cloud.catalog import open_catalog

    r = ctx.recipe
    cat = open_catalog(r.sources.catalog, storage_options=r.sources.storage_options)
    for kind, entry in _agg_sources(r).items():
        url = ctx.url("aggregate", f"{kind}.zarr")
        if not storage.store_state(url, ctx.so)["exists"]:
            continue
        new = _aggregated(ctx, cat, kind, entry, _next_bin(ctx, "aggregate", url))
        added = 0 if new is None else storage.append_time(new, url, ctx.so, config_hash=h)
        log.info("update: %s gained %d bins", kind, added)


def _chunks(r: Recipe) -> dict[str, int]:
    return dict(r.predict.chunks)


def _select_window(ds: xr.Dataset, window, kind: str) -> xr.Dataset:
    """Cut the recipe's window out of a dataset on the same EASE2 grid."""
    from casm_cloud.grid import GridWindow

    if ds.sizes["y"] == window.shape[0] and ds.sizes["x"] == window.shape[1] and np.allclose(
            ds.y.values, window.y) and np.allclose(ds.x.values, window.x):
        return ds
    src = GridWindow.from_attrs(ds.attrs, (ds.sizes["y"], ds.sizes["x"]))
    if src.name != window.name:
        raise ValueError(f"source {kind!r} is on EASE2 {src.name}, the recipe on {window.name}")
    r0 = window.row_slice.start - src.row_slice.start
    c0 = window.col_slice.start - src.col_slice.start
    if r0 < 0 or c0 < 0 or r0 + window.shape[0] > src.shape[0] or c0 + window.shape[1] > src.shape[1]:
        raise ValueError(f"source {kind!r} ({src!r}) does not cover the recipe window {window!r}")
    out = ds.isel(y=slice(r0, r0 + window.shape[0]), x=slice(c0, c0 + window.shape[1]))
    out.attrs.update(window.identity())
    return out


def stage_seasonal(ctx: RunContext, h: str) -> None:
    from casm_cloud.seasonal import fit_seasonal_cycle

    r = ctx.recipe
    for kind in _agg_sources(r):
        url = ctx.url("aggregate", f"{kind}.zarr")
        if not storage.store_state(url, ctx.so)["complete"]:
            continue
        ds = _aggregate(ctx, kind)
        params = fit_seasonal_cycle(ds.to_dataarray("variable"), min_obs=r.seasonal.min_obs)
        params.attrs.update(ctx.window.identity())
        _write_dataset(params, ctx.url("seasonal", f"{kind}.zarr"), ctx.so, h)


# Networks trained directly against SMAP: name -> input source kind.
_DIRECT_NETS = {"nn_smos": "smos", "nn_amsr2": "amsr2"}


def _smap_overlap(ctx: RunContext, kind: str):
    t = ctx.recipe
    return slice(str(max(t.period.start, dt.date(2015, 3, 31))), str(t.period.end))


def stage_pairs(ctx: RunContext, h: str) -> None:
    from casm_cloud.pairs import build_pairs, write_pairs

    r = ctx.recipe
    smap = _aggregate(ctx, "smap")
    smap_p = _target_params(ctx)
    for net, kind in _DIRECT_NETS.items():
        inputs = _aggregate(ctx, kind)
        params = _open(ctx, "seasonal", f"{kind}.zarr")
        sl = _smap_overlap(ctx, kind)
        pairs = build_pairs(inputs.sel(time=sl), smap["sm"].sel(time=sl), params, smap_p,
                            **_split_kwargs(r))
        write_pairs(pairs, ctx.url("pairs", f"{net}.zarr"), storage_options=ctx.so)


def _split_kwargs(r: Recipe) -> dict:
    t = r.training
    return dict(split=t.split, block_size=t.block_size, val_fraction=t.val_fraction,
                test_fraction=t.test_fraction, seed=t.seed)


def _train_kwargs(r: Recipe) -> dict:
    t = r.training
    return dict(hidden=tuple(r.network.hidden), epochs=t.epochs, batch_size=t.batch_size,
                lr=t.lr, patience=t.patience)


def stage_train(ctx: RunContext, h: str) -> None:
    from casm_cloud.training import train_ensemble

    r = ctx.recipe
    for net in _DIRECT_NETS:
        train_ensemble(ctx.url("pairs", f"{net}.zarr"), ctx.url("train", net),
                       n_members=r.ensemble.members, seed=r.training.seed,
                       client=ctx.client, storage_options=ctx.so, **_train_kwargs(r))


def _members(ctx: RunContext, net: str) -> list[str]:
    fs, root = storage.url_to_fs(ctx.url("train", net), ctx.so)
    names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    members = [storage.join(ctx.url("train", net), n) for n in names if n.startswith("member")]
    if not members:
        raise ValueError(f"no trained members under {ctx.url('train', net)}")
    return members


def _predict(ctx: RunContext, h: str, net: str, kind: str, period: slice, out: str) -> None:
    from casm_cloud.inference import predict_to_zarr

    r = ctx.recipe
    inputs = _aggregate(ctx, kind).sel(time=period)
    params = {"inputs": _open(ctx, "seasonal", f"{kind}.zarr"),
              "target": _open(ctx, "seasonal", "smap.zarr")}
    # A store this stage made under another recipe is replaced (the runner decided to
    # re-run); one of this recipe resumes its finished chunks, or grows (updates).
    state = storage.store_state(out, ctx.so)
    with _chunk_bar(ctx, net) as progress:
        predict_to_zarr(inputs, _members(ctx, net), params, out, n_noise=r.ensemble.n_noise,
                        noise_scale=r.ensemble.noise_scale, batch_size=r.predict.batch_size,
                        device=r.predict.device, precision=r.predict.precision, resume=True,
                        overwrite=state["exists"] and state["config_hash"] != h, append=True,
                        storage_options=ctx.so, client=ctx.client, config_hash=h,
                        progress=progress)


@contextlib.contextmanager
def _chunk_bar(ctx: RunContext, what: str):
    """A progress bar over a stage's chunks: yields ``progress(done, total)`` or None."""
    if not ctx.progress:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(desc=f"[casm-cloud]   {what}", unit="chunk", leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def stage_predict_smos(ctx: RunContext, h: str) -> None:
    r = ctx.recipe
    sl = slice(str(max(r.period.start, r.periods.smos_from)), str(ctx.end))
    _predict(ctx, h, "nn_smos", "smos", sl, ctx.url("predict_smos", "nn_smos.zarr"))


def stage_transfer(ctx: RunContext, h: str) -> None:
    """Fine-tune each NN_AMSR2 member on AMSR-E TB → NN_SMOS output (overlap)."""
    from casm_cloud.pairs import build_pairs, write_pairs
    from casm_cloud.training import fine_tune

    r = ctx.recipe
    tp = r.periods.transfer
    sl = slice(str(max(tp.start, r.period.start)), str(min(tp.end, r.period.end)))
    target = _open(ctx, "predict_smos", "nn_smos.zarr")["sm"].sel(time=sl)
    inputs = _aggregate(ctx, "amsre").sel(time=sl)
    pairs = build_pairs(inputs, target, _open(ctx, "seasonal", "amsre.zarr"),
                        _target_params(ctx), **_split_kwargs(r))
    url = ctx.url("pairs", "nn_amsre_transfer.zarr")
    write_pairs(pairs, url, storage_options=ctx.so)
    for i, member in enumerate(_members(ctx, "nn_amsr2")):
        fine_tune(member, url, freeze_first=r.training.freeze_first,
                  epochs=r.training.fine_tune_epochs,
                  out_path=storage.join(ctx.url("train", "nn_amsre"), f"member_{i:02d}"),
                  batch_size=r.training.batch_size, lr=r.training.lr,
                  patience=r.training.patience, storage_options=ctx.so)


def stage_predict_amsre(ctx: RunContext, h: str) -> None:
    r = ctx.recipe
    sl = slice(str(r.period.start), str(min(ctx.end, r.periods.amsre_until)))
    _predict(ctx, h, "nn_amsre", "amsre", sl, ctx.url("predict_amsre", "nn_amsre.zarr"))


def _eras(ctx: RunContext) -> dict[str, xr.Dataset]:
    eras = {}
    for net, stage in (("nn_amsre", "predict_amsre"), ("nn_smos", "predict_smos")):
        url = ctx.url(stage, f"{net}.zarr")
        if storage.store_state(url, ctx.so)["complete"]:
            eras[net] = storage.open_zarr(url, ctx.so)
    return eras


def _merged(ctx: RunContext) -> xr.Dataset:
    from casm_cloud.merge import merge_eras

    product = merge_eras(_eras(ctx))
    product.attrs.update(ctx.window.identity())
    return product.chunk(_chunks(ctx.recipe))


def stage_merge(ctx: RunContext, h: str) -> None:
    from casm_cloud.schema import validate

    _write_dataset(_merged(ctx), ctx.recipe.output("product"), ctx.so, h)
    validate(storage.open_zarr(ctx.recipe.output("product"), ctx.so), "product")


def update_merge(ctx: RunContext, h: str) -> None:
    """Append the product's new time bins (the eras' times after its last one)."""
    from casm_cloud.schema import validate

    url = ctx.recipe.output("product")
    merged = _merged(ctx)
    new = merged.sel(time=merged["time"] >= _next_bin(ctx, "merge", url))
    storage.append_time(new, url, ctx.so, config_hash=h)
    validate(storage.open_zarr(url, ctx.so), "product")


def stage_validate(ctx: RunContext, h: str) -> None:
    from casm_cloud.validation import stations as st
    from casm_cloud.validation import validate_product

    r = ctx.recipe
    if not r.sources.stations:
        log.info("validate: no stations in the recipe; skipped")
        return
    product = storage.open_zarr(r.output("product"), ctx.so)
    ds = st.read_ismn(r.sources.stations, depth=tuple(r.validation.depth))
    sel = st.select_stations(ds, good_fraction=r.validation.good_fraction,
                             min_obs=r.validation.min_obs, n_days=r.aggregate.n_days,
                             anchor=str(r.aggregate.anchor))
    table = validate_product(product, sel, variable="sm")
    fs, path = storage.url_to_fs(ctx.url("validate", "metrics.csv"), ctx.so)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        table.to_csv(f, index=False)
    ctx.summary["validation"] = table


def stage_report(ctx: RunContext, h: str) -> None:
    from casm_cloud.report import scores_against_truth, write_report

    r = ctx.recipe
    product = storage.open_zarr(r.output("product"), ctx.so)
    truth = None
    if r.sources.truth:
        truth = _aggregate(ctx, "truth")
        ctx.summary["scores"] = scores_against_truth(product, truth,
                                                     sensor_changes=_sensor_changes(r))
    validation = None
    fs, path = storage.url_to_fs(ctx.url("validate", "metrics.csv"), ctx.so)
    if fs.exists(path):
        import pandas as pd

        with fs.open(path) as f:
            validation = pd.read_csv(f)
    ctx.summary["report"] = write_report(
        r.output("report"), product=product, truth=truth, validation=validation,
        sensor_changes=_sensor_changes(r), scores=ctx.summary.get("scores"),
        title=f"casm_cloud: {r.name}")


def _sensor_changes(r: Recipe) -> dict[str, str]:
    """Where the merged record changes network: SMOS joins, then AMSR-E leaves."""
    return {"AMSR-E → AMSR-E + SMOS": str(r.periods.smos_from),
            "AMSR-E + SMOS → SMOS": str(r.periods.amsre_until)}


def stage_export(ctx: RunContext, h: str) -> None:
    r = ctx.recipe
    export_casm(r.output("product"), r.output("export"), ctx.so)


def update_export(ctx: RunContext, h: str) -> None:
    """Re-export the years the update touched (from the previous end's year on)."""
    r = ctx.recipe
    done = stage_state(r, "export") or {}
    since = dt.date.fromisoformat(done.get("until", str(r.period.end))).year
    export_casm(r.output("product"), r.output("export"), ctx.so,
                years=range(since, ctx.end.year + 1))


def export_casm(product_url: str, out: str, storage_options: dict | None = None, *,
                years=None) -> list[str]:
    """Write the published CASM layout, one netCDF file per year, under ``out``.

    Each year is computed and written on its own, so memory is bounded by one
    year of the window.  ``years`` limits the export to those years.
    """
    import os
    import tempfile

    from casm_cloud.merge import to_casm_layout

    so = dict(storage_options or {})
    casm = to_casm_layout(storage.open_zarr(product_url, so))
    fs, root = storage.url_to_fs(out, so)
    fs.makedirs(root, exist_ok=True)
    written = []
    for year in np.unique(casm["date"].dt.year.values):
        if years is not None and year not in years:
            continue
        part = casm.sel(date=str(year))
        enc = {v: {"zlib": True, "complevel": 4, "dtype": "float32"} for v in part.data_vars}
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, f"CASM_SM_{year}.nc")
            part.to_netcdf(local, encoding=enc, engine="netcdf4")
            target = f"{root}/CASM_SM_{year}.nc"
            fs.put(local, target)
        written.append(storage.join(out, f"CASM_SM_{year}.nc"))
    return written


@dataclass(frozen=True)
class Stage:
    """A stage: what it reads of the recipe, which stages' outputs it reads, its run.

    ``update`` extends the stage's output to new months (``casm-cloud update``);
    ``None`` keeps it as it is (seasonal parameters and models are not refitted),
    ``"rerun"`` runs it again on the grown inputs.
    """

    name: str
    sections: tuple[str, ...]
    after: tuple[str, ...]
    run: Callable[[RunContext, str], None]
    update: Callable[[RunContext, str], None] | str | None = None


_SPLIT = ("training.split", "training.block_size", "training.val_fraction",
          "training.test_fraction", "training.seed")
_FIT = ("training.epochs", "training.batch_size", "training.lr", "training.patience",
        "training.seed")
_PREDICT = ("ensemble.n_noise", "ensemble.noise_scale", "predict")
_AGG_SOURCES = ("sources.catalog", "sources.storage_options", "sources.era5", "sources.smos",
                "sources.amsre", "sources.amsr2", "sources.smap", "sources.truth")

STAGES: tuple[Stage, ...] = (
    Stage("aggregate", (*_AGG_SOURCES, "grid", "period", "channels", "aggregate"), (),
          stage_aggregate, update_aggregate),
    Stage("seasonal", ("seasonal",), ("aggregate",), stage_seasonal),
    Stage("pairs", _SPLIT, ("aggregate", "seasonal"), stage_pairs),
    Stage("train", ("network", *_FIT, "ensemble.members"), ("pairs",), stage_train),
    Stage("predict_smos", (*_PREDICT, "periods.smos_from"), ("aggregate", "seasonal", "train"),
          stage_predict_smos, stage_predict_smos),
    Stage("transfer", (*_SPLIT, *_FIT, "periods.transfer", "training.fine_tune_epochs",
                       "training.freeze_first"), ("predict_smos",), stage_transfer),
    Stage("predict_amsre", (*_PREDICT, "periods.amsre_until"),
          ("aggregate", "seasonal", "transfer"), stage_predict_amsre, stage_predict_amsre),
    Stage("merge", ("outputs.product",), ("predict_smos", "predict_amsre"), stage_merge,
          update_merge),
    Stage("validate", ("validation", "sources.stations", "aggregate"), ("merge",),
          stage_validate, "rerun"),
    Stage("report", ("outputs.report", "periods.smos_from", "periods.amsre_until"),
          ("merge", "validate"), stage_report, "rerun"),
    Stage("export", ("outputs.export",), ("merge",), stage_export, update_export),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_hashes(recipe: Recipe) -> dict[str, str]:
    """Each stage's hash: the recipe keys it reads and the hashes of the stages it reads.

    A change re-runs exactly the stages that read the changed keys and those
    downstream of them (changing ``validation.min_obs`` re-runs validate and
    report, never training or the export).
    """
    out: dict[str, str] = {}
    for s in STAGES:
        own = recipe.section_hash(*s.sections)
        ups = ",".join(out[u] for u in s.after)
        out[s.name] = hashlib.sha256(f"{s.name}|{own}|{ups}".encode()).hexdigest()[:16]
    return out


def _marker_url(recipe: Recipe, name: str) -> str:
    return storage.join(recipe.run_root, name, "_stage.json")


def stage_state(recipe: Recipe, name: str) -> dict | None:
    """The stage's marker (``config_hash``, ``seconds``, ``finished``, ``until``), or None."""
    fs, path = storage.url_to_fs(_marker_url(recipe, name), dict(recipe.storage_options))
    if not fs.exists(path):
        return None
    return json.loads(fs.cat(path))


def _mark_stage(recipe: Recipe, name: str, h: str, seconds: float,
                until: dt.date | None = None) -> None:
    fs, path = storage.url_to_fs(_marker_url(recipe, name), dict(recipe.storage_options))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    marker = {"stage": name, "config_hash": h, "seconds": round(seconds, 2),
              "finished": dt.datetime.now(dt.UTC).isoformat()}
    if until is not None:
        marker["until"] = str(until)
    fs.pipe(path, json.dumps(marker).encode())


def _recorded_until(recipe: Recipe) -> dt.date | None:
    """How far updates took the run (the aggregate stage's marker), if at all."""
    st = stage_state(recipe, "aggregate")
    return dt.date.fromisoformat(st["until"]) if st and st.get("until") else None


def _with_client(recipe: Recipe, client, fn: Callable[[RunContext], RunContext]) -> RunContext:
    """Run ``fn`` on a context with ``client``, or on a cluster built from the recipe."""
    if client is not None:
        return fn(RunContext(recipe, client, getattr(client, "dashboard_link", None)))
    from casm_cloud.cluster import get_client

    c = recipe.cluster
    with get_client(c.kind, n_workers=c.n_workers, threads_per_worker=c.threads_per_worker,
                    memory_limit=c.memory_limit, gateway_options=dict(c.gateway)) as (cl, dash):
        return fn(RunContext(recipe, cl, dash))


def _say(progress: bool, name: str, what: str) -> None:
    if progress:
        print(f"[casm-cloud] {name:<14} {what}", flush=True)


def run_recipe(recipe: Recipe, *, start_from: str | None = None, until: str | None = None,
               client=None, progress: bool = True) -> RunContext:
    """Run (or resume) the recipe; returns the context with timings and summary.

    Parameters
    ----------
    recipe : Recipe
    start_from : str, optional
        Re-run this stage and all after it, whatever their markers say.
    until : str, optional
        Stop after this stage.
    client : distributed.Client, optional
        Use this client; otherwise one is built from ``recipe.cluster``.
    progress : bool
        Print one line per stage.

    Raises
    ------
    ValueError
        For an unknown stage name.
    """
    for name in (start_from, until):
        if name is not None and name not in STAGE_NAMES:
            raise ValueError(f"unknown stage {name!r}; expected one of {', '.join(STAGE_NAMES)}")
    return _with_client(recipe, client, lambda ctx: _run(ctx, start_from, until, progress))


def _run(ctx: RunContext, start_from, until, progress) -> RunContext:
    ctx.progress = progress
    hashes = stage_hashes(ctx.recipe)
    ctx.until = _recorded_until(ctx.recipe)
    forced = False
    for s in STAGES:
        forced = forced or s.name == start_from
        st = stage_state(ctx.recipe, s.name)
        if not forced and st is not None and st.get("config_hash") == hashes[s.name]:
            log.info("stage %s: up to date, skipped", s.name)
            _say(progress, s.name, "up to date")
        else:
            _say(progress, s.name, "running ...")
            t0 = time.perf_counter()
            s.run(ctx, hashes[s.name])
            ctx.timings[s.name] = time.perf_counter() - t0
            _mark_stage(ctx.recipe, s.name, hashes[s.name], ctx.timings[s.name], ctx.until)
            _say(progress, s.name, f"done in {ctx.timings[s.name]:.1f} s")
        if s.name == until:
            break
    return ctx


def run_demo(out: str = "casm-demo", *, start_from: str | None = None, until: str | None = None,
             cluster: str | None = None, client=None) -> RunContext:
    """The embedded default: simulate the demo region if needed, then run it.

    Layout under ``out``: ``sources/`` (simulated inputs, ``truth.zarr``,
    ``stations/``, ``catalog.yaml``), ``run/`` (stage outputs),
    ``product.zarr``, ``casm/`` (CASM-layout export), ``report/index.html``.
    """
    from casm_cloud.config import demo_recipe, recipe_from_dict

    recipe = demo_recipe(out)
    if cluster:
        recipe = recipe_from_dict({**recipe.model_dump(mode="json"), "cluster": {"kind": cluster}})
    sources = storage.join(out, "sources")
    if not storage.exists(recipe.sources.catalog):
        from casm_cloud.simulate import write_simulation

        print(f"[casm-cloud] simulating the demo region into {sources} ...", flush=True)
        t0 = time.perf_counter()
        write_simulation(sources, region=recipe.grid.region, grid=recipe.grid.name,
                         start=str(recipe.period.start), end=str(recipe.period.end), seed=0,
                         amsre_ease1=True)
        print(f"[casm-cloud] simulate       done in {time.perf_counter() - t0:.1f} s", flush=True)
    return run_recipe(recipe, start_from=start_from, until=until, client=client)


def update_recipe(recipe: Recipe, until, *, client=None, progress: bool = True) -> RunContext:
    """Extend a finished run with new months up to ``until`` (the monthly update).

    Stored seasonal parameters and trained networks are reused as they are;
    the new complete n-day bins of every source are appended to the
    aggregates, predicted (only new chunks, and a grown last time chunk), and
    appended to the product; validation, report and the export of the
    touched years are redone.  Each stage records how far it got, so running
    the same update again changes nothing, and a killed update continues.

    Parameters
    ----------
    recipe : Recipe
        The recipe of a finished run (same hashes as its stage markers).
    until : str or datetime.date
        Last day of new data to take.
    client : distributed.Client, optional
    progress : bool

    Raises
    ------
    ValueError
        If ``until`` is not a date after the recipe's period.
    casm_cloud.storage.StoreError
        If the run is not finished with this recipe (run it first).
    """
    try:
        until = until if isinstance(until, dt.date) else dt.date.fromisoformat(str(until))
    except ValueError:
        raise ValueError(f"--until {until!r}: expected a date YYYY-MM-DD") from None
    if until <= recipe.period.end:
        raise ValueError(f"--until {until}: the recipe's period already ends on "
                         f"{recipe.period.end}; an update extends past it")
    hashes = stage_hashes(recipe)
    for s in STAGES:
        st = stage_state(recipe, s.name)
        if st is None or st.get("config_hash") != hashes[s.name]:
            why = "has not run" if st is None else "ran with another recipe"
            raise storage.StoreError(
                f"stage {s.name!r} {why} under {recipe.run_root}: run the recipe first "
                f"(casm-cloud run), then update it")

    def go(ctx: RunContext) -> RunContext:
        ctx.until, ctx.progress = until, progress
        for s in STAGES:
            done = dt.date.fromisoformat(stage_state(recipe, s.name).get(
                "until", str(recipe.period.end)))
            if done >= until:
                _say(progress, s.name, f"up to date (until {done})")
                continue
            if s.update is None:
                _say(progress, s.name, "kept (not refitted)")
                _mark_stage(recipe, s.name, hashes[s.name], 0.0, until)
                continue
            _say(progress, s.name, f"updating to {until} ...")
            t0 = time.perf_counter()
            (s.run if s.update == "rerun" else s.update)(ctx, hashes[s.name])
            ctx.timings[s.name] = time.perf_counter() - t0
            _mark_stage(recipe, s.name, hashes[s.name], ctx.timings[s.name], until)
            _say(progress, s.name, f"done in {ctx.timings[s.name]:.1f} s")
        return ctx

    return _with_client(recipe, client, go)
