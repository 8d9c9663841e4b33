"""Vectorised validation metrics vs pytesmo called per series, side by side.

Scores N series (stations or grid cells) of T n-day means with 30 % gaps:
``casm_cloud.validation.metrics`` on whole (N, T) arrays versus a loop calling
``pytesmo.metrics`` on each pair of 1-D arrays (what a per-station validation
does), plus the ±17-day anomaly: the numba two-pointer kernel versus pytesmo's
``moving_average``.  Prints medians and the speed-up ratio; both paths are
checked to agree first.

    .venv/bin/python benchmarks/bench_validation_metrics.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import xarray as xr


def _data(n: int, t: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    time_ = pd.date_range("2015-04-01", periods=t, freq="3D")
    truth = 0.25 + 0.05 * rng.standard_normal((n, t))
    x = truth + 0.04 * rng.standard_normal((n, t))
    y = truth + 0.02 * rng.standard_normal((n, t))
    x[rng.random((n, t)) < 0.3] = np.nan
    coords = {"cell": np.arange(n), "time": time_}
    return (xr.DataArray(x, dims=("cell", "time"), coords=coords),
            xr.DataArray(y, dims=("cell", "time"), coords=coords))


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    args = parser.parse_args()
    n, t, repeat = (500, 600, 3) if args.quick else (5000, 1200, 5)

    import casm_cloud  # noqa: F401, I001  (pyproj before netCDF4; see casm_cloud/__init__.py)
    from pytesmo import metrics as pm
    from pytesmo.time_series.filtering import moving_average

    from casm_cloud.validation import metrics as vm

    x, y = _data(n, t)
    xv, yv = x.values, y.values
    idx = x.time.to_index()

    def ours():  # what validate_product does: one pass of the pair-moments kernel
        return {k: v.values for k, v in vm.pair_metrics(x, y, anomalies=False).items()}

    def ours_separate():  # each public metric function on its own
        return {name: fn(x, y).values for name, fn in vm.METRICS.items() if name != "anomaly_R"}

    def theirs():
        out = {k: np.empty(n) for k in ("R", "RMSE", "ubRMSE", "bias", "NRMSE", "R2")}
        for i in range(n):
            ok = np.isfinite(xv[i]) & np.isfinite(yv[i])
            a, b = xv[i, ok], yv[i, ok]
            out["R"][i] = pm.pearson_r(a, b)
            out["RMSE"][i] = pm.rmsd(a, b)
            out["ubRMSE"][i] = pm.ubrmsd(a, b)
            out["bias"][i] = pm.bias(a, b)
            out["NRMSE"][i] = pm.nrmsd(a, b)
            out["R2"][i] = pm.nash_sutcliffe(b, a)
        return out

    def ours_anom():
        return vm.anomaly(x).values

    def theirs_anom():
        return np.stack([(s - moving_average(s, window_size=35, min_obs=10)).values
                         for s in (pd.Series(xv[i], index=idx) for i in range(n))])

    a, b, c = ours(), theirs(), ours_separate()
    for k in b:
        np.testing.assert_allclose(a[k], b[k], atol=1e-9, err_msg=k)
        np.testing.assert_allclose(c[k], b[k], atol=1e-9, err_msg=k)
    np.testing.assert_allclose(ours_anom(), theirs_anom(), atol=1e-12)

    t_ours, t_theirs = _median_time(ours, repeat), _median_time(theirs, repeat)
    t_sep = _median_time(ours_separate, repeat)
    t_oa, t_ta = _median_time(ours_anom, repeat), _median_time(theirs_anom, repeat)
    print(f"{n} series x {t} n-day means, 30 % gaps, median of {repeat}")
    print(f"6 pairwise metrics, pair_metrics: casm_cloud {t_ours * 1e3:8.1f} ms   pytesmo loop "
          f"{t_theirs * 1e3:8.1f} ms   speed-up x{t_theirs / t_ours:.1f}")
    print(f"6 separate metric calls:          casm_cloud {t_sep * 1e3:8.1f} ms   pytesmo loop "
          f"{t_theirs * 1e3:8.1f} ms   speed-up x{t_theirs / t_sep:.1f}")
    print(f"±17-day anomaly:                  casm_cloud {t_oa * 1e3:8.1f} ms   pytesmo loop "
          f"{t_ta * 1e3:8.1f} ms   speed-up x{t_ta / t_oa:.1f}")


if __name__ == "__main__":
    main()
