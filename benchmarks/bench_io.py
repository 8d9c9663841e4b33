"""Zarr read/write throughput on local disk, gs:// (GCS emulator) and s3:// (moto), and
regrid throughput against a plain copy of the same data.

    .venv/bin/python benchmarks/bench_io.py [--quick]

Object stores are real servers on 127.0.0.1 (``gcp-storage-emulator`` run through
``tests/_gcs_emulator.py``, which fixes its multipart parsing, and ``moto_server``), so
the figures measure the client stack (xarray -> zarr -> fsspec -> HTTP) plus a local
server, not a cloud network.  Throughput is uncompressed MB (float32 with 40 % NaN,
zstd) per second, median of ``--repeat`` runs; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # before gcsfs loads

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from casm_cloud import storage  # noqa: E402
from casm_cloud.grid import EASE2Grid  # noqa: E402
from casm_cloud.regrid import regrid_to_window  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(argv: list[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"{argv[0]} did not start")


def _dataset(n_time: int, ny: int, nx: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    a = rng.uniform(150, 300, (n_time, ny, nx)).astype("float32")
    a[rng.random(a.shape) < 0.4] = np.nan
    return xr.Dataset({"tb_h": (("time", "y", "x"), a, {"units": "K"})},
                      coords={"time": pd.date_range("2016-01-01", periods=n_time),
                              "y": -np.arange(ny, dtype="f8"), "x": np.arange(nx, dtype="f8")}
                      ).chunk({"time": max(1, n_time // 8)})


def _timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_stores(targets: dict, ds: xr.Dataset, repeat: int) -> list[tuple[str, float, float]]:
    mb = ds.tb_h.nbytes / 1e6
    rows = []
    for name, (root, so) in targets.items():
        urls = []

        def write(root=root, so=so, urls=urls):
            url = storage.join(root, f"bench-{uuid.uuid4().hex[:8]}.zarr")
            urls.append(url)
            ds.to_zarr(url, mode="w", consolidated=False, zarr_format=3,
                       encoding=storage.zarr_encoding(ds), storage_options=so or None)

        tw = _timed(write, repeat)

        def read(so=so, urls=urls):
            return storage.open_zarr(urls[-1], so).tb_h.values

        tr = _timed(read, repeat)
        rows.append((name, mb / tw, mb / tr))
    return rows


def bench_regrid(n_hours: int, repeat: int) -> tuple[float, float, float]:
    """Seconds for regridding ERA5-like hourly 0.25 deg fields to the demo window vs a copy."""
    lat = np.arange(45.0, 29.99, -0.25)
    lon = np.arange(-110.0, -84.99, 0.25)
    rng = np.random.default_rng(1)
    src = xr.Dataset({"t2m": (("time", "latitude", "longitude"),
                              rng.uniform(250, 310, (n_hours, lat.size, lon.size)).astype("f4"),
                              {"units": "K"})},
                     coords={"time": pd.date_range("2020-01-01", periods=n_hours, freq="1h"),
                             "latitude": lat, "longitude": lon}).chunk({"time": 1})
    win = EASE2Grid("M25").window_by_name("demo")
    regrid_to_window(src.isel(time=[0]), win).t2m.load()  # warm: load the numba kernel, weights
    t_regrid = _timed(lambda: regrid_to_window(src, win).t2m.values, repeat)
    t_copy = _timed(lambda: (src.t2m + 0).values, repeat)
    return t_regrid, t_copy, src.t2m.nbytes / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    ap.add_argument("--repeat", type=int, default=None)
    a = ap.parse_args()
    n_time, ny, nx, hours = (32, 192, 192, 96) if a.quick else (64, 384, 384, 24 * 14)
    repeat = a.repeat or (2 if a.quick else 3)

    import dask

    dask.config.set(scheduler="threads")
    tmp = Path(tempfile.mkdtemp(prefix="bench_io_"))
    gport, sport = _free_port(), _free_port()
    gcs = _serve([sys.executable, str(REPO / "tests" / "_gcs_emulator.py"), "start", "--host",
                  "127.0.0.1", "--port", str(gport), "--in-memory", "--default-bucket", "bench",
                  "-q"], gport)
    moto = _serve([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                   str(sport)], sport)
    try:
        import s3fs

        s3so = {"key": "bench", "secret": "bench", "endpoint_url": f"http://127.0.0.1:{sport}",
                "client_kwargs": {"region_name": "eu-west-1"}}
        s3fs.S3FileSystem(skip_instance_cache=True, **s3so).mkdir("bench")
        targets = {
            "local": (str(tmp), {}),
            "gs:// (emulator)": ("gs://bench", {"token": "anon",
                                               "endpoint_url": f"http://127.0.0.1:{gport}"}),
            "s3:// (moto)": ("s3://bench", s3so),
        }
        ds = _dataset(n_time, ny, nx)
        print(f"Zarr 3, float32 40 % NaN, zstd; {ds.tb_h.nbytes / 1e6:.1f} MB in "
              f"{len(ds.chunks['time'])} chunks; median of {repeat}")
        print(f"{'store':<18}{'write MB/s':>12}{'read MB/s':>12}{'write/local':>13}"
              f"{'read/local':>12}")
        rows = bench_stores(targets, ds, repeat)
        lw, lr = rows[0][1], rows[0][2]
        for name, w, r in rows:
            print(f"{name:<18}{w:12.1f}{r:12.1f}{w / lw:13.2f}{r / lr:12.2f}")
        t_reg, t_copy, mb = bench_regrid(hours, repeat)
        print(f"\nregrid {hours} hourly 0.25 deg fields ({mb:.1f} MB, one chunk per hour) to the "
              "EASE2 M25 demo window")
        print(f"  regrid {mb / t_reg:8.1f} MB/s   plain copy {mb / t_copy:8.1f} MB/s   "
              f"regrid/copy time ratio {t_reg / t_copy:.2f}")
    finally:
        gcs.terminate()
        moto.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
