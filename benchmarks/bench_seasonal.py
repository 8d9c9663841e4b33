"""Seasonal-cycle fit: speed and memory, measured side by side in one run.

1. fit kernel pixels/s vs per-pixel ``scipy.optimize.curve_fit`` and vs
   ``xarray.DataArray.curvefit`` (both on a sample of pixels);
2. fit kernel input bytes/s vs a plain NumPy sum of the same array on the
   same number of threads (the memory-read limit);
3. the stage end to end (Zarr in -> parameters and residuals out, on a
   LocalCluster with one worker process, as the CLI runs it) vs a plain Zarr
   copy of the same array with the same codecs, on the same cluster; each
   timed run starts after ``os.sync()``, so the previous run's writes are not
   flushed to disk during it;
4. peak memory (RSS) of the stage on time-chunked input at two series
   lengths, one twice the other, each in a fresh process.

Usage::

    .venv/bin/python benchmarks/bench_seasonal.py            # 1800 x 200 000, 40 % gaps
    .venv/bin/python benchmarks/bench_seasonal.py --quick    # under a minute

Timings are medians of repeats; the machines are noisy, so only the ratios
(measured in the same run) mean anything.
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
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import xarray as xr

import casm_cloud  # noqa: F401  (pyproj before netCDF4)
from casm_cloud import storage
from casm_cloud.kernels import seasonal as kern
from casm_cloud.seasonal import seasonal_params, write_seasonal, year_phase


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def make_data(nt: int, npix: int, gaps: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(time, pixel) float32 series: sinusoid + noise, ``gaps`` NaN; and the times."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2010-01-01", periods=nt, freq="D").values
    th = year_phase(t)
    y = np.empty((nt, npix), np.float32)
    amp = rng.uniform(0.02, 0.15, npix).astype(np.float32)
    ph = rng.uniform(-np.pi, np.pi, npix).astype(np.float32)
    step = max(1, 4_000_000 // npix)
    for t0 in range(0, nt, step):
        sl = slice(t0, min(t0 + step, nt))
        block = amp * np.sin(th[sl, None].astype(np.float32) + ph) + np.float32(0.3)
        block += rng.standard_normal(block.shape, dtype=np.float32) * np.float32(0.03)
        block[rng.random(block.shape, dtype=np.float32) < gaps] = np.nan
        y[sl] = block
    return y, t


def _fit_kernel(y, s, c, min_obs=40):
    sums = np.empty((kern.NSUMS, y.shape[1]))
    kern.partial_sums_parallel(y, s, c, sums)
    out = np.empty((len(kern.PARAMS), y.shape[1]))
    kern.solve_parallel(sums, *kern.gather(y, sums, min_obs - 1), min_obs, out)
    return out


def bench_kernel(y, t, sample: int, repeats: int) -> dict:
    from numba import get_num_threads
    from scipy.optimize import curve_fit

    nthreads = get_num_threads()
    th = year_phase(t)
    s, c = np.sin(th), np.cos(th)
    nt, npix = y.shape
    _fit_kernel(y[:, :1024].copy(), s, c)  # compile / load the cache

    rng = np.random.default_rng(1)
    cols = np.sort(rng.choice(npix, min(sample, npix), replace=False))
    ys = np.ascontiguousarray(y[:, cols]).astype(np.float64)

    def f(theta, amp, phase, off):
        return amp * np.sin(theta + phase) + off

    def per_pixel():
        for j in range(ys.shape[1]):
            m = np.isfinite(ys[:, j])
            curve_fit(f, th[m], ys[m, j], p0=[np.std(ys[m, j]), 0.0, np.mean(ys[m, j])])

    t_cf = _median_time(per_pixel, 1)
    da = xr.DataArray(ys, dims=("time", "pixel"), coords={"theta": ("time", th)})
    da = da.chunk({"pixel": max(1, ys.shape[1] // nthreads)})

    def xr_curvefit():
        da.curvefit(da["theta"], f, reduce_dims="time",
                    p0={"amp": 0.05, "phase": 0.0, "off": 0.3}).compute(
            scheduler="threads", num_workers=nthreads)

    t_xcf = _median_time(xr_curvefit, 1)

    def np_sum():
        # The memory-read limit on the same threads: each thread sums its rows.
        edges = np.linspace(0, nt, nthreads + 1).astype(int)
        with ThreadPoolExecutor(nthreads) as ex:
            list(ex.map(lambda i: y[edges[i]:edges[i + 1]].sum(), range(nthreads)))

    # Both well under a second: many repeats, interleaved so drifts in the
    # machine's load hit both alike.
    np_sum()
    t_kernel, t_sum = [], []
    for _ in range(3 * repeats):
        t_kernel.append(_median_time(lambda: _fit_kernel(y, s, c), 1))
        t_sum.append(_median_time(np_sum, 1))
    t_kernel, t_sum = float(np.median(t_kernel)), float(np.median(t_sum))
    return {
        "threads": nthreads,
        "kernel_pix_s": npix / t_kernel,
        "curve_fit_pix_s": ys.shape[1] / t_cf,
        "xr_curvefit_pix_s": ys.shape[1] / t_xcf,
        "kernel_GB_s": y.nbytes / t_kernel / 1e9,
        "numpy_sum_GB_s": y.nbytes / t_sum / 1e9,
    }


def _grid_dataset(y: np.ndarray, t: np.ndarray, ny: int) -> xr.Dataset:
    nt, npix = y.shape
    return xr.Dataset({"sm": (("time", "y", "x"), y.reshape(nt, ny, npix // ny),
                              {"units": "m3 m-3"})}, coords={"time": t})


def write_input(y, t, url, time_chunk: int, ny: int) -> None:
    ds = _grid_dataset(y, t, ny).chunk({"time": time_chunk, "y": -1, "x": -1})
    ds.to_zarr(url, mode="w", zarr_format=3, consolidated=False,
               encoding=storage.zarr_encoding(ds))


def bench_stage(src: str, work: str, repeats: int) -> dict:
    from numba import get_num_threads

    from casm_cloud.cluster import get_client

    n = get_num_threads()
    # One worker process with a thread per core, started as the CLI starts it.
    with get_client("local", n_workers=1, threads_per_worker=n, dashboard=False):
        def copy():
            ds = storage.open_zarr(src)
            out = os.path.join(work, "copy.zarr")
            enc = {v: {"compressors": ds[v].encoding["compressors"],
                       "chunks": ds[v].encoding["chunks"]} for v in ds.data_vars}
            ds.to_zarr(out, mode="w", zarr_format=3, consolidated=False, encoding=enc)

        def stage():
            ds = storage.open_zarr(src)
            write_seasonal(seasonal_params(ds), os.path.join(work, "params.zarr"), data=ds,
                           residuals_url=os.path.join(work, "resid.zarr"))

        def synced(fn):
            os.sync()
            return _median_time(fn, 1)

        stage()  # warm: kernels loaded on the worker threads
        copy()
        t_copy, t_stage = [], []
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both
            t_copy.append(synced(copy))
            t_stage.append(synced(stage))
    return {"copy_s": float(np.median(t_copy)), "stage_s": float(np.median(t_stage))}


def _memory_child(src: str, work: str) -> None:
    """Run the stage once in this fresh process; print its peak RSS (MB).

    RSS is sampled every 5 ms (``ru_maxrss`` would not do: Linux carries it
    over ``exec`` from the parent that forked this process).
    """
    import threading

    import psutil
    from distributed import Client, LocalCluster
    from numba import get_num_threads

    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    done = threading.Event()

    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], proc.memory_info().rss)

    with LocalCluster(n_workers=1, threads_per_worker=get_num_threads(), processes=False,
                      dashboard_address=None) as cluster, Client(cluster):
        ds = storage.open_zarr(src)
        params = seasonal_params(ds)
        base = proc.memory_info().rss
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        write_seasonal(params, os.path.join(work, "params.zarr"), data=ds,
                       residuals_url=os.path.join(work, "resid.zarr"))
        done.set()
        sampler.join()
    print(json.dumps({"peak_rss_MB": peak[0] / 2**20, "base_rss_MB": base / 2**20}))


def bench_memory(nt: int, npix: int, time_chunk: int, ny: int, work: str) -> dict:
    out = {}
    for length in (nt, 2 * nt):
        y, t = make_data(length, npix, 0.4, seed=2)
        src = os.path.join(work, f"mem_{length}.zarr")
        write_input(y, t, src, time_chunk, ny)
        del y
        run = subprocess.run([sys.executable, __file__, "--_memory-child", src, work],
                             capture_output=True, text=True, check=True)
        out[length] = json.loads(run.stdout.strip().splitlines()[-1])
        shutil.rmtree(src)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--nt", type=int, default=None, help="time steps (default 1800)")
    ap.add_argument("--npix", type=int, default=None, help="pixels (default 200 000)")
    ap.add_argument("--gaps", type=float, default=0.4)
    ap.add_argument("--no-hugepages", action="store_true",
                    help="stage and copy without casm_cloud.cluster.WORKER_ENV (malloc in "
                         "4 KiB pages)")
    ap.add_argument("--_memory-child", nargs=2, metavar=("SRC", "WORK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.no_hugepages:
        os.environ["GLIBC_TUNABLES"] = ""  # a user's own value wins over WORKER_ENV
    if a._memory_child:
        _memory_child(*a._memory_child)
        return
    nt = a.nt or (730 if a.quick else 1800)
    npix = a.npix or (20_000 if a.quick else 200_000)
    sample = 50 if a.quick else 200
    repeats = 2 if a.quick else 5
    ny = 100 if npix % 100 == 0 else 1
    time_chunk = 73 if a.quick else 90

    print(f"data: {nt} time steps x {npix} pixels float32, {a.gaps:.0%} gaps "
          f"({nt * npix * 4 / 1e9:.2f} GB)")
    y, t = make_data(nt, npix, a.gaps)
    k = bench_kernel(y, t, sample, repeats)
    print(f"[1] kernel {k['kernel_pix_s']:,.0f} pixels/s on {k['threads']} threads; "
          f"curve_fit {k['curve_fit_pix_s']:,.0f} pixels/s ({sample} pixels); "
          f"xarray curvefit {k['xr_curvefit_pix_s']:,.0f} pixels/s")
    print(f"[2] kernel reads {k['kernel_GB_s']:.2f} GB/s; numpy sum {k['numpy_sum_GB_s']:.2f} GB/s")

    work = tempfile.mkdtemp(prefix="bench_seasonal_")
    try:
        src = os.path.join(work, "in.zarr")
        write_input(y, t, src, time_chunk, ny)
        del y
        st = bench_stage(src, work, repeats)
        print(f"[3] Zarr copy {st['copy_s']:.2f} s; stage (params + residuals) "
              f"{st['stage_s']:.2f} s  (chunks of {time_chunk} steps)")
        mnt, mnpix = (365, 20_000) if a.quick else (900, 100_000)
        mem = bench_memory(mnt, mnpix, 30, 100, work)
        (l1, r1), (l2, r2) = sorted(mem.items())
        m1, m2 = r1["peak_rss_MB"], r2["peak_rss_MB"]
        print(f"[4] peak RSS {m1:.0f} MB at {l1} steps, {m2:.0f} MB at {l2} steps; above the "
              f"process before the stage: {m1 - r1['base_rss_MB']:.0f} MB and "
              f"{m2 - r2['base_rss_MB']:.0f} MB ({mnpix} pixels, chunks of 30 steps)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("kernel / curve_fit (pixels/s)", k["kernel_pix_s"] / k["curve_fit_pix_s"], ">= 300"),
        ("kernel / xarray curvefit (pixels/s)", k["kernel_pix_s"] / k["xr_curvefit_pix_s"],
         ">= 300"),
        ("kernel / numpy sum (bytes/s)", k["kernel_GB_s"] / k["numpy_sum_GB_s"], ">= 0.5"),
        ("stage / Zarr copy (time)", st["stage_s"] / st["copy_s"], "<= 1.3"),
        (f"peak memory {l2} / {l1} steps", m2 / m1, "<= 1.1"),
    ]
    print("\nratio                                    measured   target")
    for name, value, target in rows:
        print(f"{name:<40} {value:>9.2f}   {target}")


if __name__ == "__main__":
    main()
