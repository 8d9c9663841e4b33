"""Training throughput: the full data path against batches in memory, side by side in one run.

(1) samples/s of training the CASM dense network (7 x 1050 ReLU, Adam, MSE,
    batch 1024) fed by :class:`casm_cloud.pairs.SampleLoader` from a Zarr
    sample table, built as ``train_dense`` builds it (training split, the
    table's scaler, seeded shuffle), through the per-epoch step of
    :func:`casm_cloud.training.fit`;
(2) the same steps on the very same batches already in memory (on the
    device): forward/backward alone;
(3) the loader alone (no model): how fast the data path can feed at all;
    its epoch time over (2)'s is what the data path would cost with no
    overlap at all (on a GPU, where (2) is far faster, this is what counts).

(1) and (2) run side by side in the same epochs: the training loop gets a
loader batch, then its in-memory twin, and so on, and each step is timed;
waiting for the next loader batch counts to (1).  So the load of other jobs
on a shared machine hits both alike.  The loader's background thread runs
during both kinds of step; (3) bounds what it can cost.

The table comes from the package's own functions: seeded AMSR2-like TB
(``casm_cloud.testing.make_tb_dataset``) and truth on the ``demo`` window,
then ``pairs.build_pairs`` and ``pairs.write_pairs`` (default 65 536
samples per Zarr chunk).  Target: the data path costs at most 15 %, i.e.
(1) / (2) >= 0.85.

Usage::

    .venv/bin/python benchmarks/bench_training.py            # 7 x 1050, 100 000 samples, ~5 min
    .venv/bin/python benchmarks/bench_training.py --quick    # 3 x 256, under a minute
    .venv/bin/python benchmarks/bench_training.py --device cuda

The full run takes about 5 minutes on 2 CPU cores, where the network's
compute dwarfs the data path; ``--quick``'s small network (a stand-in for a
faster device) and small table chunks (two shuffle buffers an epoch) make
the data path matter more.  Absolute rates on shared machines are noisy;
the ratios are measured side by side.
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
from casm_cloud.training.loop import LOSSES, _deterministic, _epoch_loss

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
    # As training.dense._loaders builds it for train_dense.
    return SampleLoader(url, "train", batch_size, None, None, None, seed)


class _Interleaved:
    """The loader's batches and the same batches in memory, alternately; times each step.

    The time from yielding a batch to the next request is that batch's
    training step.  Fetching the next loader batch (what the training loop
    waits for: the first buffer's read, a buffer not ready yet, slicing) is
    charged to the loader's side, together with that batch's step (which on
    a device includes the host-to-device copy).
    """

    def __init__(self, loader: SampleLoader, in_memory: list, device: torch.device):
        self.loader, self.in_memory, self.device = loader, in_memory, device
        self.features = loader.features
        self.t_pipe = self.t_mem = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __iter__(self):
        batches = iter(self.loader)
        for mem_batch in self.in_memory:
            t0 = self._now()
            batch = next(batches)
            yield batch
            t1 = self._now()
            self.t_pipe += t1 - t0
            yield mem_batch
            self.t_mem += self._now() - t1
        if next(batches, None) is not None:
            raise RuntimeError("the loader gave more batches than its first epoch")


def bench(url: str, hidden: list[int], batch_size: int, repeats: int, device) -> dict:
    loader = _train_loader(url, batch_size, seed=0)
    torch.manual_seed(0)
    model = build_model({"name": "dense", "n_inputs": len(loader.features), "hidden": hidden,
                         "activation": "relu"}).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    model.train()
    loss = LOSSES["mse"]

    def read_only() -> float:
        t0 = time.perf_counter()
        for _ in loader:
            pass
        return time.perf_counter() - t0

    # The in-memory twin: the same batches, already on the device.
    in_memory = [(x.to(device), y.to(device)) for x, y in loader]
    with _deterministic():
        _epoch_loss(model, in_memory[:3], loss, device, optimizer)  # warm up
        read_only()  # warm up (page cache, zarr's event loop)
        t_pipe, t_mem, t_read = [], [], []
        for _ in range(repeats):
            both = _Interleaved(loader, in_memory, device)
            _epoch_loss(model, both, loss, device, optimizer)
            t_pipe.append(both.t_pipe)
            t_mem.append(both.t_mem)
            t_read.append(read_only())
    n = loader.n_samples
    t_pipe, t_mem, t_read = np.asarray(t_pipe), np.asarray(t_mem), np.asarray(t_read)
    return {"n": n, "batches": len(in_memory), "features": len(loader.features),
            "chunks": len(loader._ranges),
            "pipeline": n * repeats / t_pipe.sum(), "memory": n * repeats / t_mem.sum(),
            "read": n / np.median(t_read), "epochs": t_mem / t_pipe,
            "ratio": float(t_mem.sum() / t_pipe.sum()),
            "read_share": float(np.median(t_read) / np.median(t_mem))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small network and table, under a minute")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--n-train", type=int, default=None,
                    help="training samples (default 100 000; 60 000 with --quick)")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="samples per Zarr chunk (default 65 536, as write_pairs; 8192 quick)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved epochs (default 1; 3 with --quick)")
    a = ap.parse_args()
    device = torch.device(a.device)
    hidden = [256] * 3 if a.quick else [1050] * 7
    n_train = a.n_train or (60_000 if a.quick else 100_000)
    chunk = a.chunk_size or (8192 if a.quick else 65_536)
    repeats = a.repeats or (3 if a.quick else 1)

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
          f"({r['batches']} batches; built in {t_build:.1f} s); {repeats} interleaved epoch(s)")
    print(f"  (1) Zarr -> SampleLoader -> forward/backward {r['pipeline']:12,.0f} samples/s")
    print(f"  (2) in-memory batches -> forward/backward    {r['memory']:12,.0f} samples/s")
    print(f"  (3) SampleLoader alone (no model)            {r['read']:12,.0f} samples/s")
    print("  (1) / (2) by epoch: " + " ".join(f"{v:.3f}" for v in r["epochs"]))
    rows = [
        ("pipeline / in memory (samples/s)", r["ratio"], ">= 0.85"),
        ("loader alone / in-memory epoch (time)", r["read_share"], "<= 0.15"),
    ]
    print("\nratio                                    measured   target")
    for name, value, target in rows:
        print(f"{name:<40} {value:>9.3f}   {target}")


if __name__ == "__main__":
    main()
