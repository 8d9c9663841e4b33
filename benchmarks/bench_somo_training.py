"""SoMo.ml EA-LSTM training rate, against bare GEMMs of the same shapes, side by side.

(1) ``casm_cloud.somo.training.fit_ealstm`` (the fused ``nn.LSTM`` with the
    EA-LSTM's masks, Adam, the per-cell loss) on seeded inputs, one epoch of
    ``samples`` windows, at the demo's size (24 hidden, 120-day window) and the
    paper's (128 hidden, 365 days): GFLOP/s counted as the search's cost model
    counts them (:func:`casm_cloud.somo.search.train_cost`: forward GEMMs × 3);
(2) in the same run, the bare GEMMs of one training step's forward pass
    (the input projection and the recurrent products, batch × (n_in + H) @
    (n_in + H) × 4H, once per step), × 3 for the backward: the rate the
    machine gives those shapes at all.  (1) / (2) is how close training gets
    to it (the LSTM's gate nonlinearities, the backward's own layout, Adam);
(3) a cost model fitted to the three sizes, seconds = recurrent steps × a
    per-step overhead (the gate kernels, autograd, Adam) + flop / a rate, is
    written for the train stage's estimate (``casm_cloud.rates``:
    ``somo_train_step_ms``, ``somo_train_gflops``) unless ``--no-record``, with
    what it gives for the SoMo.ml demo at its sizes and at the paper's
    (365 days, 128 hidden).  Measured with one worker's threads (``--threads``,
    default 1: the recipes' workers have one thread each).

Run: ``.venv/bin/python benchmarks/bench_somo_training.py [--quick] [--no-record]``
(about a minute on 2 cores; ``--quick`` is a smoke run and records nothing).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import casm_cloud  # noqa: F401  (pyproj before netCDF4)
from casm_cloud.somo.search import train_cost
from casm_cloud.somo.training import fit_ealstm

N_DYN, N_STA = 6, 10


def _data(cells: int, days: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    dyn = rng.standard_normal((cells, days, N_DYN)).astype(np.float32)
    sta = rng.standard_normal((cells, N_STA)).astype(np.float32)
    target = (0.25 + 0.05 * np.tanh(dyn[:, :, 0].cumsum(1) / 30)).astype(np.float32)
    target[:, ::3] = np.nan
    return {"dynamic": dyn, "static": sta, "target": target}


def _fit_seconds(hidden: int, window: int, samples: int, batch: int) -> tuple[float, float]:
    """(seconds, flop) of one epoch of ``samples`` windows."""
    data = _data(cells=20, days=window + 400)
    t0 = time.perf_counter()
    fit_ealstm(data, np.arange(20), (window, window + 400), hidden=hidden, dropout=0.5,
               initial_forget_bias=5.0, window=window, epochs=1, batch_size=batch, lr=1e-3,
               samples_per_epoch=samples, seed=0)
    seconds = time.perf_counter() - t0
    _, flop = train_cost(hidden=hidden, n_inputs=N_DYN + N_STA, window=window, samples=samples,
                         epochs=1, batch_size=batch, cells=0, days=0)
    return seconds, flop


def _gemm_rate(hidden: int, window: int, samples: int, batch: int) -> float:
    n_in = N_DYN + N_STA
    x = torch.randn(batch, n_in + hidden)
    w = torch.randn(n_in + hidden, 4 * hidden)
    out = torch.empty(batch, 4 * hidden)
    steps = window * (samples // batch)
    t0 = time.perf_counter()
    for _ in range(3 * steps):     # forward and (about) backward
        torch.matmul(x, w, out=out)
    seconds = time.perf_counter() - t0
    return 3 * steps * 2.0 * batch * (n_in + hidden) * 4 * hidden / seconds / 1e9


SIZES = (("demo", 24, 120, 128), ("mid", 64, 120, 256), ("paper", 128, 365, 256))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples (under a minute)")
    ap.add_argument("--no-record", action="store_true", help="do not store the measured rate")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads: those of one dask worker (1, the recipes' default)")
    a = ap.parse_args()
    n = 512 if a.quick else 2048
    record_it = not (a.no_record or a.quick)  # --quick is a smoke run: too noisy to fit
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s): one worker's")
    rows = []
    for name, hidden, window, batch in SIZES:
        seconds, flop = _fit_seconds(hidden, window, n, batch)
        gemm = _gemm_rate(hidden, window, n, batch)
        steps = window * -(-n // batch)
        rows.append((steps, flop, seconds))
        print(f"(1,2) {name:5s} H={hidden:3d} W={window} batch {batch}: fit_ealstm "
              f"{flop / seconds / 1e9:6.1f} GFLOP/s ({n} samples in {seconds:.2f} s), bare "
              f"GEMMs {gemm:6.1f} GFLOP/s, ratio {flop / seconds / 1e9 / gemm:.2f}")
    # seconds = steps x (a per-step overhead: the gate kernels, autograd, Adam) + flop / rate
    design = np.array([[st, fl] for st, fl, _ in rows])
    (step_s, s_per_flop), *_ = np.linalg.lstsq(design, np.array([r[2] for r in rows]),
                                               rcond=None)
    step_s, gflops = max(float(step_s), 0.0), 1.0 / max(float(s_per_flop), 1e-15) / 1e9
    fit = [st * step_s + fl / gflops / 1e9 for st, fl, _ in rows]
    print(f"(3) cost model: {1e3 * step_s:.3f} ms per recurrent step + flop at {gflops:.1f} "
          f"GFLOP/s; it gives {', '.join(f'{f:.2f}' for f in fit)} s against the measured "
          f"{', '.join(f'{r[2]:.2f}' for r in rows)} s")
    if record_it:
        from casm_cloud.rates import record

        record("somo_train_step_ms", 1e3 * step_s)
        print(f"(3) recorded somo_train_step_ms, somo_train_gflops in "
              f"{record('somo_train_gflops', gflops)}")
    # the demo's 30 trainings (3 layers x (5 folds + 5 seeds), 20 epochs x 2048 samples, ~40
    # station cells x ~3000 days predicted after each) at its sizes and at the paper's
    for hidden, window, batch in ((24, 120, 128), (128, 365, 256)):
        steps, per = train_cost(hidden=hidden, n_inputs=N_DYN + N_STA + 1, window=window,
                                samples=2048, epochs=20, batch_size=batch, cells=40, days=3000)
        seconds = 30 * (steps * step_s + per / gflops / 1e9)
        print(f"(3) the SoMo.ml demo's 30 trainings at {window} days x {hidden} hidden: "
              f"≈ {seconds / 3600:.2f} worker-hours")


if __name__ == "__main__":
    main()
