"""Training throughput: the full data path against batches in memory, side by side in one run.

(1) samples/s of training epochs of the CASM dense network (7 x 1050 ReLU,
    Adam, MSE, batch 1024) fed by :class:`casm_cloud.pairs.SampleLoader` from
    a Zarr sample table, built as ``train_dense`` builds it (training split,
    the table's scaler, seeded shuffle) and run through the same per-epoch
    step as :func:`casm_cloud.training.fit`;
(2) the same epochs on the very same batches already in memory (on the
    device), through the same step: forward/backward alone;
(3) the loader alone (no model): how fast the data path can feed at all;
    its epoch time over (2)'s is what the data path would cost with no
    overlap at all (on a GPU, where (2) is far faster, this is what counts).

The table comes from the package's own functions: seeded AMSR2-like TB
(``casm_cloud.testing.make_tb_dataset``) and truth on the ``demo`` window,
then ``pairs.build_pairs`` and ``pairs.write_pairs`` (default 65 536
samples per Zarr chunk).  Target: the data path costs at most 15 %, i.e.
(1) / (2) >= 0.85.

Usage::

    .venv/bin/python benchmarks/bench_training.py            # 7 x 1050, 100 000 samples
    .venv/bin/python benchmarks/bench_training.py --quick    # 3 x 256, about a minute
    .venv/bin/python benchmarks/bench_training.py --device cuda

The full run takes about 10 minutes on 2 CPU cores, where the network's
compute dwarfs the data path; ``--quick``'s small network (a stand-in for a
faster device) makes the data path matter more.  Rates are medians of
interleaved repeats and the first ratio is the median of ratios of epochs
run next to each other; the machines are noisy, so only the ratios mean
anything.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time

import numpy as np
import pandas as pd
import torch

import casm_cloud  # noqa: F401  (pyproj before netCDF4)
from casm_cloud.grid import EASE2Grid
from casm_cloud.models import build_model
from casm_cloud.pairs import SampleLoader, build_pairs, write_pairs
from casm_cloud.testing import make_tb_dataset, make_truth
from casm_cloud.training import LOSSES, _deterministic, _epoch_loss

TRAIN_SHARE = 0.64 * 0.7  # train split (1 - 0.2) * (1 - 0.2) x valid share (30 % TB gaps)


def make_table(url: str, n_train: int, chunk_size: int, seed: int = 0) -> None:
    """A sample table of about ``n_train`` training samples: AMSR2 TB (4) + lat, lon -> SM."""
    win = EASE2Grid("M25").window_by_name("demo")
    n_time = math.ceil(n_train / (TRAIN_SHARE * win.shape[0] * win.shape[1]))
    times = pd.date_range("2012-07-02", periods=n_time, freq="3D")
    tb = make_tb_dataset(win, times, kind="amsr2", seed=seed, time_chunk=64)
    sm = make_truth(win, times, seed=seed, time_chunk=64)["sm_l1"].rename("sm")
    write_pairs(build_pairs(tb, sm, seed=seed), url, chunk_size=chunk_size)


def _train_loader(url: str, batch_size: int, seed: int) -> SampleLoader:
    # As training._loaders builds it for train_dense.
    return SampleLoader(url, "train", batch_size, None, None, None, seed)


def _epoch(model, optimizer, loader, device) -> tuple[float, int]:
    """Seconds and samples of one training epoch (fit's per-epoch step)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    _epoch_loss(model, loader, LOSSES["mse"], device, optimizer)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, loader.n_samples


class _Batches(list):
    """Batches already in memory, with the ``n_samples`` a loader has."""

    n_samples = 0
    features = None


def bench(url: str, hidden: list[int], batch_size: int, repeats: int, device) -> dict:
    loader = _train_loader(url, batch_size, seed=0)
    torch.manual_seed(0)
    model = build_model({"name": "dense", "n_inputs": len(loader.features), "hidden": hidden,
                         "activation": "relu"}).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    model.train()

    def read_only():
        t0 = time.perf_counter()
        n = sum(y.shape[0] for _, y in loader)
        return time.perf_counter() - t0, n

    in_memory = _Batches((x.to(device), y.to(device)) for x, y in loader)
    in_memory.n_samples = loader.n_samples
    with _deterministic():
        # Warm up (allocator, kernels, page cache) on a few batches of each kind.
        _epoch(model, optimizer, _Batches(in_memory[:3]), device)
        read_only()
        t_pipe, t_mem, t_read = [], [], []
        for i in range(repeats):
            # Interleaved, first one kind then the other, so drifts in load hit both.
            kinds = [(t_mem, in_memory), (t_pipe, loader)][::1 if i % 2 == 0 else -1]
            for times, batches in kinds:
                times.append(_epoch(model, optimizer, batches, device)[0])
            t_read.append(read_only()[0])
    n = loader.n_samples
    t_pipe, t_mem, t_read = np.asarray(t_pipe), np.asarray(t_mem), np.asarray(t_read)
    return {"n": n, "batches": len(in_memory), "features": len(loader.features),
            "chunks": len(loader._ranges),
            "pipeline": n / np.median(t_pipe), "memory": n / np.median(t_mem),
            "read": n / np.median(t_read),
            # Ratios of epochs run next to each other, then the median: robust to drifts.
            "ratio": float(np.median(t_mem / t_pipe)),
            "read_share": float(np.median(t_read / t_mem))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small network and table, under a minute")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--n-train", type=int, default=None,
                    help="training samples (default 100 000; 60 000 with --quick)")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="samples per Zarr chunk (default 65 536, as write_pairs; 8192 quick)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=None, help="epochs of each kind (default 2; 5 quick)")
    a = ap.parse_args()
    device = torch.device(a.device)
    hidden = [256] * 3 if a.quick else [1050] * 7
    n_train = a.n_train or (60_000 if a.quick else 100_000)
    chunk = a.chunk_size or (8192 if a.quick else 65_536)
    repeats = a.repeats or (5 if a.quick else 2)

    work = tempfile.mkdtemp(prefix="bench_training_")
    try:
        url = f"{work}/pairs.zarr"
        t0 = time.perf_counter()
        make_table(url, n_train, chunk)
        t_build = time.perf_counter() - t0
        r = bench(url, hidden, a.batch_size, repeats, device)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"network {len(hidden)} x {hidden[0]} ReLU, {r['features']} inputs, batch "
          f"{a.batch_size}, Adam, on {a.device} ({torch.get_num_threads()} torch threads)")
    print(f"table: {r['n']:,} training samples in {r['chunks']} Zarr chunks of {chunk:,} "
          f"({r['batches']} batches; built in {t_build:.1f} s); median of {repeats} epochs each")
    print(f"  (1) Zarr -> SampleLoader -> forward/backward {r['pipeline']:12,.0f} samples/s")
    print(f"  (2) in-memory batches -> forward/backward    {r['memory']:12,.0f} samples/s")
    print(f"  (3) SampleLoader alone (no model)            {r['read']:12,.0f} samples/s")
    rows = [
        ("pipeline / in memory (samples/s)", r["ratio"], ">= 0.85"),
        ("loader alone / in-memory epoch (time)", r["read_share"], "<= 0.15"),
    ]
    print("\nratio                                    measured   target")
    for name, value, target in rows:
        print(f"{name:<40} {value:>9.2f}   {target}")


if __name__ == "__main__":
    main()
