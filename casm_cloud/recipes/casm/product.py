"""The product stages: merge the eras, validate at stations, report, export."""

from __future__ import annotations

import datetime as dt
import logging

import xarray as xr

from casm_cloud import storage
from casm_cloud.config import DEFAULT_OUTPUTS
from casm_cloud.recipes.casm.common import (
    _aggregate,
    _bins,
    _eras,
    _next_bin,
    _product,
    _sensor_changes,
)
from casm_cloud.recipes.stage import Context

log = logging.getLogger(__name__)


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
