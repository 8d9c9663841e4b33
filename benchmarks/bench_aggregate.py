"""Benchmark of anchored n-day means, side by side in one run.

``casm_cloud.aggregate.nday_mean`` (time chunks moved to bin edges, one
``numpy.add.reduceat`` per chunk) against xarray's own
``resample(time="3D", origin=anchor).mean()`` on the same dask-backed data
(xarray without flox, as in this stack), both with the threaded scheduler:
wall time, tasks in the graph, and agreement of the results (min_count=1,
where both define the same mean).  Also ``daily_mean`` of hourly data.

Run: ``.venv/bin/python benchmarks/bench_aggregate.py [--quick]``.
Read the ratios; absolute times on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import time

import dask
import numpy as np
import pandas as pd
import xarray as xr

import casm_cloud  # noqa: F401  (pyproj before netCDF4)
from casm_cloud.aggregate import daily_mean, nday_mean


def _data(n_time: int, ny: int, nx: int, freq: str, chunk: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    v = rng.normal(250.0, 20.0, (n_time, ny, nx)).astype(np.float32)
    v[rng.random(v.shape) < 0.4] = np.nan
    times = pd.date_range("2010-01-05 06:00", periods=n_time, freq=freq)
    return xr.Dataset({"tb": (("time", "y", "x"), v)}, coords={"time": times}).chunk(
        {"time": chunk, "y": -1, "x": -1})


def _timed(fn, repeat: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (well under a minute)")
    args = ap.parse_args()
    n_time, ny, nx, repeat = (365, 60, 60, 2) if args.quick else (1460, 150, 150, 3)
    ds = _data(n_time, ny, nx, "1D", chunk=30)
    mb = ds["tb"].nbytes / 2**20
    print(f"daily data: {n_time} x {ny} x {nx} float32 ({mb:.0f} MiB), time chunks of 30")

    with dask.config.set(scheduler="threads"):
        ours = nday_mean(ds, 3)
        theirs = ds.resample(time="3D", origin=pd.Timestamp("2002-01-01")).mean()
        n_ours = len(ours["tb"].data.__dask_graph__())
        n_theirs = len(theirs["tb"].data.__dask_graph__())
        t_ours, a = _timed(lambda: nday_mean(ds, 3).compute(), repeat)
        t_theirs, b = _timed(
            lambda: ds.resample(time="3D", origin=pd.Timestamp("2002-01-01")).mean().compute(),
            repeat)
        same_bins = np.array_equal(a.time.values, b.time.values)
        diff = float(np.nanmax(np.abs(a["tb"].values - b["tb"].values)))
        print(f"  nday_mean (blockwise reduceat): {t_ours:7.2f} s, {n_ours:6d} tasks")
        print(f"  xarray resample(origin=anchor): {t_theirs:7.2f} s, {n_theirs:6d} tasks")
        print(f"  ratio resample / nday_mean: time {t_theirs / t_ours:.1f}x, "
              f"tasks {n_theirs / n_ours:.1f}x; same bins: {same_bins}; max |diff| {diff:.2e} K")

        hourly = _data(24 * (60 if args.quick else 240), ny // 2, nx // 2, "1h", chunk=24 * 10)
        t_daily, d = _timed(lambda: daily_mean(hourly).compute(), repeat)
        rate = hourly["tb"].nbytes / 2**20 / t_daily
        print(f"daily_mean of hourly data ({hourly.sizes['time']} steps, min_count=6): "
              f"{t_daily:.2f} s, {rate:.0f} MiB/s, {d.sizes['time']} days")


if __name__ == "__main__":
    main()
