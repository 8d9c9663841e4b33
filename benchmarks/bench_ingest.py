"""Ingest: aggregate with the seasonal sums folded in, ERA5 push-down; side by side in one run.

1. the aggregate stage's work with the seasonal fit's sums folded in (n-day means
   written and summed by the same tasks, sums stored) against the n-day means
   written alone: same input store, same codecs, a LocalCluster with one worker
   process; each timed run starts after ``os.sync()``;
2. regrid + daily means of hourly ERA5 in the ARCO layout (global 0.25°, one hour
   per chunk) over the demo window (``open_era5_arco``) against a plain read of the
   same chunks;
3. the cost of opening one month from a 10-year against a 1-year ARCO-layout store
   (metadata only: seconds to open, tasks after culling), and the old way of opening
   (``chunks={}`` first, select after) for comparison;
4. peak memory (RSS) of (1) at two periods, one twice the other, each in a fresh
   process.

Usage::

    .venv/bin/python benchmarks/bench_ingest.py            # 1800 days x 100 000 pixels
    .venv/bin/python benchmarks/bench_ingest.py --quick    # about a minute

Timings are medians of repeats; only ratios measured in the same run mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import casm_cloud  # noqa: E402,F401  (pyproj before netCDF4)
from casm_cloud import storage  # noqa: E402


def _median(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        os.sync()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


# ----------------------------------------------------------------------------- (1), (4)
def write_daily(url: str, nt: int, ny: int, nx: int, time_chunk: int, seed: int = 0) -> None:
    """A daily (time, y, x) float32 store: a seasonal cycle, noise, 40 % gaps."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2010-01-01", periods=nt, freq="D")
    th = 2 * np.pi * (t.day_of_year.values / 365.25)
    ds = xr.Dataset({"tb_h": (("time", "y", "x"), np.zeros((nt, ny, nx), np.float32),
                              {"units": "K"})},
                    coords={"time": t, "y": -np.arange(ny, dtype="f8"),
                            "x": np.arange(nx, dtype="f8")})
    ds = ds.chunk({"time": time_chunk, "y": -1, "x": -1})
    storage.write_template(ds, url)
    for t0 in range(0, nt, time_chunk):
        n = min(time_chunk, nt - t0)
        a = (250 + 20 * np.sin(th[t0:t0 + n])[:, None, None]
             + rng.standard_normal((n, ny, nx))).astype(np.float32)
        a[rng.random(a.shape) < 0.4] = np.nan
        part = xr.Dataset({"tb_h": (("time", "y", "x"), a)})
        storage.write_region(part, url, region={"time": slice(t0, t0 + n), "y": slice(None),
                                                "x": slice(None)})


def _means(src: str) -> xr.Dataset:
    from casm_cloud.aggregate import nday_mean

    return nday_mean(storage.open_zarr(src), 3)


def aggregate_alone(src: str, out: str) -> None:
    """The n-day means written (template, then every region), as the stage did."""
    means = _means(src)
    storage.write_template(means, out)
    storage.region_writes(means, out).compute()
    storage.mark_complete(out)


def aggregate_with_sums(src: str, out: str) -> None:
    """The stage now: the same writes by the tasks that also sum them; the sums stored."""
    import dask

    from casm_cloud.seasonal import lazy_sums, write_sums

    means = _means(src)
    storage.write_template(means, out)
    (sums,) = dask.compute(lazy_sums(means, write_to=out))
    write_sums(sums, out.replace(".zarr", "_sums.zarr"))
    storage.mark_complete(out)


def bench_aggregate(src: str, work: str, repeats: int) -> dict:
    from distributed import Client, LocalCluster

    n = os.cpu_count() or 1
    with LocalCluster(n_workers=1, threads_per_worker=n, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        a, b = os.path.join(work, "alone.zarr"), os.path.join(work, "with.zarr")
        aggregate_alone(src, a)  # warm: kernels compiled / loaded on the worker
        aggregate_with_sums(src, b)
        ta, tb = [], []
        for _ in range(repeats):  # interleaved: drifts in machine load hit both
            ta.append(_median(lambda: aggregate_alone(src, a), 1))
            tb.append(_median(lambda: aggregate_with_sums(src, b), 1))
    return {"alone_s": float(np.median(ta)), "with_sums_s": float(np.median(tb))}


def _memory_child(src: str, work: str) -> None:
    import threading

    import psutil
    from distributed import Client, LocalCluster

    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)

    with LocalCluster(n_workers=1, threads_per_worker=os.cpu_count() or 1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster):
        aggregate_with_sums(src, os.path.join(work, "warm.zarr"))
        base = proc.memory_info().rss
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        aggregate_with_sums(src, os.path.join(work, "mem.zarr"))
        done.set()
        th.join()
    print(json.dumps({"peak_MB": peak[0] / 2**20, "base_MB": base / 2**20}))


def bench_memory(nt: int, ny: int, nx: int, work: str) -> dict:
    out = {}
    for length in (nt, 2 * nt):
        src = os.path.join(work, f"mem_in_{length}.zarr")
        write_daily(src, length, ny, nx, 60, seed=2)
        run = subprocess.run([sys.executable, __file__, "--_memory-child", src, work],
                             capture_output=True, text=True, check=True)
        out[length] = json.loads(run.stdout.strip().splitlines()[-1])
        shutil.rmtree(src)
    return out


# ----------------------------------------------------------------------------- (2), (3)
_LAT = np.linspace(90.0, -90.0, 721)
_LON = np.arange(1440) * 0.25


def write_arco(url: str, start: str, hours: int, *, data_hours: int | None = None,
               variables=("2m_temperature", "skin_temperature"), seed: int = 0) -> None:
    """An ARCO-ERA5-layout store (global 0.25°, long names, one hour per chunk).

    Only the first ``data_hours`` hours get data (default all); the rest is
    metadata, as far as opening it is concerned a store of ``hours`` hours.
    """
    t = pd.date_range(start, periods=hours, freq="h")
    ds = xr.Dataset({v: (("time", "latitude", "longitude"),
                         __import__("dask.array").array.zeros((hours, 721, 1440), np.float32,
                                                              chunks=(1, 721, 1440)),
                         {"units": "K"}) for v in variables},
                    coords={"time": t, "latitude": _LAT, "longitude": _LON})
    storage.write_template(ds, url)
    rng = np.random.default_rng(seed)
    base = (280 + 20 * np.cos(np.deg2rad(_LAT))[:, None]
            + 5 * np.sin(np.deg2rad(_LON))[None, :]).astype(np.float32)
    nd = hours if data_hours is None else data_hours
    for t0 in range(0, nd, 24):
        n = min(24, nd - t0)
        part = xr.Dataset({v: (("time", "latitude", "longitude"),
                               base + rng.standard_normal((n, 721, 1440), np.float32))
                           for v in variables})
        storage.write_region(part, url, region={"time": slice(t0, t0 + n),
                                                "latitude": slice(None),
                                                "longitude": slice(None)})


def _demo():
    from casm_cloud.grid import EASE2Grid

    return EASE2Grid("M25").window_by_name("demo")


def bench_era5(url: str, days: int, repeats: int) -> dict:
    import dask

    from casm_cloud.regrid import source_box
    from casm_cloud.sources._common import select_stored
    from casm_cloud.sources.era5.arco import open_era5_arco

    win = _demo()
    end = str((pd.Timestamp("2020-01-01") + pd.Timedelta(days=days - 1)).date())

    def adapter():
        open_era5_arco(url, window=win, start="2020-01-01", end=end,
                       variables=["t2m", "skt"]).load()

    def plain():
        ds = xr.open_zarr(url, chunks=None, consolidated=False)[["2m_temperature",
                                                                  "skin_temperature"]]
        box = source_box(ds, win)
        sub = select_stored(ds.isel(time=slice(0, 24 * days + 1)).isel(box))
        dask.compute(*(sub[v].data.sum() for v in sub.data_vars))

    with dask.config.set(scheduler="threads"):
        adapter()
        plain()
        ta, tp = [], []
        for _ in range(repeats):
            ta.append(_median(adapter, 1))
            tp.append(_median(plain, 1))
    return {"adapter_s": float(np.median(ta)), "plain_s": float(np.median(tp))}


def _tasks(ds: xr.Dataset) -> int:
    import dask

    (opt,) = dask.optimize(ds)
    return len(dict(opt.__dask_graph__()))


def bench_open(urls: dict[str, str], repeats: int) -> dict:
    from casm_cloud.sources.era5.arco import open_era5_arco

    win = _demo()
    out = {}
    for name, url in urls.items():
        def new(url=url):
            return open_era5_arco(url, window=win, start="2020-01-01", end="2020-01-31",
                                  variables=["t2m"])

        def old(url=url):  # how the adapter opened before: dask over every chunk, then select
            ds = xr.open_zarr(url, chunks={}, consolidated=False)
            return ds[["2m_temperature"]].sel(time=slice("2020-01-01", "2020-02-01T00"))

        new()
        out[name] = {"open_s": _median(new, repeats), "tasks": _tasks(new()),
                     "old_open_s": _median(old, repeats), "old_tasks_before_cull": len(
                         dict(xr.open_zarr(url, chunks={}, consolidated=False)[
                             "2m_temperature"].data.__dask_graph__()))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    ap.add_argument("--_memory-child", nargs=2, metavar=("SRC", "WORK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._memory_child:
        _memory_child(*a._memory_child)
        return
    nt, ny, nx = (730, 100, 200) if a.quick else (1800, 200, 500)
    repeats = 2 if a.quick else 4
    era5_days = 2 if a.quick else 4
    work = tempfile.mkdtemp(prefix="bench_ingest_")
    try:
        src = os.path.join(work, "daily.zarr")
        write_daily(src, nt, ny, nx, 90)
        print(f"[1] input: {nt} days x {ny * nx} pixels float32, 40 % gaps, "
              f"{nt * ny * nx * 4 / 1e9:.2f} GB, chunks of 90 days")
        agg = bench_aggregate(src, work, repeats)
        print(f"    3-day means written {agg['alone_s']:.2f} s; written + seasonal sums "
              f"{agg['with_sums_s']:.2f} s")

        era = os.path.join(work, "arco.zarr")
        write_arco(era, "2020-01-01", 24 * era5_days + 1)
        e = bench_era5(era, era5_days, repeats)
        print(f"[2] ERA5 ARCO layout, {era5_days} days x 2 variables, demo window: adapter "
              f"(regrid + daily) {e['adapter_s']:.2f} s; plain read of the same chunks "
              f"{e['plain_s']:.2f} s")

        urls = {}
        for years in (1, 10):
            urls[f"{years}y"] = os.path.join(work, f"arco_{years}y.zarr")
            write_arco(urls[f"{years}y"], "2020-01-01", 24 * 365 * years, data_hours=0,
                       variables=("2m_temperature",))
        o = bench_open(urls, repeats)
        for k, v in o.items():
            print(f"[3] one month from a {k} store: open {v['open_s']:.3f} s, {v['tasks']} tasks "
                  f"after culling (before: open {v['old_open_s']:.3f} s, "
                  f"{v['old_tasks_before_cull']} tasks built)")

        mnt, mny, mnx = (365, 100, 100) if a.quick else (900, 200, 250)
        mem = bench_memory(mnt, mny, mnx, work)
        (l1, r1), (l2, r2) = sorted(mem.items())
        print(f"[4] peak RSS {r1['peak_MB']:.0f} MB at {l1} days, {r2['peak_MB']:.0f} MB at "
              f"{l2} days; above the process before: {r1['peak_MB'] - r1['base_MB']:.0f} MB "
              f"and {r2['peak_MB'] - r2['base_MB']:.0f} MB ({mny * mnx} pixels)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("aggregate + sums / aggregate (time)", agg["with_sums_s"] / agg["alone_s"], "<= 1.10"),
        ("ERA5 regrid + daily / plain read (time)", e["adapter_s"] / e["plain_s"], "<= 1.5"),
        ("open 10y / 1y store (seconds)", o["10y"]["open_s"] / o["1y"]["open_s"], "<= 1.2"),
        ("open 10y / 1y store (tasks)", o["10y"]["tasks"] / o["1y"]["tasks"], "<= 1.2"),
        (f"peak memory {l2} / {l1} days", r2["peak_MB"] / r1["peak_MB"], "<= 1.1"),
    ]
    print("\nratio                                     measured   target")
    for name, value, target in rows:
        print(f"{name:<41} {value:>9.2f}   {target}")


if __name__ == "__main__":
    main()
