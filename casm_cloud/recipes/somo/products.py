"""SoMo.ml's product stages: predict, validate, importance, report, export."""

from __future__ import annotations

import datetime as dt

import numpy as np
import xarray as xr

from casm_cloud import storage
from casm_cloud.config import DEFAULT_OUTPUTS
from casm_cloud.recipes.somo._common import (
    LAYERS,
    _catalog,
    _layer_start,
    _open,
    _product,
    _read_csv,
    _write_csv,
)
from casm_cloud.recipes.stage import Context


# --------------------------------------------------------------------------- predict
def predict_params(r) -> dict:
    pp = r.predict
    return dict(product=r.outputs.product, start=r.periods.product.start,
                end=r.periods.product.end, window=r.model.window,
                dynamic=list(r.model.dynamic), members=r.ensemble.members,
                device=pp.device, precision=pp.precision, tolerance=pp.tolerance,
                batch_size=pp.batch_size, chunks=dict(pp.chunks))


def _product_attrs(layer: str) -> dict:
    from casm_cloud.somo.targets import LAYERS as DEPTHS

    top, bottom = DEPTHS[layer]
    return {"units": "m3 m-3", "standard_name": "volume_fraction_of_condensed_water_in_soil",
            "long_name": f"volumetric soil moisture {100 * top:g}-{100 * bottom:g} cm "
                         "(SoMo.ml, mean of the seeds)",
            "valid_min": 0.0, "coverage_content_type": "modelResult"}


def run_predict(ctx: Context, p: dict) -> None:
    """Per layer and seed: windowed prediction on the window; the product: mean and std."""
    from casm_cloud.inference.precision import summary_attrs, summary_line
    from casm_cloud.somo.output import predict_to_zarr

    feats = _open(ctx, "forcing", "features.zarr")
    statics = _open(ctx, "statics", "statics.zarr")
    end = ctx.end(p["end"])
    w = p["window"]
    means, stds, precisions = {}, {}, []
    for k, layer in enumerate(LAYERS):
        start = _layer_start(p["start"], w, k)
        members = []
        for s in range(p["members"]):
            inputs = feats[list(p["dynamic"])]
            for j in range(k):
                prev = _open(ctx, "predict", LAYERS[j], f"seed_{s}.zarr")[LAYERS[j]]
                inputs = inputs.assign({LAYERS[j]: prev.reindex(time=feats["time"])})
            out = ctx.out(layer, f"seed_{s}.zarr")
            state = storage.store_state(out, ctx.so)
            with ctx.chunk_bar(f"{layer} seed {s}") as progress:
                predict_to_zarr(ctx.url("train", layer, f"seed_{s}"), inputs, statics, out,
                                chunks=p["chunks"], start=str(start), end=str(end),
                                precision=p["precision"], tolerance=p["tolerance"],
                                device=p["device"],
                                batch_size=p["batch_size"], storage_options=ctx.so,
                                client=ctx.client, resume=True, append=True,
                                overwrite=state["exists"] and
                                state["config_hash"] != ctx.config_hash,
                                config_hash=ctx.config_hash, progress=progress)
            seed_store = storage.open_zarr(out, ctx.so)
            precisions.append(seed_store.attrs)
            members.append(seed_store[layer].sel(time=slice(str(p["start"]), str(end))))
        stack = xr.concat(members, dim="member")
        means[layer] = stack.mean("member").astype(np.float32).assign_attrs(
            _product_attrs(layer))
        stds[layer] = stack.std("member").astype(np.float32).assign_attrs(
            units="m3 m-3", long_name=f"structural uncertainty of {layer}: standard deviation "
                                      "of the seeds")
    product = xr.Dataset({**means, **{f"structural_uncertainty_{n[-2:]}": v
                                      for n, v in stds.items()}})
    product = product.assign_coords({c: feats[c] for c in ("lat", "lon") if c in feats.coords})
    product.attrs = {"title": "SoMo.ml soil moisture (casm_cloud reproduction)",
                     "references": "O, S. and Orth, R. (2021), Sci. Data 8, 170",
                     "Conventions": "CF-1.8",
                     **{k: v for k, v in feats.attrs.items() if k.startswith(("latlon_", "ease2_"))},
                     **summary_attrs(precisions)}
    ctx.say(f"precision {summary_line(product.attrs)}")
    ny, nx = product.sizes["y"], product.sizes["x"]
    ch = p["chunks"]
    product = product.chunk({"time": min(ch.get("time", 365), product.sizes["time"]),
                             "y": min(ch.get("y", ny), ny), "x": min(ch.get("x", nx), nx)})
    ctx.write(product, _product(ctx, p))


# --------------------------------------------------------------------------- validate
def validate_params(r) -> dict:
    s = r.sources
    return dict(product=r.outputs.product, min_obs=r.validation.min_obs,
                training=[r.periods.training.start, r.periods.training.end],
                folds=r.cv.folds, catalog=s.catalog, catalog_options=dict(s.storage_options),
                truth=s.truth, window=r.grid.window(),
                references=dict(r.validation.references))


def run_validate(ctx: Context, p: dict) -> None:
    """The CV table, the product at the station cells, against ERA5's own layers and the
    other products there, the triple collocation, and (simulator) against the truth."""
    from casm_cloud.catalog import open_source
    from casm_cloud.somo import evaluate as ev
    from casm_cloud.somo.cv import SCORES, cv_scores

    targets = _open(ctx, "targets", "targets.zarr")
    folds = _read_csv(ctx.url("train", "folds.csv"), ctx.so)["fold"].values
    per_cell = ev.cv_cells(
        lambda layer, f: _open(ctx, "train", layer, f"fold_{f}", "cells.zarr")[layer],
        targets, folds, LAYERS, p["folds"], p["training"], min_obs=p["min_obs"])
    _write_csv(ctx.out("cv_cells.csv"), per_cell, ctx.so)
    ctx.summary["cv"] = cv_scores(per_cell.dropna(subset=list(SCORES), how="all"))
    _write_csv(ctx.out("cv.csv"), ctx.summary["cv"], ctx.so)

    product = storage.open_zarr(_product(ctx, p), ctx.so, require_complete=True)
    times, n = product["time"].values, p["min_obs"]
    _write_csv(ctx.out("stations.csv"), ev.station_scores(product, targets, LAYERS, min_obs=n),
               ctx.so)
    # the paper's comparison with ERA5's own layers (the targets' rescaling reference)
    era5 = _open(ctx, "forcing", "era5_layers.zarr")
    _, ctx.summary["era5"] = ev.gridded_scores(product, era5, np.ones(p["window"].shape, bool),
                                               LAYERS, min_obs=n)
    _write_csv(ctx.out("era5.csv"), ctx.summary["era5"], ctx.so)
    products = {"SoMo.ml": product, "ERA5": era5} | {
        name: open_source(_catalog(p), entry, window=p["window"])
        for name, entry in p["references"].items()}
    at_stations = ev.reference_scores(products, targets, LAYERS, times, min_obs=n)
    _write_csv(ctx.out("references_cells.csv"), at_stations, ctx.so)
    ctx.summary["references"] = ev.ranked(at_stations)
    _write_csv(ctx.out("references.csv"), ctx.summary["references"], ctx.so)
    _write_csv(ctx.out("tcol.csv"), ev.collocation(product, era5, targets, LAYERS, times,
                                                   min_obs=n), ctx.so)
    if p["truth"]:
        truth = open_source(_catalog(p), p["truth"], window=p["window"],
                            period=(str(times[0])[:10], str(times[-1])[:10]),
                            variables=list(LAYERS))
        untrained = np.ones(p["window"].shape, bool)
        untrained[targets["cell_y"].values, targets["cell_x"].values] = False
        cells, ctx.summary["truth"] = ev.gridded_scores(product, truth, untrained, LAYERS,
                                                        min_obs=n)
        _write_csv(ctx.out("truth_cells.csv"), cells, ctx.so)
        _write_csv(ctx.out("truth.csv"), ctx.summary["truth"], ctx.so)


# --------------------------------------------------------------------------- importance
def importance_params(r) -> dict:
    i = r.importance
    return dict(enabled=i.enabled, seed=i.seed, dynamic=list(r.model.dynamic),
                static=list(r.model.static), window=r.model.window, min_obs=r.validation.min_obs,
                period=[r.periods.training.start, r.periods.training.end])


def run_importance(ctx: Context, p: dict) -> None:
    """Permutation importance over the CV folds' models (the paper's Fig. 4)."""
    from casm_cloud.somo.importance import importance_of_run, top_features

    if not p["enabled"]:
        storage.remove(ctx.out("importance.csv"), ctx.so)
        ctx.say("off (importance.enabled: false)")
        return
    table = importance_of_run(ctx.run_root, p, LAYERS, client=ctx.client, storage_options=ctx.so)
    _write_csv(ctx.out("importance.csv"), table, ctx.so)
    ctx.summary["importance"] = top_features(table)


# --------------------------------------------------------------------------- report
def report_params(r) -> dict:
    return dict(product=r.outputs.product, report=r.outputs.report,
                title=f"casm_cloud SoMo.ml: {r.name}")


def run_report(ctx: Context, p: dict) -> None:
    from casm_cloud.report.somo import write_somo_report

    product = storage.open_zarr(_product(ctx, p), ctx.so, require_complete=True)
    tables = {n: _read_csv(ctx.url("validate", f"{n}.csv"), ctx.so)
              for n in ("cv", "stations", "era5", "references", "references_cells", "tcol",
                        "truth")}
    tables["importance"] = _read_csv(ctx.url("importance", "importance.csv"), ctx.so)
    tables["search"] = _read_csv(ctx.url("train", "search.csv"), ctx.so)
    out = ctx.output(p["report"], DEFAULT_OUTPUTS["report"])
    ctx.summary["report"] = write_somo_report(out, product=product, cv=tables["cv"],
                                              stations=tables["stations"],
                                              era5=tables["era5"], truth=tables["truth"],
                                              references=tables["references"],
                                              references_cells=tables["references_cells"],
                                              tcol=tables["tcol"],
                                              importance=tables["importance"],
                                              search=tables["search"],
                                              targets=_open(ctx, "targets", "targets.zarr"),
                                              title=p["title"], storage_options=ctx.so)
    for key in ("cv", "era5", "truth"):
        if key not in ctx.summary and tables[key] is not None:
            ctx.summary[key] = tables[key]


# --------------------------------------------------------------------------- export
def export_params(r) -> dict:
    return dict(product=r.outputs.product, export=r.outputs.export, end=r.periods.product.end)


def _export_url(ctx: Context, p: dict) -> str:
    return ctx.output(p["export"], "somo")


def run_export(ctx: Context, p: dict) -> None:
    from casm_cloud.somo.output import export_somo

    ctx.summary["export"] = export_somo(_product(ctx, p), _export_url(ctx, p), ctx.so)


def update_export(ctx: Context, p: dict) -> None:
    from casm_cloud.recipes.runner import stage_state
    from casm_cloud.somo.output import export_somo

    done = stage_state(ctx.run_root, "export", ctx.so) or {}
    since = dt.date.fromisoformat(done.get("until", str(p["end"]))).year
    export_somo(_product(ctx, p), _export_url(ctx, p), ctx.so,
                years=range(since, ctx.end(p["end"]).year + 1))
