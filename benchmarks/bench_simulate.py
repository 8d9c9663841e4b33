"""Simulator throughput and peak memory: a window vs a window four times larger.

Each size runs in its own subprocess (so its peak RSS is its own) and, for
one year, (1) generates every source (truth, ERA5, static, SMOS, AMSR2,
SMAP) chunk by chunk, reduced to sums so nothing is kept, and (2) writes the
same sources to local Zarr stores with ``write_sources``.  Printed: MB of
float32 generated, MB/s, the peak resident memory, the resident memory after
imports (before any data is made) and the peak above it.  Memory should not
grow with the window: it is bounded by chunk size times threads, since each
spatial block is an independent chain of time chunks.

    .venv/bin/python benchmarks/bench_simulate.py            # 128² vs 256² cells, 1 year
    .venv/bin/python benchmarks/bench_simulate.py --quick    # 64² vs 128², 120 days

With --quick the small window is a single 64² block, so only one of the two
threads has a chain to run and the memory above imports of the larger window
is up to twice as much; the default sizes keep both threads busy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def _child(cells: int, days: int, mode: str) -> dict:
    import resource

    import dask
    import numpy as np

    import casm_cloud  # noqa: F401
    from casm_cloud.grid import EASE2Grid
    from casm_cloud.simulate import simulate
    from casm_cloud.simulate.writer import write_sources

    dask.config.set(scheduler="threads", num_workers=2)
    # a mid-latitude block of the M25 grid (rows from 120: about 46 N southwards)
    window = EASE2Grid("M25").subwindow(slice(120, 120 + cells), slice(250, 250 + cells))
    start = np.datetime64("2015-01-01")
    end = start + np.timedelta64(days - 1, "D")
    # resident memory of the interpreter and imports, before any data is made
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    out = simulate(window, str(start), str(end), seed=0)
    nbytes = sum(v.data.nbytes for ds in out.values() for v in ds.data_vars.values())
    if mode == "generate":
        dask.compute(*[v.data.sum() for ds in out.values() for v in ds.data_vars.values()])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            write_sources(out, tmp)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"cells": cells, "days": days, "mode": mode, "mb": nbytes / 1e6, "s": dt,
            "mb_s": nbytes / 1e6 / dt, "peak_rss_mb": rss, "base_rss_mb": base}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    p.add_argument("--child", nargs=3, metavar=("CELLS", "DAYS", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_child(int(a.child[0]), int(a.child[1]), a.child[2])))
        return
    sizes, days = ((64, 128), 120) if a.quick else ((128, 256), 365)
    # warm the numba cache once so neither size pays for compilation
    subprocess.run([sys.executable, __file__, "--child", "8", "5", "generate"], check=True,
                   capture_output=True)
    rows = []
    for mode in ("generate", "write"):
        for cells in sizes:
            r = subprocess.run([sys.executable, __file__, "--child", str(cells), str(days), mode],
                               check=True, capture_output=True, text=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"{'mode':<9} {'window':>9} {'days':>5} {'MB':>8} {'s':>7} {'MB/s':>7} "
          f"{'peak RSS MB':>12} {'imports MB':>11} {'above MB':>9}")
    for r in rows:
        print(f"{r['mode']:<9} {r['cells']:>4}x{r['cells']:<4} {r['days']:>5} {r['mb']:>8.0f} "
              f"{r['s']:>7.1f} {r['mb_s']:>7.1f} {r['peak_rss_mb']:>12.0f} "
              f"{r['base_rss_mb']:>11.0f} {r['peak_rss_mb'] - r['base_rss_mb']:>9.0f}")
    for mode in ("generate", "write"):
        small, large = [r for r in rows if r["mode"] == mode]
        above = [r["peak_rss_mb"] - r["base_rss_mb"] for r in (small, large)]
        print(f"{mode}: window x{large['mb'] / small['mb']:.0f} data -> peak memory "
              f"x{large['peak_rss_mb'] / small['peak_rss_mb']:.2f} "
              f"(above imports x{above[1] / max(above[0], 1.0):.2f}), throughput "
              f"x{large['mb_s'] / small['mb_s']:.2f}")


if __name__ == "__main__":
    main()
