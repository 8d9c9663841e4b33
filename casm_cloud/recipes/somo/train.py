"""SoMo.ml's train stage: per layer the CV folds (or the search's candidates × folds) and
the final seeds as parallel tasks on the workers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import storage
from casm_cloud.recipes.somo._common import _K, LAYERS, _layer_start, _open, _write_csv
from casm_cloud.recipes.stage import Context


# --------------------------------------------------------------------------- train
def _model(r) -> dict:
    m = r.model
    return dict(hidden=m.hidden, dropout=m.dropout, initial_forget_bias=m.initial_forget_bias,
                window=m.window)


def train_params(r) -> dict:
    from casm_cloud.config.somo import SEARCHABLE

    t, cv, e, sr = r.training, r.cv, r.ensemble, r.search
    return dict(dynamic=list(r.model.dynamic), static=list(r.model.static), model=_model(r),
                target_units=r.model.target,
                fit=dict(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                         samples_per_epoch=t.samples_per_epoch,
                         predict_last_n=t.predict_last_n),
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
    from casm_cloud.somo.features import reference_names

    name, cells, seed = variant
    layer = LAYERS[k]
    return {"features": ctx.url("forcing", "features.zarr"),
            "statics": ctx.url("statics", "statics.zarr"),
            "targets": ctx.url("targets", "targets.zarr"),
            "previous": {LAYERS[j]: ctx.out(LAYERS[j], name, "cells.zarr") for j in range(k)},
            "layer": layer, "dynamic": [*p["dynamic"], *LAYERS[:k]],
            "static": list(p["static"]), "train_cells": cells.tolist(),
            "reference": list(reference_names(layer)) if p["target_units"] == "era5" else None,
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
