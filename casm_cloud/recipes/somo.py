"""The SoMo.ml recipe (O & Orth 2021, Sci. Data 8, 170) as stages on the runner.

Each stage is ``params(recipe) -> dict`` (exactly what it passes to library
code) and ``run(ctx, p)``.  The stage table is in docs/architecture.md, "The
SoMo.ml recipe".

    forcing → statics → targets → train → predict → validate → importance → report
    → export

* ``forcing``: daily dynamic features and ERA5's layer soil moisture on the window;
* ``statics``: the ten static features (climatology over ``periods.climatology``);
* ``targets``: ISMN stations → daily, good-flagged, ERA5-rescaled layer targets per cell;
* ``train``: per layer (in order; layer k takes the simulated SM of the layers
  above as dynamic inputs), the CV folds and the final seeds as parallel
  tasks on the workers;
* ``predict``: per layer and seed, windowed prediction over the window; the
  product is the seeds' mean (``sm_l1..3``) and standard deviation
  (``structural_uncertainty_l1..3``);
* ``validate``: the CV table, the product at the station cells, the product
  against ERA5's own layers (every cell), and (on the simulator) the scores
  against the truth at cells no fold trained on;
* ``importance``: permutation importance of the inputs over the CV folds' models;
* ``report``: the SoMo.ml page; ``export``: one netCDF per year and layer.

Layer k's predictions start ``(3 − k) · (window − 1)`` days before the
product (and the training period), so that the layers below have complete
windows; the forcing starts ``3 · (window − 1)`` days before them.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import storage
from casm_cloud.config import DEFAULT_OUTPUTS
from casm_cloud.errors import InputError
from casm_cloud.recipes.runner import Context, Stage

log = logging.getLogger(__name__)

__all__ = ["STAGES", "check", "demo_sources", "LAYERS"]

LAYERS = ("sm_l1", "sm_l2", "sm_l3")
_K = len(LAYERS)


def _lead(window: int, k: int) -> dt.timedelta:
    """How far before a period layer k (0-based) starts predicting."""
    return dt.timedelta(days=(_K - 1 - k) * (window - 1))


def _layer_start(day: dt.date, window: int, k: int) -> dt.date:
    return day - _lead(window, k)


def _product(ctx: Context, p: dict) -> str:
    return ctx.output(p["product"], DEFAULT_OUTPUTS["product"])


def _open(ctx: Context, stage: str, *parts: str) -> xr.Dataset:
    return storage.open_zarr(ctx.url(stage, *parts), ctx.so, require_complete=True)


def _catalog(p: dict):
    from casm_cloud.catalog import open_catalog

    return open_catalog(p["catalog"], storage_options=p["catalog_options"])


# --------------------------------------------------------------------------- forcing
def forcing_params(r) -> dict:
    s, pr, w = r.sources, r.periods, r.model.window
    first = min(pr.training.start, pr.product.start)
    return dict(catalog=s.catalog, catalog_options=dict(s.storage_options), era5=s.era5,
                window=r.grid.window(), dynamic=list(r.model.dynamic),
                start=min(first - dt.timedelta(days=_K * (w - 1)), pr.climatology.start),
                end=max(pr.training.end, pr.product.end, pr.climatology.end),
                product_start=pr.product.start, lead_days=_K * (w - 1),
                climatology=[pr.climatology.start, pr.climatology.end])


def _era5(p: dict, end) -> xr.Dataset:
    """The ERA5 entry opened for the request: the window, the days from the lead-in to
    ``end`` and the variables the features and the layers need (pushed down to the adapter,
    so an ARCO store is cut before any dask array is built)."""
    from casm_cloud.catalog import open_source
    from casm_cloud.somo.features import DYNAMIC_FEATURES

    names = dict.fromkeys([*p["dynamic"], "tp", "snr"])
    variables = dict.fromkeys(v for n in names for v in DYNAMIC_FEATURES[n][2])
    return open_source(_catalog(p), p["era5"], window=p["window"], period=(p["start"], end),
                       variables=[*variables, "swvl1", "swvl2", "swvl3"])


def _forcing(p: dict, era5: xr.Dataset, start, end) -> tuple[xr.Dataset, xr.Dataset]:
    from casm_cloud.somo.features import dynamic_features
    from casm_cloud.somo.targets import era5_layers

    era5 = era5.sel(time=slice(str(start), str(end) + "T23:59:59"))
    names = list(dict.fromkeys([*p["dynamic"], "tp", "snr"]))
    feats = dynamic_features(era5, variables=names)
    layers = era5_layers(era5)
    ny, nx = p["window"].shape
    ch = {"time": 365, "y": min(ny, 64), "x": min(nx, 64)}
    out = []
    for ds in (feats, layers):
        ds = ds.chunk(ch)
        ds.attrs.update(p["window"].identity())
        for c in ("lat", "lon"):
            if c in era5.coords and c not in ds.coords:
                ds = ds.assign_coords({c: era5[c]})
        out.append(ds)
    return out[0], out[1]


def _days(ds: xr.Dataset) -> tuple[dt.date, dt.date]:
    t = pd.DatetimeIndex(ds["time"].values)
    return t[0].date(), t[-1].date()


def run_forcing(ctx: Context, p: dict) -> None:
    """ERA5 → daily dynamic features and ERA5 layer soil moisture on the window."""
    from casm_cloud.somo.features import FeatureError

    era5 = _era5(p, ctx.end(p["end"]))
    have = _days(era5)
    c0, c1 = p["climatology"]
    if c0 < have[0] or c1 > have[1]:
        raise FeatureError(f"periods.climatology {c0}..{c1} is outside the forcing: ERA5 entry "
                           f"{p['era5']!r} has days {have[0]}..{have[1]}")
    need = p["product_start"] - dt.timedelta(days=p["lead_days"])
    if need < have[0]:
        raise FeatureError(f"periods.product.start {p['product_start']}: the three layers' "
                           f"{p['lead_days']}-day lead-in needs forcing from {need}; ERA5 entry "
                           f"{p['era5']!r} starts {have[0]}")
    feats, layers = _forcing(p, era5, max(p["start"], have[0]), ctx.end(p["end"]))
    ctx.write(feats, ctx.out("features.zarr"))
    ctx.write(layers, ctx.out("era5_layers.zarr"))


def update_forcing(ctx: Context, p: dict) -> None:
    """Append the new days of the forcing (features and ERA5 layers)."""
    era5 = _era5(p, ctx.end(p["end"]))
    for name in ("features.zarr", "era5_layers.zarr"):
        url = ctx.out(name)
        last = pd.Timestamp(storage.open_zarr(url, ctx.so)["time"].values[-1]).date()
        end = min(ctx.end(p["end"]), _days(era5)[1])
        if end <= last:
            continue
        feats, layers = _forcing(p, era5, last + dt.timedelta(days=1), end)
        new = feats if name == "features.zarr" else layers
        storage.append_time(new, url, ctx.so, config_hash=ctx.config_hash)


# --------------------------------------------------------------------------- statics
def _entries(static) -> list[str]:
    """``sources.static`` as a list of catalog entries."""
    return [static] if isinstance(static, str) else list(static)


def statics_params(r) -> dict:
    s, c = r.sources, r.periods.climatology
    return dict(catalog=s.catalog, catalog_options=dict(s.storage_options),
                static=_entries(s.static), window=r.grid.window(), start=c.start, end=c.end)


def run_statics(ctx: Context, p: dict) -> None:
    """The ten static features on the window (mean precipitation and aridity from ERA5).

    The static maps are the variables of the entries ``sources.static`` names, each opened
    on the window (the providers' ETOPO1 and GLDAS files, or one canonical store)."""
    from casm_cloud.catalog import open_source
    from casm_cloud.somo.features import static_features

    cat = _catalog(p)
    static = xr.merge([open_source(cat, name, window=p["window"]) for name in p["static"]],
                      compat="override", join="exact", combine_attrs="drop_conflicts")
    feats = _open(ctx, "forcing", "features.zarr")
    out = static_features(static, feats, start=str(p["start"]), end=str(p["end"]))
    out = out.assign_coords({c: feats[c] for c in ("lat", "lon") if c in feats.coords})
    out.attrs.update(p["window"].identity())
    ctx.write(out, ctx.out("statics.zarr"))


# --------------------------------------------------------------------------- targets
def targets_params(r) -> dict:
    return dict(stations=r.sources.stations, window=r.grid.window(),
                min_overlap=r.targets.min_overlap, min_subdaily=r.targets.min_subdaily,
                min_days=r.targets.min_days)


def run_targets(ctx: Context, p: dict) -> None:
    """ISMN → per cell and layer: daily, good-flagged, rescaled to ERA5, stations averaged."""
    import tempfile

    from casm_cloud.somo.targets import station_targets
    from casm_cloud.validation.stations import read_ismn
    from casm_cloud.validation.workflow import _local_stations

    with tempfile.TemporaryDirectory(prefix="casm-somo-ismn-") as meta:
        stations = read_ismn(_local_stations(p["stations"], ctx.so), depth=(0.0, 0.5), meta_path=meta)
    era5_sm = _open(ctx, "forcing", "era5_layers.zarr")
    targets, table = station_targets(stations, p["window"], era5_sm, min_overlap=p["min_overlap"],
                                     min_subdaily=p["min_subdaily"], min_days=p["min_days"])
    _write_csv(ctx.out("sensors.csv"), table, ctx.so)
    ctx.write(targets, ctx.out("targets.zarr"))
    ctx.summary["targets"] = {n: int((targets[f"n_stations_{n}"] > 0).sum()) for n in LAYERS}


def _write_csv(url: str, df: pd.DataFrame, so: dict) -> None:
    storage.write_text(url, df.to_csv(index=False), so)


def _read_csv(url: str, so: dict) -> pd.DataFrame | None:
    import io

    text = storage.read_text(url, so)
    return None if text is None else pd.read_csv(io.StringIO(text))


# --------------------------------------------------------------------------- train
def _model(r) -> dict:
    m = r.model
    return dict(hidden=m.hidden, dropout=m.dropout, initial_forget_bias=m.initial_forget_bias,
                window=m.window)


def train_params(r) -> dict:
    from casm_cloud.config.somo import SEARCHABLE

    t, cv, e, sr = r.training, r.cv, r.ensemble, r.search
    return dict(dynamic=list(r.model.dynamic), static=list(r.model.static), model=_model(r),
                fit=dict(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                         samples_per_epoch=t.samples_per_epoch),
                period=[r.periods.training.start, r.periods.training.end],
                folds=cv.folds, block_size=cv.block_size, cv_seed=cv.seed,
                members=e.members, seed=e.seed,
                search=dict(candidates={k: list(v) for k, v in sr.candidates.items()},
                            metric=sr.metric, where={k: SEARCHABLE[k] for k in sr.candidates},
                            min_obs=r.validation.min_obs if sr.candidates else None))


def _variants(p: dict, folds: np.ndarray, *, cv: bool = True) -> list[tuple[str, np.ndarray, int]]:
    """(name, training cells, seed) of every model of a layer: the CV folds, the final seeds."""
    out = [(f"fold_{f}", np.flatnonzero(folds != f), p["cv_seed"] + f)
           for f in range(p["folds"])] if cv else []
    out += [(f"seed_{k}", np.arange(folds.size), p["seed"] + k) for k in range(p["members"])]
    return out


def _folds(ctx: Context, p: dict, targets: xr.Dataset) -> np.ndarray:
    from casm_cloud.somo.cv import check_folds, spatial_folds

    folds = spatial_folds(targets["cell_y"].values, targets["cell_x"].values, p["folds"],
                          p["block_size"], p["cv_seed"])
    check_folds(folds, {n: targets[f"n_stations_{n}"].values > 0 for n in LAYERS}, p["folds"])
    return folds


def _job(ctx: Context, p: dict, k: int, variant: tuple, model: dict, fit: dict,
         out: str | None = None) -> dict:
    """The worker task of one model of layer ``k`` (URLs and settings only)."""
    name, cells, seed = variant
    layer = LAYERS[k]
    return {"features": ctx.url("forcing", "features.zarr"),
            "statics": ctx.url("statics", "statics.zarr"),
            "targets": ctx.url("targets", "targets.zarr"),
            "previous": {LAYERS[j]: ctx.out(LAYERS[j], name, "cells.zarr") for j in range(k)},
            "layer": layer, "dynamic": [*p["dynamic"], *LAYERS[:k]],
            "static": list(p["static"]), "train_cells": cells.tolist(),
            "period": [str(d) for d in p["period"]],
            "predict_from": str(_layer_start(p["period"][0], p["model"]["window"], k)),
            "model": dict(model), "fit": dict(fit), "seed": int(seed), "variant": name,
            "out": out or ctx.out(layer, name), "storage_options": ctx.so,
            "stage_hash": ctx.config_hash}


def _train(ctx: Context, jobs: list[dict]) -> list[dict]:
    """The jobs as parallel tasks on the workers (in this process without a cluster)."""
    import zlib

    from casm_cloud.somo.training import train_variant

    with ctx.tasks_bar():
        if ctx.client is None:
            return [train_variant(j) for j in jobs]
        futures = [ctx.client.submit(train_variant, j, pure=False,
                                     key=f"somo-train-{j['layer']}-{j['variant']}-"
                                         f"{zlib.crc32(j['out'].encode()):08x}-"
                                         f"{ctx.config_hash[:8]}") for j in jobs]
        return ctx.client.gather(futures)


def _search(ctx: Context, p: dict, k: int, folds: np.ndarray, targets: xr.Dataset
            ) -> tuple[pd.DataFrame, dict, dict]:
    """Every candidate combination on every fold of layer ``k``; the best one's folds
    become the layer's CV folds.  Returns the scores table and the chosen settings."""
    from casm_cloud.somo import evaluate as ev
    from casm_cloud.somo import search
    from casm_cloud.somo.cv import cv_scores

    s, layer = p["search"], LAYERS[k]
    combos = {search.combination_name(c): c for c in search.combinations(s["candidates"])}
    jobs = [_job(ctx, p, k, v, *search.apply(p["model"], p["fit"], combo, s["where"]),
                 out=ctx.out(layer, "search", name, v[0]))
            for name, combo in combos.items() for v in _variants(p, folds)[:p["folds"]]]
    _train(ctx, jobs)
    rows = []
    for name, combo in combos.items():
        cells = ev.cv_cells(lambda n, f, name=name: _open(ctx, "train", n, "search", name,
                                                          f"fold_{f}", "cells.zarr")[n],
                            targets, folds, [layer], p["folds"], p["period"],
                            min_obs=s["min_obs"])
        mean = cv_scores(cells).query("fold == 'mean'").iloc[0]
        rows.append({"layer": layer, "candidate": name, **combo,
                     **mean.drop(["layer", "fold"]).to_dict()})
    table = pd.DataFrame(rows)
    best = search.choose(table, s["metric"])
    table["chosen"] = table["candidate"] == best["candidate"]
    for f in range(p["folds"]):
        storage.copy_tree(ctx.out(layer, "search", best["candidate"], f"fold_{f}"),
                          ctx.out(layer, f"fold_{f}"), ctx.so)
    model, fit = search.apply(p["model"], p["fit"], combos[best["candidate"]], s["where"])
    ctx.say(f"{layer}: chose {best['candidate']} (CV {s['metric']} {best[s['metric']]:.3f} "
            f"of {len(combos)} candidates)")
    return table, model, fit


def _cost(ctx: Context, p: dict, targets: xr.Dataset) -> str:
    """The trainings the stage will run and their estimated cost (printed before)."""
    from casm_cloud import rates
    from casm_cloud.somo import search

    t = targets.sel(time=slice(*(str(d) for d in p["period"])))
    s = p["search"]
    n, steps, flop = search.stage_cost(
        p["model"], p["fit"], s["candidates"], s["where"], folds=p["folds"],
        members=p["members"], n_inputs=[len(p["dynamic"]) + k + len(p["static"])
                                        for k in range(_K)],
        samples=[int(t[n].notnull().sum()) * (p["folds"] - 1) // p["folds"] for n in LAYERS],
        cells=targets.sizes["cell"], days=targets.sizes["time"])
    (step_ms, source), (gflops, _) = (rates.rate("somo_train_step_ms"),
                                      rates.rate("somo_train_gflops"))
    workers = len(ctx.client.scheduler_info()["workers"]) if ctx.client is not None else 1
    return search.cost_line(n, steps, flop, step_ms=step_ms, gflops=gflops, source=source,
                            workers=workers)


def run_train(ctx: Context, p: dict) -> None:
    """Per layer, in order: the search's candidates × folds (if any), then the CV folds
    and final seeds as parallel tasks on the workers."""
    targets = _open(ctx, "targets", "targets.zarr")
    folds = _folds(ctx, p, targets)
    _write_csv(ctx.out("folds.csv"), pd.DataFrame({
        "cell": targets["cell"].values, "cell_y": targets["cell_y"].values,
        "cell_x": targets["cell_x"].values, "fold": folds}), ctx.so)
    ctx.say(_cost(ctx, p, targets))
    searching = bool(p["search"]["candidates"])
    runs, tables, chosen = {}, [], {}
    for k, layer in enumerate(LAYERS):
        model, fit = p["model"], p["fit"]
        if searching:
            table, model, fit = _search(ctx, p, k, folds, targets)
            tables.append(table)
            chosen[layer] = {"model": model, "fit": fit}
        jobs = [_job(ctx, p, k, v, model, fit) for v in _variants(p, folds, cv=not searching)]
        results = _train(ctx, jobs)
        runs[layer] = {j["variant"]: res for j, res in zip(jobs, results, strict=True)}
    if tables:
        _write_csv(ctx.out("search.csv"), pd.concat(tables, ignore_index=True), ctx.so)
        ctx.summary["search"] = pd.concat(tables, ignore_index=True)
    storage.write_marker(ctx.out("runs.json"), {"runs": runs, "chosen": chosen}, ctx.so)


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


STAGES: tuple[Stage, ...] = (
    Stage("forcing", (), forcing_params, run_forcing, update_forcing),
    Stage("statics", ("forcing",), statics_params, run_statics),
    Stage("targets", ("forcing",), targets_params, run_targets),
    Stage("train", ("forcing", "statics", "targets"), train_params, run_train),
    Stage("predict", ("forcing", "statics", "train"), predict_params, run_predict, "rerun"),
    Stage("validate", ("targets", "train", "predict"), validate_params, run_validate, "rerun"),
    Stage("importance", ("targets", "train"), importance_params, run_importance),
    Stage("report", ("train", "predict", "validate", "importance"), report_params, run_report,
          "rerun"),
    Stage("export", ("predict",), export_params, run_export, update_export),
)


# --------------------------------------------------------------------------- before a cluster
def check(r) -> None:
    """The catalog and its entries, the station folder, the feature names."""
    from casm_cloud.catalog import CatalogError, list_sources, open_catalog
    from casm_cloud.somo.features import DYNAMIC_FEATURES, PUBLISHED_STATIC

    s = r.sources
    if not storage.exists(s.catalog, s.storage_options):
        raise CatalogError(f"sources.catalog: no catalog at {s.catalog}")
    entries = set(list_sources(open_catalog(s.catalog, storage_options=s.storage_options)))
    for key, names in (("era5", [s.era5]), ("static", _entries(s.static)), ("truth", [s.truth]),
                       ("validation.references", list(r.validation.references.values()))):
        for entry in names:
            if entry and entry not in entries:
                where = key if "." in key else f"sources.{key}"
                raise CatalogError(f"{where}: catalog {s.catalog} has no entry "
                                   f"{entry!r}; it has {sorted(entries)}")
    if not storage.exists(s.stations, s.storage_options):
        raise CatalogError(f"sources.stations: no ISMN folder or zip at {s.stations}")
    bad = [n for n in r.model.dynamic if n not in DYNAMIC_FEATURES]
    if bad:
        raise InputError(f"model.dynamic: unknown feature(s) {bad}; expected some of "
                         f"{list(DYNAMIC_FEATURES)}")
    bad = [n for n in r.model.static if n not in PUBLISHED_STATIC]
    if bad:
        raise InputError(f"model.static: unknown feature(s) {bad}; expected some of "
                         f"{list(PUBLISHED_STATIC)}")


#: How the demo's simulated stations are laid out (several depths, shared cells).
DEMO_STATIONS = {"n_stations": 40, "shared_cells": 4}


def demo_sources(recipe, out: str) -> None:
    """Simulate the demo window on the recipe's grid into ``out/sources`` unless it is there."""
    import time

    if storage.exists(recipe.sources.catalog):
        return
    from casm_cloud.simulate import write_simulation
    from casm_cloud.simulate.stations import SOMO_DEPTHS

    g, pr, w = recipe.grid, recipe.periods, recipe.model.window
    first = min(pr.training.start, pr.product.start, pr.climatology.start) - \
        dt.timedelta(days=_K * (w - 1))
    last = max(pr.training.end, pr.product.end, pr.climatology.end)
    sources = storage.join(out, "sources")
    print(f"[casm-cloud] simulating the SoMo.ml demo window into {sources} ...", flush=True)
    t0 = time.perf_counter()
    window = {"lat": g.lat, "lon": g.lon} if g.lat is not None else {}
    write_simulation(sources, region=g.region or "demo", grid=g.name, start=str(first),
                     end=str(last), seed=0, sources=["truth", "era5", "static"],
                     station_depths=SOMO_DEPTHS, **DEMO_STATIONS, **window)
    print(f"[casm-cloud] simulate       done in {time.perf_counter() - t0:.1f} s", flush=True)
