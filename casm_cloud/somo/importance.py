"""Permutation feature importance of the SoMo.ml layer models (O & Orth 2021, Fig. 4).

The paper's protocol, on the CV folds' models and their held-out station
cells (out-of-sample, as the validate stage's CV table):

* each dynamic ERA5 feature of a layer is permuted in time (shuffled along
  time, per cell: its distribution at the cell stays, its link to the target
  goes);
* the static features are permuted together, as one group (whole rows of
  statics shuffled across the station cells);
* the change in NRMSE and in R of the held-out cells against their targets,
  over the training period, is the feature's importance (per layer, per
  fold, and the median over folds).

A layer k > 1 model also reads the upper layers' simulated soil moisture
(the same fold's predictions at the cells); those inputs stay as they are.

Each (layer, fold, permutation) is one task on the recipe's dask cluster
(:func:`permutation_importance` submits them with ``client.submit``); the
permutations are seeded, so a rerun gives the same table.  See
docs/science.md, "Permutation importance".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["STATIC", "BASELINE", "permute_time", "permute_static", "importance_task",
           "importance_jobs", "permutation_importance", "importance_table", "check_finished",
           "importance_of_run", "top_features", "run_importance"]

#: The feature name of the static group and of the unpermuted baseline.
STATIC, BASELINE = "static", "baseline"


def permute_time(dynamic: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``dynamic`` (cell, time, feature) with feature ``k`` shuffled along time, per cell."""
    out = dynamic.copy()
    col = out[:, :, k]
    idx = np.argsort(rng.random(col.shape), axis=1)
    out[:, :, k] = np.take_along_axis(col, idx, axis=1)
    return out


def permute_static(static: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``static`` (cell, feature) with whole rows shuffled across cells (one group)."""
    return static[rng.permutation(static.shape[0])]


def _seed(seed: int, layer: str, fold: int, feature: str) -> int:
    import zlib

    return int(seed) + zlib.crc32(f"{layer}/{fold}/{feature}".encode())


def importance_task(job: Mapping) -> pd.DataFrame:
    """Held-out cell scores of one fold model of one layer with one permutation applied.

    ``job``: ``features``, ``statics``, ``targets`` (URLs), ``previous`` (upper layer →
    the same fold's ``cells.zarr``), ``layer``, ``dynamic``, ``static``, ``checkpoint``,
    ``held`` (cell indices), ``period`` (start, end), ``predict_from``, ``feature``
    (a dynamic name, :data:`STATIC` or :data:`BASELINE`), ``fold``, ``seed``,
    ``min_obs``, ``storage_options``.  Returns one row per held-out cell.
    """
    import xarray as xr

    from casm_cloud.models.checkpoint import load_checkpoint
    from casm_cloud.somo.evaluate import scores_table
    from casm_cloud.somo.training import _index, _predict_cells, cell_inputs
    from casm_cloud.training.loop import worker_threads

    so = dict(job.get("storage_options") or {})
    layer, feature = job["layer"], job["feature"]
    dyn, sta = list(job["dynamic"]), list(job["static"])
    with worker_threads():
        ck = load_checkpoint(job["checkpoint"], storage_options=so)
        data = cell_inputs(job["features"], job["statics"], job["targets"], layer, dyn, sta,
                           job["previous"], so, reference=ck.meta.get("target_reference"))
        rng = np.random.default_rng(_seed(job["seed"], layer, job["fold"], feature))
        if feature == STATIC:
            data["static"] = permute_static(data["static"], rng)
        elif feature != BASELINE:
            data["dynamic"] = permute_time(data["dynamic"], dyn.index(feature), rng)
        held = np.asarray(job["held"], np.int64)
        data = {**data, "dynamic": data["dynamic"][held], "static": data["static"][held],
                "target": data["target"][held],
                **({"reference": data["reference"][:, held]} if "reference" in data else {})}
        mean, std = ck.meta["scaler"]["mean"], ck.meta["scaler"]["std"]
        scaler = {"dyn": (np.array([mean[n] for n in dyn]), np.array([std[n] for n in dyn])),
                  "sta": (np.array([mean[n] for n in sta]), np.array([std[n] for n in sta])),
                  "target": (mean[layer], std[layer])}
        times = data["times"]
        t0, t1 = _index(times, job["period"][0]), _index(times, job["period"][1]) + 1
        pred = _predict_cells(ck.model, data, scaler, int(ck.meta["window"]),
                              _index(times, job["predict_from"]), t1)
    da = {k: xr.DataArray(v[:, t0:t1], dims=("cell", "time"),
                          coords={"cell": held, "time": times[t0:t1]})
          for k, v in (("pred", pred), ("obs", data["target"]))}
    return scores_table(da["pred"], da["obs"], job["min_obs"], feature=feature,
                        fold=int(job["fold"]), layer=layer)


def importance_jobs(run_root: str, *, layers: Sequence[str], dynamic: Sequence[str],
                    static: Sequence[str], folds: np.ndarray, has_target: Mapping[str, np.ndarray],
                    period: Sequence, predict_from: Mapping[str, str], seed: int, min_obs: int,
                    storage_options: Mapping | None = None) -> list[dict]:
    """Every (layer, fold, permutation) task of a finished SoMo.ml run's CV folds."""
    from casm_cloud.storage import join

    def url(*parts):
        return join(run_root, *parts)

    jobs = []
    for k, layer in enumerate(layers):
        for f in range(int(folds.max()) + 1):
            held = np.flatnonzero((folds == f) & has_target[layer]).tolist()
            for feature in (BASELINE, *dynamic, STATIC):
                jobs.append({
                    "features": url("forcing", "features.zarr"),
                    "statics": url("statics", "statics.zarr"),
                    "targets": url("targets", "targets.zarr"),
                    "previous": {u: url("train", u, f"fold_{f}", "cells.zarr")
                                 for u in layers[:k]},
                    "layer": layer, "dynamic": [*dynamic, *layers[:k]], "static": list(static),
                    "checkpoint": url("train", layer, f"fold_{f}"), "held": held,
                    "period": [str(d) for d in period], "predict_from": predict_from[layer],
                    "feature": feature, "fold": f, "seed": int(seed), "min_obs": int(min_obs),
                    "storage_options": dict(storage_options or {})})
    return jobs


def importance_table(per_cell: pd.DataFrame) -> pd.DataFrame:
    """Per layer, feature and fold the median held-out R and NRMSE, their change from the
    same fold's baseline (dR, dNRMSE), and rows ``fold="median"`` over the folds."""
    t = per_cell.groupby(["layer", "feature", "fold"], sort=False)[["R", "NRMSE"]].median()
    t = t.reset_index()
    base = t[t["feature"] == BASELINE].set_index(["layer", "fold"])[["R", "NRMSE"]]
    b = base.reindex(pd.MultiIndex.from_frame(t[["layer", "fold"]])).to_numpy()
    t["dR"], t["dNRMSE"] = t["R"] - b[:, 0], t["NRMSE"] - b[:, 1]
    med = t.groupby(["layer", "feature"], sort=False)[["R", "NRMSE", "dR", "dNRMSE"]].median()
    med = med.reset_index().assign(fold="median")
    t["fold"] = t["fold"].astype(str)
    return pd.concat([t, med], ignore_index=True)[["layer", "feature", "fold", "R", "NRMSE",
                                                   "dR", "dNRMSE"]]


def permutation_importance(jobs: Sequence[Mapping], client=None) -> pd.DataFrame:
    """Run the tasks (on ``client``'s cluster, one task each; here without one) → table."""
    import uuid

    if client is None:
        parts = [importance_task(j) for j in jobs]
    else:
        run = uuid.uuid4().hex[:8]
        futures = [client.submit(importance_task, j, pure=False,
                                 key=f"somo-importance-{j['layer']}-{j['fold']}-{j['feature']}-"
                                     f"{run}") for j in jobs]
        parts = client.gather(futures)
    return importance_table(pd.concat(parts, ignore_index=True))


def check_finished(recipe) -> None:
    """Refuse (one line) a run whose train or validate stage has not run with this recipe."""
    from casm_cloud.errors import InputError
    from casm_cloud.recipes import runner
    from casm_cloud.recipes import somo as rs
    from casm_cloud.recipes.hashes import stage_hashes

    hashes = stage_hashes(rs.STAGES, recipe)
    for name in ("train", "validate"):
        st = runner.stage_state(recipe.run_root, name, dict(recipe.storage_options))
        if st is None or st.get("config_hash") != hashes[name]:
            why = "has not run" if st is None else "ran with another recipe"
            raise InputError(f"stage {name!r} {why} under {recipe.run_root}: run the recipe "
                             "first (casm-cloud run), then casm-cloud somo importance")


def importance_of_run(run_root: str, p: Mapping, layers: Sequence[str], client=None,
                      storage_options: Mapping | None = None) -> pd.DataFrame:
    """The importance table of a run whose train stage has finished.

    ``p``: ``dynamic``, ``static``, ``period`` (training), ``window``, ``seed``,
    ``min_obs`` (the importance stage's params).
    """
    import io

    from casm_cloud import storage

    so = dict(storage_options or {})
    folds = pd.read_csv(io.StringIO(storage.read_text(storage.join(run_root, "train",
                                                                   "folds.csv"), so)))
    targets = storage.open_zarr(storage.join(run_root, "targets", "targets.zarr"), so,
                                require_complete=True)
    start = pd.Timestamp(p["period"][0])
    jobs = importance_jobs(
        run_root, layers=layers, dynamic=p["dynamic"], static=p["static"],
        folds=folds["fold"].to_numpy(), seed=p["seed"], min_obs=p["min_obs"],
        has_target={n: targets[f"n_stations_{n}"].values > 0 for n in layers},
        period=p["period"], storage_options=so,
        predict_from={n: str((start - pd.Timedelta(days=(len(layers) - 1 - k)
                                                   * (p["window"] - 1))).date())
                      for k, n in enumerate(layers)})
    return permutation_importance(jobs, client)


def top_features(table: pd.DataFrame) -> dict[str, str]:
    """Per layer, the feature whose permutation raises the median NRMSE most."""
    med = table[(table["fold"].astype(str) == "median") & (table["feature"] != BASELINE)]
    return {layer: sub.sort_values("dNRMSE", ascending=False)["feature"].iloc[0]
            for layer, sub in med.groupby("layer")}


def run_importance(recipe, out: str | None = None, client=None, seed: int = 0) -> dict:
    """The importance of a finished SoMo.ml run: ``<out>/importance.csv`` and ``.png``.

    ``out`` defaults to ``<run_root>/importance``.  Refuses (one line) a run whose
    ``train`` or ``validate`` stage has not run with this recipe.
    """
    import tempfile
    from pathlib import Path

    from casm_cloud import storage
    from casm_cloud.recipes import somo as rs
    from casm_cloud.report.somo import importance_figure

    so = dict(recipe.storage_options)
    check_finished(recipe)
    p = {**rs.importance_params(recipe), "seed": seed}
    table = importance_of_run(recipe.run_root, p, rs.LAYERS, client, so)
    out = out or storage.join(recipe.run_root, "importance")
    storage.write_text(storage.join(out, "importance.csv"), table.to_csv(index=False), so)
    png = storage.join(out, "importance.png")
    fs, path = storage.url_to_fs(png, so)
    with tempfile.TemporaryDirectory() as tmp:
        importance_figure(Path(tmp), table)
        fs.put(str(Path(tmp) / "importance.png"), path)
    return {"table": table, "csv": storage.join(out, "importance.csv"), "png": png,
            "n_tasks": len(table[table["fold"] != "median"].groupby(
                ["layer", "feature", "fold"]))}
