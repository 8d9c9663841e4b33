"""Why a SoMo.ml layer has (no) short-term skill, on a finished run (docs/science.md,
"The demo's deepest layer").

Prints, from the run's own stores:

* the simulated truth's memory per layer: the median over cells of the autocorrelation of
  its deseasonalised series at lags of 1 to 365 days (does the window span it?), and its
  35-day anomaly standard deviation against its total one (the share of the variance the
  anomaly R scores);
* per CV fold of ``--layer``: the median per-cell R and anomaly R on the fold's training
  cells and on its held-out cells (under- or over-fitting?), and the predictions' 35-day
  anomaly standard deviation against the targets';
* a baseline that only filters an input: the 35-day anomalies of an exponential smooth
  of the layer's upper-layer input (the fold's predictions of the layer above), median R
  against the targets' (is the signal in the inputs?);
* the final training loss of each layer's CV folds (in units of the cell's variance:
  1 is what the cell's mean would score).

Usage (after ``make demo DEMO_RECIPE=somo``; about a minute on 2 cores)::

    .venv/bin/python benchmarks/diagnose_somo_layer.py somo-demo/recipe.yaml --layer sm_l3
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import xarray as xr

import casm_cloud  # noqa: F401  (pyproj before netCDF4)

LAGS = (1, 7, 30, 60, 120, 240, 365)


def _a35(x: np.ndarray) -> np.ndarray:
    """(cell, time) minus a centred 35-day mean (at least 18 days)."""
    s = pd.DataFrame(x.T)
    return (s - s.rolling(35, center=True, min_periods=18).mean()).to_numpy().T


def _r(a: np.ndarray, b: np.ndarray) -> float:
    m = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[m], b[m])[0, 1]) if m.sum() > 60 else np.nan


def _median_r(a: np.ndarray, b: np.ndarray, cells) -> float:
    return float(np.nanmedian([_r(a[c], b[c]) for c in cells]))


def truth_memory(truth: xr.Dataset, layers) -> None:
    for v in layers:
        x = truth[v].isel(y=slice(0, None, 4), x=slice(0, None, 4)).load()
        an = (x.groupby("time.dayofyear") - x.groupby("time.dayofyear").mean()).values
        an = an.reshape(an.shape[0], -1)
        an = an[:, np.isfinite(an).all(axis=0)]
        ac = {lag: round(float(np.nanmedian([np.corrcoef(an[:-lag, i], an[lag:, i])[0, 1]
                                          for i in range(an.shape[1])])), 3) for lag in LAGS}
        a35 = _a35(x.values.reshape(x.shape[0], -1).T)
        print(f"truth {v}: total std {float(x.std('time').median()):.4f}, 35-day anomaly std "
              f"{float(np.nanmedian(np.nanstd(a35, axis=1))):.4f}; deseasonalised "
              f"autocorrelation by lag (days) {ac}")


def main() -> None:
    from casm_cloud import storage
    from casm_cloud.config import load_recipe
    from casm_cloud.models.checkpoint import load_checkpoint
    from casm_cloud.recipes.somo._common import LAYERS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe", help="recipe YAML of a finished SoMo.ml run")
    ap.add_argument("--layer", default="sm_l3", choices=LAYERS)
    ap.add_argument("--truth", default=None,
                    help="the simulated truth store (default: the demo's sources/truth.zarr)")
    a = ap.parse_args()
    r = load_recipe(a.recipe)
    root, k = r.run_root, LAYERS.index(a.layer)
    period = slice(str(r.periods.training.start), str(r.periods.training.end))
    truth_url = a.truth or storage.join(root.rstrip("/").rsplit("/", 1)[0], "sources", "truth.zarr")
    if storage.exists(truth_url):
        truth_memory(storage.open_zarr(truth_url).sel(time=period), LAYERS)
    tg = storage.open_zarr(f"{root}/targets/targets.zarr").sel(time=period).load()
    folds = pd.read_csv(f"{root}/train/folds.csv")["fold"].to_numpy()
    y = tg[a.layer].values
    ay = _a35(y)

    def fold_pred(layer: str, f: int) -> np.ndarray:
        return storage.open_zarr(f"{root}/train/{layer}/fold_{f}/cells.zarr")[layer].sel(
            time=tg.time).values

    held = np.full(y.shape, np.nan, np.float32)
    upper = np.full(y.shape, np.nan, np.float32)
    for f in range(int(folds.max()) + 1):
        p = fold_pred(a.layer, f)
        ap_ = _a35(p)
        fit, out = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        print(f"{a.layer} fold {f}: R training cells {_median_r(y, p, fit):.3f}, held-out "
              f"{_median_r(y, p, out):.3f}; anomaly R training cells "
              f"{_median_r(ay, ap_, fit):.3f}, held-out {_median_r(ay, ap_, out):.3f}")
        held[out] = p[out]
        if k > 0:
            upper[out] = fold_pred(LAYERS[k - 1], f)[out]
    cells = range(y.shape[0])
    print(f"{a.layer} held-out 35-day anomaly std: predictions "
          f"{float(np.nanmedian(np.nanstd(_a35(held), axis=1))):.4f}, targets "
          f"{float(np.nanmedian(np.nanstd(ay, axis=1))):.4f}")
    if k > 0:
        for half in (5, 10, 20, 40):
            s = pd.DataFrame(upper.T).ewm(halflife=half, ignore_na=True).mean().to_numpy().T
            print(f"{a.layer} baseline: {LAYERS[k - 1]} input smoothed (half-life {half} d), "
                  f"anomaly R {_median_r(ay, _a35(s), cells):.3f}")
    for layer in LAYERS:
        loss = [load_checkpoint(f"{root}/train/{layer}/fold_{f}").meta["metrics"]["history"][-1][
            "loss"] for f in range(int(folds.max()) + 1)]
        print(f"{layer} final training loss of the folds: {json.dumps([round(x, 3) for x in loss])}")


if __name__ == "__main__":
    main()
