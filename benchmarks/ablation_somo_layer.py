"""One SoMo.ml layer's CV scores under other training settings, on a finished run.

Trains the layer's CV fold models again with each setting (the run's own folds,
targets, forcing and the upper layers' fold predictions as inputs, so only the
setting differs) as parallel tasks on a LocalCluster, and prints the CV table's
mean row (median over a fold's held-out station cells, mean over the folds).
The run itself is not changed: the models go under ``--out``.

Usage (after ``make demo DEMO_RECIPE=somo``; about 2 minutes a setting on 2 cores)::

    .venv/bin/python benchmarks/ablation_somo_layer.py somo-demo/recipe.yaml --layer sm_l3 \\
        '{"base": {}, "ep60": {"epochs": 60}, "d0ep60": {"dropout": 0.0, "epochs": 60}}'

Settings are ``model.*`` (hidden, dropout, initial_forget_bias) and ``training.*`` (lr,
epochs, batch_size, samples_per_epoch) keys; the window is the run's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import pandas as pd

import casm_cloud  # noqa: F401  (pyproj before netCDF4)


def main() -> None:
    from distributed import Client, LocalCluster

    from casm_cloud import storage
    from casm_cloud.config import load_recipe
    from casm_cloud.config.somo import SEARCHABLE
    from casm_cloud.recipes.somo import train as rt
    from casm_cloud.recipes.somo._common import LAYERS
    from casm_cloud.recipes.stage import Context
    from casm_cloud.somo import evaluate as ev
    from casm_cloud.somo import search
    from casm_cloud.somo.cv import cv_scores
    from casm_cloud.somo.training import train_variant

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", help="recipe YAML of a finished SoMo.ml run")
    ap.add_argument("settings", help='JSON: name -> {key: value}, e.g. \'{"base": {}}\'')
    ap.add_argument("--layer", default="sm_l3", choices=LAYERS)
    ap.add_argument("--out", default=None, help="where the models go (default: a temp dir)")
    a = ap.parse_args()
    recipe = load_recipe(a.recipe)
    p = rt.train_params(recipe)
    k = LAYERS.index(a.layer)
    out = a.out or tempfile.mkdtemp(prefix="casm-ablation-")
    targets = storage.open_zarr(f"{recipe.run_root}/targets/targets.zarr", require_complete=True)
    folds = pd.read_csv(f"{recipe.run_root}/train/folds.csv")["fold"].to_numpy()
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        ctx = Context(recipe.run_root, dict(recipe.storage_options), client=client,
                      progress=False, stage="train")
        for name, setting in json.loads(a.settings).items():
            model, fit = search.apply(p["model"], p["fit"], setting, SEARCHABLE)
            jobs = [rt._job(ctx, p, k, v, model, fit, out=f"{out}/{name}/{v[0]}")
                    for v in rt._variants(p, folds)[:p["folds"]]]
            t0 = time.perf_counter()
            client.gather([client.submit(train_variant, j, pure=False) for j in jobs])
            cells = ev.cv_cells(
                lambda n, f, name=name: storage.open_zarr(f"{out}/{name}/fold_{f}/cells.zarr")[n],
                targets, folds, [a.layer], p["folds"], p["period"],
                min_obs=recipe.validation.min_obs)
            m = cv_scores(cells).query("fold == 'mean'").iloc[0]
            print(f"{a.layer} {name:10s} {json.dumps(setting):40s} CV R {m['R']:.3f}  NRMSE "
                  f"{m['NRMSE']:.3f}  anomaly R {m['anomaly_R']:.3f}  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
