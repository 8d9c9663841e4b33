"""Benchmark of windowed SoMo.ml inference, side by side in one run.

(1) windowed EA-LSTM throughput (cell-days/s; every day its own 365-day window
    through the fused ``nn.LSTM``) against bare matmuls of the same shapes on
    the same threads (each LSTM call's input GEMM and 365 recurrent GEMMs per
    batch, into preallocated outputs), fp32 and bf16; target ratio >= 0.5; and a
    split precision (bf16 input projection, fp32 recurrence) against fp32: time
    ratio and error, kept only if both faster and within the tolerance;
(2) ``predict_to_zarr`` end to end (Zarr in with the 364-day halo -> Zarr out,
    on a LocalCluster of one single-threaded worker) against bare forwards
    of the same windows in memory on one thread; target >= 0.85;
(3) peak memory (VmHWM of a fresh process) when the period or the area doubles;
    target <= +10 %;
(4) a projection of the full record (ERA5 land 90 N - 60 S, 2000-2019, 3 layers
    x 5 runs) in CPU core-hours and GPU-hours from the measured rates.

Run: ``.venv/bin/python benchmarks/bench_somo.py [--quick] [--device cpu|cuda]``
(``--quick`` about 3 minutes on 2 shared cores).  Rates on shared machines are
noisy: read the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import casm_cloud  # noqa: F401  (pyproj before netCDF4)

warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification")
warnings.filterwarnings("ignore", message=".*Port 8787 is already in use")

HIDDEN, N_DYN, N_STA, WINDOW = 128, 6, 10, 365
TINY = ((37.0, 38.5), (-99.0, -97.5))           # the "tiny" region: 7 x 7 ERA5 cells
REAL = Path(os.environ.get("CASM_REAL_DATA", Path(__file__).resolve().parents[2] / "shared"
                           / "data" / "real"))
# Fallback when the ERA5 land mask is absent: 0.25° cells with land fraction > 0.5, 90N-60S.
LAND_CELLS_STATED = 230_000


def _model(seed: int = 0):
    import torch

    from casm_cloud.models.ealstm import EALSTM

    torch.manual_seed(seed)
    return EALSTM(N_DYN, N_STA, HIDDEN).eval()


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _flop_per_cell_day(n_in: int = N_DYN + N_STA, hidden: int = HIDDEN) -> float:
    return WINDOW * 2.0 * (n_in + hidden) * 4 * hidden


def _windowed_run(device: str, precision: str, n_windows: int, batch: int):
    """(one timed pass of the windowed runner, cell-days it computes)."""
    from casm_cloud.somo.windowed import WindowedModel

    cells = 16
    days = WINDOW - 1 + n_windows // cells
    rng = np.random.default_rng(0)
    x = rng.standard_normal((cells, days, N_DYN)).astype(np.float32)
    s = rng.standard_normal((cells, N_STA)).astype(np.float32)
    run = WindowedModel(_model(), device, precision, batch=batch)
    run(x[:1, :WINDOW + 1], s[:1])
    return (lambda: run(x, s)), cells * (days - WINDOW + 1)


def _matmul_run(device: str, precision: str, n_windows: int, batch: int):
    """(one pass of bare GEMMs of the fused LSTM's shapes (no gates, no gather), windows).

    The GEMMs the runner's LSTM calls do, in its steps per call
    (:func:`casm_cloud.somo.windowed.segment_steps`): each call's input
    projection, then one recurrent GEMM per step, into preallocated outputs.
    """
    import torch

    from casm_cloud.somo.windowed import segment_steps

    dt = torch.bfloat16 if precision == "bf16" else torch.float32
    b = min(batch, n_windows)
    seg = segment_steps(device, b, HIDDEN, dt.itemsize)
    x = torch.randn(b * seg, N_DYN + N_STA, device=device, dtype=dt)
    w_ih = torch.randn(N_DYN + N_STA, 4 * HIDDEN, device=device, dtype=dt)
    w_hh = torch.randn(HIDDEN, 4 * HIDDEN, device=device, dtype=dt)
    h = torch.randn(b, HIDDEN, device=device, dtype=dt)
    proj = torch.empty(b * seg, 4 * HIDDEN, device=device, dtype=dt)
    gates = torch.empty(b, 4 * HIDDEN, device=device, dtype=dt)
    n_batches = -(-n_windows // b)

    def once():
        for _ in range(n_batches):
            for a in range(0, WINDOW, seg):
                steps = min(seg, WINDOW - a)
                torch.matmul(x[:b * steps], w_ih, out=proj[:b * steps])
                for _ in range(steps):
                    torch.matmul(h, w_hh, out=gates)

    once()
    return once, n_batches * b


def _rates_side_by_side(device: str, precision: str, n_windows: int, batch: int,
                        reps: int) -> tuple[float, float]:
    """Cell-days/s of the windowed runner and of the bare GEMMs, alternated, best of ``reps``."""
    runs = {"windowed": _windowed_run(device, precision, n_windows, batch),
            "matmul": _matmul_run(device, precision, n_windows, batch)}
    best = dict.fromkeys(runs, np.inf)
    for _ in range(reps):                     # alternate: load changes within a run
        for name, (once, _) in runs.items():
            t0 = time.perf_counter()
            once()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return tuple(runs[k][1] / best[k] for k in ("windowed", "matmul"))


def _whole_window_side_by_side(device: str, n_windows: int, batch: int, reps: int):
    """fp32 (cell-days/s, minor faults per 1,000 cell-days) of the runner as it is, and
    calling the LSTM once per window (``segment_steps`` given no byte limit), alternated."""
    from casm_cloud.somo import windowed

    once, n = _windowed_run(device, "fp32", n_windows, batch)

    def whole():
        saved = windowed._CPU_PROJECTION_BYTES
        windowed._CPU_PROJECTION_BYTES = 1 << 62
        try:
            once()
        finally:
            windowed._CPU_PROJECTION_BYTES = saved

    best, faults = {"segmented": np.inf, "whole": np.inf}, {}
    for _ in range(reps):
        for name, run in (("segmented", once), ("whole", whole)):
            f0, t0 = _minflt(), time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
            faults[name] = (_minflt() - f0) * 1000 / n
    return {k: (n / best[k], faults[k]) for k in best}


def _write_inputs(root: Path, box, n_days: int, tag: str):
    """Seeded features and statics of a (lat, lon) box of the ERA5 grid, as Zarr; their URLs."""
    from casm_cloud.grid import LatLonGrid
    from casm_cloud.somo.testing import make_features, make_statics

    win = LatLonGrid("ERA5_0p25").window(*box)
    times = pd.date_range("2000-01-01", periods=n_days, freq="D")
    c = win.coords()
    f = make_features(times, ("y", "x"), win.shape).assign_coords(c)
    s = make_statics(("y", "x"), win.shape).assign_coords(c)
    fu, su = str(root / f"f_{tag}.zarr"), str(root / f"s_{tag}.zarr")
    f.chunk({"time": 128}).to_zarr(fu, mode="w", consolidated=False, zarr_format=3)
    s.to_zarr(su, mode="w", consolidated=False, zarr_format=3)
    return fu, su, win.shape


def _checkpoint(root: Path) -> str:
    import torch

    from casm_cloud.somo import import_published
    from casm_cloud.somo.testing import published_state, write_scalers

    torch.save(published_state(0, hidden=HIDDEN), root / "model.pt")
    write_scalers(root)
    return import_published(str(root / "model.pt"), forcing_scaler=str(root / "forcing_scaler.csv"),
                            static_scaler=str(root / "static_scaler.csv"), out=str(root / "ckpt"))


def _e2e(ckpt, fu, su, out, chunks, client) -> float:
    from casm_cloud import storage
    from casm_cloud.somo import predict_to_zarr

    storage.remove(out)
    t0 = time.perf_counter()
    predict_to_zarr(ckpt, fu, su, out, chunks=chunks, precision="fp32", device="cpu",
                    client=client)
    return time.perf_counter() - t0


def _minflt() -> int:
    """Minor page faults of this process so far (a worker's, through ``client.run``)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _bare(ckpt, fu, su) -> tuple[float, int]:
    """Seconds of the same windows through the same runner, inputs already in memory."""
    from casm_cloud import storage
    from casm_cloud.somo.predict import _model, load_spec

    spec = load_spec(ckpt)
    f, s = storage.open_zarr(fu).load(), storage.open_zarr(su).load()
    x = np.stack([f[n].transpose("y", "x", "time").values for n in spec.dynamic], -1)
    x = ((x - np.float32(spec.dyn_mean)) / np.float32(spec.dyn_std)).astype(np.float32)
    st = np.stack([s[n].values for n in spec.static], -1)
    st = ((st - np.float32(spec.sta_mean)) / np.float32(spec.sta_std)).astype(np.float32)
    x, st = x.reshape(-1, x.shape[2], x.shape[3]), st.reshape(-1, st.shape[-1])
    run = _model(spec.path, spec.content_hash, spec.storage_options, "cpu", "fp32", None)
    t0 = time.perf_counter()
    run(x, st)
    return time.perf_counter() - t0, x.shape[0] * (x.shape[1] - WINDOW + 1)


def _worker_faults(client, fn, *args):
    """(fn(*args), minor page faults the cluster's workers made meanwhile)."""
    f0 = client.run(_minflt)
    out = fn(*args)
    f1 = client.run(_minflt)
    return out, sum(f1[w] - f0[w] for w in f1)


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _child_memory(root: str, tag: str) -> None:
    """In a fresh process: one in-process prediction from stored inputs; print the peak RSS."""
    import torch  # noqa: F401  (counted in the baseline, as on a worker)

    from casm_cloud.somo import predict_to_zarr

    r = Path(root)
    base = _rss_mb()
    predict_to_zarr(str(r / "ckpt"), str(r / f"f_{tag}.zarr"), str(r / f"s_{tag}.zarr"),
                    str(r / f"o_{tag}.zarr"), chunks={"time": 32, "y": 7, "x": 7},
                    precision="fp32", device="cpu")
    print(json.dumps({"base_mb": base, "peak_mb": _rss_mb("VmHWM")}))


def _land_cells() -> tuple[int, str]:
    path = REAL / "era5" / "landmask_0.25_0.25.nc"
    if not path.exists():
        return LAND_CELLS_STATED, "stated (ERA5 land mask file absent)"
    import xarray as xr

    land = xr.open_dataset(path)["land"]
    lat = land[[d for d in land.dims if "lat" in d][0]]
    n = int((land.where(lat >= -60.0) > 0.5).sum())
    return n, f"ERA5 land mask > 0.5 at 90N-60S ({path.name})"


def _split_precision_side_by_side(device: str, batch: int, reps: int) -> dict:
    """Issue 27's candidate between bf16 and fp32: the input projection of every step in
    one bf16 GEMM, the recurrence in fp32 (a step loop: the fused ``nn.LSTM`` takes one
    dtype).  Against the fused fp32 LSTM of the same shapes (forget bias 5, as SoMo.ml):
    time ratio, and the largest error of a linear head on the last state over the head's
    spread (dimensionless: a random model has no units); fused bf16 autocast beside."""
    import torch

    torch.manual_seed(0)
    n_in, h_dim = N_DYN + N_STA, HIDDEN
    lstm = torch.nn.LSTM(n_in, h_dim).to(device)
    head = torch.nn.Linear(h_dim, 1).to(device)
    with torch.no_grad():
        lstm.bias_ih_l0[h_dim:2 * h_dim] = 5.0
    x = torch.randn(WINDOW, batch, n_in, device=device)
    w_ih, w_hh_t = lstm.weight_ih_l0, lstm.weight_hh_l0.t().contiguous()
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0

    @torch.no_grad()
    def fused():
        return head(lstm(x)[0][-1]).float()

    @torch.no_grad()
    def split():
        xp = (x.reshape(-1, n_in).bfloat16() @ w_ih.t().bfloat16()).float()
        xp = xp.reshape(WINDOW, batch, 4 * h_dim) + bias
        h = torch.zeros(batch, h_dim, device=device)
        c = torch.zeros_like(h)
        for t in range(WINDOW):
            i, f, g, o = torch.addmm(xp[t], h, w_hh_t).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return head(h)

    def autocast():
        with torch.autocast(device, dtype=torch.bfloat16):
            return fused()

    best, out = {}, {}
    for _ in range(reps):
        for name, fn in (("fp32", fused), ("split", split), ("bf16", autocast)):
            _sync(device)
            t0 = time.perf_counter()
            out[name] = fn()
            _sync(device)
            best[name] = min(best.get(name, np.inf), time.perf_counter() - t0)
    spread = float(out["fp32"].std())
    return {k: (best[k] / best["fp32"], float((out[k] - out["fp32"]).abs().max()) / spread)
            for k in ("split", "bf16")}


def _section1(dev: str, quick: bool) -> dict:
    import torch

    from casm_cloud.somo.windowed import default_batch, segment_steps

    batch = default_batch(dev)
    n_win = max(batch, 1024 if quick else 8192)
    reps = 2 if quick else 3
    print(f"\n(1) windowed EA-LSTM (6 dynamic + 10 static inputs, H={HIDDEN}, {WINDOW}-day "
          f"windows), {n_win} windows in batches of {batch}, {segment_steps(dev, batch, HIDDEN, 4)}"
          f" steps per LSTM call in fp32, vs bare GEMMs of the same shapes into preallocated "
          f"outputs, {torch.get_num_threads()} threads; alternated, best of {reps}")
    rates = {}
    for prec in ("fp32", "bf16"):
        w, m = _rates_side_by_side(dev, prec, n_win, batch, reps)
        rates[prec] = w
        print(f"  {prec}: windowed {w:8.1f} cell-days/s ({w * _flop_per_cell_day() / 1e9:5.1f} "
              f"GFLOP/s); bare matmul {m:8.1f} cell-days/s; ratio {w / m:.3f} (target >= 0.5)")
    split = _split_precision_side_by_side(dev, batch, reps)
    for name, what in (("split", "bf16 input projection + fp32 recurrence"),
                       ("bf16", "fused bf16 (autocast)")):
        ratio, err = split[name]
        print(f"  {what}: time / fused fp32 {ratio:.2f}, largest error / output spread "
              f"{err:.1e} -> {'kept' if ratio < 1 and err < 1e-3 else 'not kept'} "
              f"(kept only if faster and within 1e-3 of the spread)")
    if dev == "cpu":
        r = _whole_window_side_by_side(dev, n_win, batch, reps)
        (seg, f_seg), (whole, f_whole) = r["segmented"], r["whole"]
        print(f"  fp32, one LSTM call per window instead: {whole:8.1f} cell-days/s, minor page "
              f"faults per 1,000 cell-days {f_whole:.0f} (segmented: {f_seg:.0f}); segmented / "
              f"whole {seg / whole:.2f}")
    return rates


def _section2(root: Path, ckpt: str, quick: bool) -> float:
    import torch
    from distributed import Client, LocalCluster

    n_out = 192 if quick else 365
    fu, su, shape = _write_inputs(root, TINY, WINDOW - 1 + n_out, "e2e")
    chunks = {"time": -(-n_out // 2), "y": 7, "x": 7}                   # two time chunks
    print(f"\n(2) predict_to_zarr end to end (tiny window {shape[0]} x {shape[1]} cells, "
          f"{n_out} days, chunks {chunks['time']} days x 7 x 7, inputs with the 364-day halo "
          "from Zarr) on a LocalCluster of 1 worker x 1 thread, vs bare forwards of the same "
          "windows in memory on 1 thread")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                      processes=True) as cluster, Client(cluster) as client:
        _e2e(ckpt, fu, su, str(root / "warm.zarr"), chunks, client)       # loads the model
        t_e2e = t_bare = np.inf
        for _ in range(2):  # interleaved, best of each: a shared machine is noisy
            t, faults = _worker_faults(client, _e2e, ckpt, fu, su, str(root / "e2e.zarr"),
                                       chunks, client)
            t_e2e = min(t_e2e, t)
            f0 = _minflt()
            t, n = _bare(ckpt, fu, su)
            t_bare, bare_faults = min(t_bare, t), _minflt() - f0
    torch.set_num_threads(threads)
    print(f"  end to end {n / t_e2e:7.1f} cell-days/s, bare {n / t_bare:7.1f} cell-days/s "
          f"({n} cell-days); ratio {t_bare / t_e2e:.3f} (target >= 0.85)")
    print(f"  minor page faults per 1,000 cell-days: worker {faults * 1000 / n:.0f} (dask's "
          f"nanny sets MALLOC_TRIM_THRESHOLD_), bare {bare_faults * 1000 / n:.0f}")
    return n / t_e2e


def _section3(root: Path, quick: bool) -> None:
    n_out = 32 if quick else 128
    wide = (TINY[0], (TINY[1][0], TINY[1][1] + 1.75))                  # 14 columns, not 7
    cases = {"base": (TINY, n_out), "2x period": (TINY, 2 * n_out), "2x area": (wide, n_out)}
    print(f"\n(3) peak memory of a fresh process (in-process predict_to_zarr, chunks 32 days x "
          f"7 x 7; base: tiny window, {n_out} output days)")
    peaks = {}
    for tag, (box, n) in cases.items():
        key = tag.replace(" ", "_")
        _, _, shape = _write_inputs(root, box, WINDOW - 1 + n, key)
        r = subprocess.run([sys.executable, __file__, "--child-memory", key, "--root", str(root)],
                           capture_output=True, text=True, check=True)
        info = json.loads(r.stdout.strip().splitlines()[-1])
        peaks[tag] = info["peak_mb"]
        print(f"  {tag:10s} {shape[0]} x {shape[1]} cells x {n} days: peak {info['peak_mb']:.0f} "
              f"MB ({info['peak_mb'] - info['base_mb']:.0f} MB above the imports)")
    for tag in ("2x period", "2x area"):
        print(f"  {tag}: {peaks[tag] / peaks['base'] - 1:+.1%} (target <= +10 %)")


def _section4(rates: dict, e2e_rate: float, dev: str) -> None:
    import torch

    land, how = _land_cells()
    days = len(pd.date_range("2000-01-01", "2019-12-31", freq="D"))
    total = land * days * 3 * 5
    flop = _flop_per_cell_day()
    print(f"\n(4) full record: {land} land cells ({how}) x {days} days x 3 layers x 5 runs = "
          f"{total:.3g} cell-days, {flop / 1e6:.1f} MFLOP each (fused LSTM; deeper layers "
          "have 1-2 more inputs, ignored)")
    cores = torch.get_num_threads()
    if dev == "cpu":
        for prec, r in rates.items():
            print(f"  CPU {prec} (1): {r:.0f} cell-days/s on {cores} threads -> "
                  f"{total / r * cores / 3600:,.0f} core-hours")
        print(f"  CPU fp32 end to end (2): {e2e_rate:.0f} cell-days/s on 1 core -> "
              f"{total / e2e_rate / 3600:,.0f} core-hours")
        assumed = 30e12
        print(f"  GPU (not measured here; run --device cuda): at an assumed 30 TFLOP/s sustained "
              f"(bf16 cuDNN LSTM, H=128, on an H100/H200-class GPU) -> "
              f"{total * flop / assumed / 3600:,.0f} GPU-hours")
    else:
        for prec, r in rates.items():
            print(f"  GPU {prec} (1): {r:.0f} cell-days/s -> {total / r / 3600:,.0f} GPU-hours")


def _precision_line(dev: str) -> None:
    """What precision="auto" picks here, and bf16's time over fp32's that it measures."""
    from casm_cloud.inference import precision as P
    from casm_cloud.inference import speed as S
    from casm_cloud.somo.windowed import default_batch

    def lstm(hidden):
        return S.Probe.of({"name": "ealstm", "n_dynamic": N_DYN, "n_static": N_STA,
                           "hidden": hidden}, default_batch(dev))

    def mlp(hidden):
        return S.Probe.of({"name": "dense", "n_inputs": 4, "hidden": hidden}, 8192)

    probes = {"SoMo.ml EA-LSTM H=128": lstm(HIDDEN), "EA-LSTM H=64": lstm(64),
              "SoMo.ml demo H=24": lstm(24), "tiny test recipe H=8": lstm(8),
              "CASM 7x1050 MLP": mlp([1050] * 7), "CASM demo 4x128 MLP": mlp([128] * 4),
              "tiny test recipe 4x32 MLP": mlp([32] * 4)}
    print(f"  AMX {S.cpu_has_amx()}, CPU capability {torch_capability()}; precision auto "
          f"checks bf16 at widths >= {S.MIN_WIDTH} where bf16/fp32 time < {S.FASTER:.2f}, "
          f"and takes it only within predict.tolerance of fp32 on the run's first chunk")
    for name, probe in probes.items():
        ratio = S.bf16_time_ratio(dev, probe)
        shown = "  n/a" if ratio is None else f"{ratio:5.2f}"
        print(f"  {name:26s} bf16/fp32 time {shown}: speed gate -> "
              f"{P.resolve_precision('auto', dev, probe)}")


def torch_capability() -> str:
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about 3 minutes)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of (1) (default torch's; 1 on an oversubscribed machine)")
    ap.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_memory is not None:
        _child_memory(a.root, a.child_memory)
        return
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    _precision_line(a.device)
    rates = _section1(a.device, a.quick)
    print(f"  [{time.perf_counter() - t0:.0f} s]")
    with tempfile.TemporaryDirectory(prefix="bench_somo_") as tmp:
        root = Path(tmp)
        ckpt = _checkpoint(root)
        e2e = _section2(root, ckpt, a.quick)
        print(f"  [{time.perf_counter() - t0:.0f} s]")
        _section3(root, a.quick)
        print(f"  [{time.perf_counter() - t0:.0f} s]")
    _section4(rates, e2e, a.device)
    print(f"  [{time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()
