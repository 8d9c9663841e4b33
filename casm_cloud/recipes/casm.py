"""The CASM recipe (Skulovich & Gentine 2023) as stages on the runner.

Each stage is ``params(recipe) -> dict`` (exactly what it passes to library
code) and ``run(ctx, p)``: open its inputs, call library code, hand the lazy
result to storage.  The stage table (what each reads, writes and which recipe
keys it uses) is in docs/architecture.md, "The CASM recipe".

    aggregate → seasonal → pairs → train → predict_smos → transfer
              → predict_amsre → merge → validate → report → export
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import xarray as xr

from casm_cloud import storage
from casm_cloud.config import DEFAULT_OUTPUTS
from casm_cloud.recipes.runner import Context, Stage

log = logging.getLogger(__name__)

__all__ = ["STAGES", "check", "demo_sources"]

#: SMAP's science data start: the networks trained against SMAP use this overlap.
SMAP_FROM = dt.date(2015, 3, 31)
#: Networks trained directly against SMAP: name -> input source kind.
DIRECT_NETS = {"nn_smos": "smos", "nn_amsr2": "amsr2"}


# --------------------------------------------------------------------------- shared params
#: The variables each canonical source contributes, in the model's input order.
_CHANNELS = {"smos": lambda r: list(r.channels.smos), "amsre": lambda r: list(r.channels.amsr),
             "amsr2": lambda r: list(r.channels.amsr), "smap": lambda r: ["sm"],
             "truth": lambda r: ["sm_l1"]}


def _channels(r, kind: str) -> list[str]:
    return _CHANNELS[kind](r)


def _kinds(r) -> list[str]:
    """The canonical sources the recipe aggregates (truth only when named)."""
    return ["smos", "amsre", "amsr2", "smap", *(["truth"] if r.sources.truth else [])]


def _split(r) -> dict:
    t = r.training
    return dict(split=t.split, block_size=t.block_size, val_fraction=t.val_fraction,
                test_fraction=t.test_fraction, seed=t.seed)


def _fit(r, epochs: str = "epochs") -> dict:
    """The fit loop's arguments; ``epochs`` names the key of the epoch count."""
    t = r.training
    return dict(epochs=getattr(t, epochs), batch_size=t.batch_size, lr=t.lr,
                patience=t.patience)


def _predict(r) -> dict:
    return dict(n_noise=r.ensemble.n_noise, noise_scale=r.ensemble.noise_scale,
                batch_size=r.predict.batch_size, device=r.predict.device,
                precision=r.predict.precision, tolerance=r.predict.tolerance)


def _bins(r) -> dict:
    return dict(n_days=r.aggregate.n_days, anchor=r.aggregate.anchor)


def _sensor_changes(r) -> dict[str, str]:
    """Where the merged record changes network: SMOS joins, then AMSR-E leaves."""
    return {"AMSR-E → AMSR-E + SMOS": str(r.periods.smos_from),
            "AMSR-E + SMOS → SMOS": str(r.periods.amsre_until)}


def _eras(r) -> dict[str, str | None]:
    """The record's eras, each from its first day: the sensor changes and SMAP's start."""
    return {"AMSR-E": None, "AMSR-E + SMOS": str(r.periods.smos_from),
            "SMOS": str(r.periods.amsre_until), "SMOS, SMAP years": str(SMAP_FROM)}


def _product(ctx: Context, p: dict) -> str:
    """The product's URL: ``outputs.product``, or ``<run_root>/product.zarr``."""
    return ctx.output(p["product"], DEFAULT_OUTPUTS["product"])


def _open(ctx: Context, stage: str, name: str) -> xr.Dataset:
    return storage.open_zarr(ctx.url(stage, name), ctx.so, require_complete=True)


def _aggregate(ctx: Context, kind: str, channels: list[str]) -> xr.Dataset:
    """A source's n-day means, its channels in the recipe's order (the model's input order)."""
    return _open(ctx, "aggregate", f"{kind}.zarr")[channels]


# --------------------------------------------------------------------------- aggregate
def aggregate_params(r) -> dict:
    s, a = r.sources, r.aggregate
    return dict(catalog=s.catalog, catalog_options=dict(s.storage_options),
                entries={k: getattr(s, k) for k in _kinds(r)},
                channels={k: _channels(r, k) for k in _kinds(r)},
                era5=s.era5 if a.frozen_skt_k is not None else None,
                frozen_skt_k=a.frozen_skt_k, window=r.grid.window(), start=r.period.start,
                end=r.period.end, min_count=a.min_count, chunks=dict(r.predict.chunks),
                **_bins(r))


def _aggregated(p: dict, cat, kind: str, start, end) -> xr.Dataset | None:
    """Lazy n-day means of one source on the window, complete bins only (None: no bin).

    A partial last bin comes with the next update, so stored bins never change.
    """
    from casm_cloud.aggregate import nday_mean, screen_frozen
    from casm_cloud.catalog import SourceError, open_source
    from casm_cloud.regrid import on_window

    entry = p["entries"][kind]
    # window, period and variables pushed down: the adapter reads only what is asked
    try:
        ds = open_source(cat, entry, window=p["window"], period=(start, end),
                         variables=p["channels"][kind])
    except SourceError as err:
        if "no data in the period" not in str(err) and "no time step" not in str(err):
            raise
        return None  # a source without data in these months (an update past its end)
    ds = on_window(ds, p["window"], name=f"catalog entry {entry!r}")
    ds = ds.sel(time=slice(str(start), str(end)))
    if ds.sizes["time"] == 0:
        return None
    if kind != "truth" and p["era5"]:
        era5 = open_source(cat, p["era5"], window=p["window"], period=(start, end),
                           variables=["skt"])
        ds = screen_frozen(ds, era5["skt"], p["frozen_skt_k"])
    n = p["n_days"]
    out = nday_mean(ds, n, anchor=str(p["anchor"]), min_count=p["min_count"])
    out = out.sel(time=slice(None, np.datetime64(end) + np.timedelta64(1 - n, "D")))
    if out.sizes["time"] == 0:
        return None
    out = out.chunk(p["chunks"])
    out.attrs.update(p["window"].identity())
    return out


def _catalog(p: dict):
    from casm_cloud.catalog import open_catalog

    return open_catalog(p["catalog"], storage_options=p["catalog_options"])


def _sums_url(ctx: Context, stage: str, kind: str) -> str:
    """Where the aggregate stage keeps a source's seasonal partial sums."""
    return ctx.url(stage, f"{kind}_seasonal_sums.zarr")


def _write_with_sums(ctx: Context, out: xr.Dataset, kind: str) -> None:
    """Write the n-day means and, in the same tasks, reduce them to the seasonal sums.

    The task that holds a chunk of means writes it and adds it to the sums
    (``lazy_sums(write_to=...)``), so the input is read once; the seasonal
    stage finishes the fit from the stored sums.
    """
    import dask

    from casm_cloud.seasonal import lazy_sums, write_sums

    url = ctx.out(f"{kind}.zarr")
    out = out.copy()
    for v in out.variables.values():
        v.encoding = {}
    storage.write_template(out, url, ctx.so, config_hash=ctx.config_hash)
    with ctx.tasks_bar():
        (sums,) = dask.compute(lazy_sums(out, write_to=url, storage_options=ctx.so))
    write_sums(sums, _sums_url(ctx, ctx.stage, kind), ctx.so, config_hash=ctx.config_hash)
    storage.mark_complete(url, ctx.so, config_hash=ctx.config_hash)


def run_aggregate(ctx: Context, p: dict) -> None:
    """open → on the window → frozen-soil screen → anchored n-day means → Zarr (+ seasonal sums)."""
    cat, end = _catalog(p), ctx.end(p["end"])
    # Every source opened (lazily: cheap) before anything is written, so a bad entry
    # (missing files, wrong variables or grid, no data in the period) stops the stage
    # with one error and no output.
    outs = {kind: _aggregated(p, cat, kind, p["start"], end) for kind in p["entries"]}
    for kind, out in outs.items():
        if out is None:
            log.warning("aggregate: %s has no complete %d-day bin in %s..%s; skipped", kind,
                        p["n_days"], p["start"], end)
            continue
        _write_with_sums(ctx, out, kind)


def _next_bin(ctx: Context, p: dict, url: str, stage: str) -> np.datetime64:
    """Start of the first n-day bin a store still needs.

    The bin after the stage's last finished run (its marker), or after the
    store's last time where that is earlier (a source that had no data at the
    end of the last run), so an update killed while it grew the store writes
    the same bins again rather than leaving a hole.
    """
    from casm_cloud.recipes.runner import stage_state

    step = np.timedelta64(p["n_days"], "D")
    prev = (stage_state(ctx.run_root, stage, ctx.so) or {}).get("until", str(p["end"]))
    anchor = np.datetime64(p["anchor"], "D")
    k = (np.datetime64(prev, "D") + np.timedelta64(1, "D") - anchor).astype(int) // p["n_days"]
    last = storage.open_zarr(url, ctx.so)["time"].values[-1].astype("datetime64[D]")
    return min(anchor + k * step, last + step)


def update_aggregate(ctx: Context, p: dict) -> None:
    """Append the new complete bins of every source to its aggregate store."""
    cat, end = _catalog(p), ctx.end(p["end"])
    for kind in p["entries"]:
        url = ctx.out(f"{kind}.zarr")
        if not storage.store_state(url, ctx.so)["exists"]:
            continue
        new = _aggregated(p, cat, kind, _next_bin(ctx, p, url, "aggregate"), end)
        added = 0 if new is None else storage.append_time(new, url, ctx.so,
                                                          config_hash=ctx.config_hash)
        log.info("update: %s gained %d bins", kind, added)


# --------------------------------------------------------------------------- seasonal
def seasonal_params(r) -> dict:
    return dict(channels={k: _channels(r, k) for k in _kinds(r)}, min_obs=r.seasonal.min_obs)


def run_seasonal(ctx: Context, p: dict) -> None:
    """The seasonal-cycle parameters of every aggregated source.

    Finished from the partial sums the aggregate stage stored while it wrote
    the means (the aggregates are not read again); fitted from the stored
    aggregates (the CLI's ``seasonal``) where those sums do not serve: an
    older run root, a ``min_obs`` above what they keep, or aggregates grown by
    an update since.  Both give the same parameters.
    """
    from casm_cloud.seasonal import open_sums, params_from_sums, sums_usable, write_seasonal
    from casm_cloud.seasonal import seasonal_params as fit

    for kind, channels in p["channels"].items():
        url = ctx.url("aggregate", f"{kind}.zarr")
        if not storage.store_state(url, ctx.so)["complete"]:
            continue
        ds = _aggregate(ctx, kind, channels)
        sums = open_sums(_sums_url(ctx, "aggregate", kind), ctx.so)
        why = sums_usable(sums, ds, channels, min_obs=p["min_obs"])
        if why is None:
            params = params_from_sums(sums, channels, min_obs=p["min_obs"])
        else:
            log.info("seasonal: %s fitted from its aggregates (stored sums: %s)", kind, why)
            params = fit(ds, channels, min_obs=p["min_obs"])
        params.attrs.update({k: v for k, v in ds.attrs.items() if k.startswith("ease2_")})
        write_seasonal(params, ctx.out(f"{kind}.zarr"), storage_options=ctx.so,
                       config_hash=ctx.config_hash)


# --------------------------------------------------------------------------- pairs, train
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


def _members(ctx: Context, stage: str, net: str) -> list[str]:
    root_url = ctx.url(stage, net)
    fs, root = storage.url_to_fs(root_url, ctx.so)
    names = sorted(q.rstrip("/").rsplit("/", 1)[-1] for q in fs.ls(root, detail=False))
    members = [storage.join(root_url, n) for n in names if n.startswith("member")]
    if not members:
        raise storage.StoreError(f"no trained members under {root_url}")
    return members


# --------------------------------------------------------------------------- predict
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


# --------------------------------------------------------------------------- merge
def merge_params(r) -> dict:
    return dict(product=r.outputs.product, chunks=dict(r.predict.chunks),
                window=r.grid.window(), end=r.period.end, **_bins(r))


def _merged(ctx: Context, p: dict) -> xr.Dataset:
    from casm_cloud.inference.precision import summary_attrs
    from casm_cloud.merge import merge_eras

    eras = {}
    for net, stage in (("nn_amsre", "predict_amsre"), ("nn_smos", "predict_smos")):
        url = ctx.url(stage, f"{net}.zarr")
        if storage.store_state(url, ctx.so)["complete"]:
            eras[net] = storage.open_zarr(url, ctx.so)
    product = merge_eras(eras)
    product.attrs.update(p["window"].identity())
    product.attrs.update(summary_attrs([ds.attrs for ds in eras.values()]))
    return product.chunk(p["chunks"])


def run_merge(ctx: Context, p: dict) -> None:
    from casm_cloud.schema import validate

    ctx.write(_merged(ctx, p), _product(ctx, p))
    validate(storage.open_zarr(_product(ctx, p), ctx.so), "product")


def update_merge(ctx: Context, p: dict) -> None:
    """Append the product's new time bins (the eras' times after its last one)."""
    from casm_cloud.schema import validate

    merged = _merged(ctx, p)
    new = merged.sel(time=merged["time"] >= _next_bin(ctx, p, _product(ctx, p), "merge"))
    storage.append_time(new, _product(ctx, p), ctx.so, config_hash=ctx.config_hash)
    validate(storage.open_zarr(_product(ctx, p), ctx.so), "product")


# --------------------------------------------------------------------------- validate, report
def validate_params(r) -> dict:
    v = r.validation
    return dict(product=r.outputs.product, stations=r.sources.stations, depth=list(v.depth),
                good_fraction=v.good_fraction, min_obs=v.min_obs, **_bins(r))


def run_validate(ctx: Context, p: dict) -> None:
    """Score the product against ISMN stations (the CLI's ``validate``)."""
    from casm_cloud.validation.workflow import run_validation

    if not p["stations"]:
        log.info("validate: no stations in the recipe; skipped")
        return
    ctx.summary["validation"] = run_validation(
        {"product": _product(ctx, p)}, p["stations"], ctx.out("ismn"), variables=["sm"],
        depth=tuple(p["depth"]), good_fraction=p["good_fraction"], min_obs=p["min_obs"],
        n_days=p["n_days"], anchor=str(p["anchor"]), storage_options=ctx.so, figures=False)


def report_params(r) -> dict:
    v = r.validation
    return dict(product=r.outputs.product, report=r.outputs.report,
                truth=["sm_l1"] if r.sources.truth else None, min_obs=r.seasonal.min_obs,
                sensor_changes=_sensor_changes(r), eras=_eras(r), preset=r.preset,
                stations=r.sources.stations, depth=list(v.depth),
                good_fraction=v.good_fraction, station_min_obs=v.min_obs, **_bins(r),
                title=f"casm_cloud: {r.name} (preset {r.preset})")


def _validation_table(ctx: Context):
    import pandas as pd

    fs, path = storage.url_to_fs(ctx.url("validate", "ismn", "metrics.csv"), ctx.so)
    if not fs.exists(path):
        return None
    with fs.open(path) as f:
        return pd.read_csv(f)


def _station_eras(ctx: Context, p: dict) -> dict:
    """Scores against the ISMN stations per era (medians over stations)."""
    from casm_cloud.report.scores import station_scores_by_era
    from casm_cloud.validation.evaluate import matched_pairs
    from casm_cloud.validation.stations import read_ismn, select_stations
    from casm_cloud.validation.workflow import _local_stations

    stations = select_stations(read_ismn(_local_stations(p["stations"], ctx.so), depth=tuple(p["depth"])),
                               good_fraction=p["good_fraction"], min_obs=p["station_min_obs"],
                               n_days=p["n_days"], anchor=str(p["anchor"]))
    product = storage.open_zarr(_product(ctx, p), ctx.so)
    pairs, _ = matched_pairs(product, stations, variable="sm")
    return station_scores_by_era(pairs, p["eras"])


def run_report(ctx: Context, p: dict) -> None:
    from casm_cloud.report import scores_against_truth, write_report

    product = storage.open_zarr(_product(ctx, p), ctx.so)
    truth = _aggregate(ctx, "truth", p["truth"]) if p["truth"] else None
    if truth is not None:
        ctx.summary["scores"] = scores_against_truth(
            product, truth, sensor_changes=p["sensor_changes"], eras=p["eras"],
            min_obs=p["min_obs"], storage_options=ctx.so)
    ctx.summary["preset"] = p["preset"]
    if p["stations"]:
        ctx.summary["station_eras"] = _station_eras(ctx, p)
    scores = ctx.summary.get("scores")
    if ctx.summary.get("station_eras"):
        scores = {**(scores or {}), "station_eras": ctx.summary["station_eras"]}
    ctx.summary["checks"] = _data_checks(ctx, p, product)
    out = ctx.output(p["report"], DEFAULT_OUTPUTS["report"])
    ctx.summary["report"] = write_report(
        out, product=product, truth=truth, validation=_validation_table(ctx),
        sensor_changes=p["sensor_changes"], scores=scores, title=p["title"],
        min_obs=p["min_obs"], checks=ctx.summary["checks"])


def _data_checks(ctx: Context, p: dict, product: xr.Dataset) -> dict:
    """The report's checks from the run's SMAP means and the two networks' stores."""
    from casm_cloud.report.checks import data_checks

    def opened(stage, name):
        url = ctx.url(stage, name)
        return storage.open_zarr(url, ctx.so) if storage.store_state(url, ctx.so)["complete"] \
            else None

    nets = {net: opened(stage, f"{net}.zarr")
            for net, stage in (("nn_amsre", "predict_amsre"), ("nn_smos", "predict_smos"))}
    return data_checks(product, smap=opened("aggregate", "smap.zarr"),
                       networks={k: v for k, v in nets.items() if v is not None},
                       sensor_changes=p["sensor_changes"], eras=p["eras"], min_obs=p["min_obs"])


# --------------------------------------------------------------------------- export
def export_params(r) -> dict:
    return dict(product=r.outputs.product, export=r.outputs.export, end=r.period.end)


def run_export(ctx: Context, p: dict) -> None:
    from casm_cloud.merge import export_casm

    export_casm(_product(ctx, p), _export(ctx, p), ctx.so)


def _export(ctx: Context, p: dict) -> str:
    return ctx.output(p["export"], DEFAULT_OUTPUTS["export"])


def update_export(ctx: Context, p: dict) -> None:
    """Re-export the years the update touched (from the previous end's year on)."""
    from casm_cloud.merge import export_casm
    from casm_cloud.recipes.runner import stage_state

    done = stage_state(ctx.run_root, "export", ctx.so) or {}
    since = dt.date.fromisoformat(done.get("until", str(p["end"]))).year
    export_casm(_product(ctx, p), _export(ctx, p), ctx.so,
                years=range(since, ctx.end(p["end"]).year + 1))


STAGES: tuple[Stage, ...] = (
    Stage("aggregate", (), aggregate_params, run_aggregate, update_aggregate),
    Stage("seasonal", ("aggregate",), seasonal_params, run_seasonal),
    Stage("pairs", ("aggregate", "seasonal"), pairs_params, run_pairs),
    Stage("train", ("pairs",), train_params, run_train),
    Stage("predict_smos", ("aggregate", "seasonal", "train"), predict_smos_params,
          run_predict_smos, run_predict_smos),
    Stage("transfer", ("aggregate", "seasonal", "train", "predict_smos"), transfer_params,
          run_transfer),
    Stage("predict_amsre", ("aggregate", "seasonal", "transfer"), predict_amsre_params,
          run_predict_amsre, run_predict_amsre),
    Stage("merge", ("predict_smos", "predict_amsre"), merge_params, run_merge, update_merge),
    Stage("validate", ("merge",), validate_params, run_validate, "rerun"),
    Stage("report", ("aggregate", "merge", "validate"), report_params, run_report, "rerun"),
    Stage("export", ("merge",), export_params, run_export, update_export),
)


# --------------------------------------------------------------------------- before a cluster
def check(r) -> None:
    """Everything cheap to check before a cluster starts: the catalog and its entries,
    the station folder (the run root is checked by the caller)."""
    from casm_cloud.catalog import CatalogError, check_login, list_sources, open_catalog

    s = r.sources
    if not storage.exists(s.catalog, s.storage_options):
        raise CatalogError(f"sources.catalog: no catalog at {s.catalog}")
    cat = open_catalog(s.catalog, storage_options=s.storage_options)
    entries = set(list_sources(cat))
    named = {f"sources.{k}": getattr(s, k) for k in (*_kinds(r), "era5") if getattr(s, k)}
    for key, entry in named.items():
        if entry not in entries:
            raise CatalogError(f"{key}: catalog {s.catalog} has no entry {entry!r}; "
                               f"it has {sorted(entries)}")
        check_login(cat, entry, key)
    if s.stations and not storage.exists(s.stations, s.storage_options):
        raise CatalogError(f"sources.stations: no ISMN folder or zip at {s.stations}")


def demo_sources(recipe, out: str) -> None:
    """Simulate the demo region into ``out/sources`` unless it is there already."""
    import time

    if storage.exists(recipe.sources.catalog):
        return
    from casm_cloud.simulate import write_simulation

    sources = storage.join(out, "sources")
    print(f"[casm-cloud] simulating the demo region into {sources} ...", flush=True)
    t0 = time.perf_counter()
    write_simulation(sources, region=recipe.grid.region, grid=recipe.grid.name,
                     start=str(recipe.period.start), end=str(recipe.period.end), seed=0,
                     amsre_ease1=True)
    print(f"[casm-cloud] simulate       done in {time.perf_counter() - t0:.1f} s", flush=True)
