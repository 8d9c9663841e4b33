"""Exact windowed EA-LSTM inference: every output day from its own 365-day window.

SoMo.ml was trained on, and publishes, predictions where day t is the model's
output after days t−364 … t starting from a zero state.  A single stateful
pass is *not* the same model (it drifts by up to 0.15 m3 m-3 on the published
weights), so this module runs every window, and makes that affordable:

* the EA-LSTM runs as a standard fused ``torch.nn.LSTM``
  (:meth:`casm_cloud.models.ealstm.EALSTM.as_lstm`: statics appended to each
  step, gate weights arranged so that the input gate sees the statics only),
  i.e. oneDNN on CPU and cuDNN on CUDA;
* windows are gathered from the time axis by index (an ``unfold``), a batch
  of ``batch`` windows × 365 steps at a time (2,048 on CPU, 16,384 on CUDA);
* windows with any missing input are skipped and come out NaN;
* ``precision="auto"`` uses bfloat16 only where the hardware makes it faster
  (a GPU, or a CPU with AMX or AVX512-BF16), decided once per process by a
  short timing; bf16 rounds inputs, weights and states, which over 365 steps
  moves a few windows by up to ~0.2 target stds (fp32 is the reference).

torch is imported lazily: the module loads without it.
"""

from __future__ import annotations

import functools
import time
from typing import Literal

import numpy as np

__all__ = ["WINDOW", "Precision", "WindowedModel", "cpu_has_amx", "cpu_has_native_bf16",
           "resolve_precision", "valid_windows"]

#: Days per input window (the published model's sequence length).
WINDOW = 365
Precision = Literal["auto", "fp32", "bf16"]
_BATCH = {"cpu": 2048, "cuda": 16384}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AMX or AVX512-BF16).

    oneDNN's bf16 LSTM uses them; without either, bf16 is emulated and slower
    than fp32 (see "Known traps" in docs/architecture.md), so ``precision="auto"``
    does not even measure.
    """
    if cpu_has_amx():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_bf16" in f.read()
    except OSError:
        return False


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (``amx_bf16`` in /proc/cpuinfo, or torch's view)."""
    try:
        import torch

        if "AMX" in str(torch.backends.cpu.get_cpu_capability()).upper():
            return True
    except (ImportError, AttributeError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


@functools.lru_cache(maxsize=8)
def _measured_bf16_faster(device: str, n_in: int, hidden: int) -> bool:
    """Time a small fused LSTM in fp32 and in bf16 on ``device``; True if bf16 is >10 % faster."""
    import torch

    lstm = torch.nn.LSTM(n_in, hidden, batch_first=True).to(device).eval()
    batch = 4096 if device == "cuda" else 256
    x = torch.randn(batch, 64, n_in, device=device)
    models = {torch.float32: lstm}
    try:
        models[torch.bfloat16] = torch.nn.LSTM(n_in, hidden, batch_first=True).to(
            device=device, dtype=torch.bfloat16).eval()
        with torch.inference_mode():
            models[torch.bfloat16](x.to(torch.bfloat16))
    except RuntimeError:  # no bf16 LSTM on this device / backend
        return False
    best = dict.fromkeys(models, float("inf"))
    with torch.inference_mode():
        models[torch.float32](x)
        for _ in range(3):  # alternate and keep the best: a shared machine is noisy
            for dtype, m in models.items():
                xx = x.to(dtype)
                _sync(device)
                t0 = time.perf_counter()
                m(xx)
                _sync(device)
                best[dtype] = min(best[dtype], time.perf_counter() - t0)
    return best[torch.bfloat16] < 0.8 * best[torch.float32]


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def resolve_precision(precision: Precision, device: str, n_in: int = 16, hidden: int = 128
                      ) -> Literal["fp32", "bf16"]:
    """The precision a process runs: ``"auto"`` → bf16 only where measured faster.

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16"}
    device : {"cpu", "cuda"}
        The resolved torch device.
    n_in, hidden : int
        LSTM sizes for the measurement (cached per process and sizes).

    Returns
    -------
    {"fp32", "bf16"}
        ``"auto"`` on a CPU without native bf16 (neither AMX nor AVX512-BF16) is
        fp32 without measuring (bf16 is emulated there and slower); on a GPU or
        a native-bf16 CPU a short timing of both decides (bf16 if > 20 % faster).

    Raises
    ------
    ValueError
        For an unknown precision.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision={precision!r}: expected 'auto', 'fp32' or 'bf16'")
    if precision != "auto":
        return precision
    if device == "cpu" and not cpu_has_native_bf16():
        return "fp32"
    return "bf16" if _measured_bf16_faster(device, int(n_in), int(hidden)) else "fp32"


def valid_windows(finite: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Windows (cells, days − window + 1) whose every day is finite.

    Parameters
    ----------
    finite : bool array (cells, days)
        Whether all dynamic inputs of a day are finite.
    """
    bad = np.concatenate([np.zeros((finite.shape[0], 1), np.int64),
                          np.cumsum(~finite, axis=1, dtype=np.int64)], axis=1)
    return (bad[:, window:] - bad[:, :-window]) == 0


class WindowedModel:
    """An EA-LSTM ready for windowed inference on one device in one precision.

    Parameters
    ----------
    model : casm_cloud.models.ealstm.EALSTM
    device : {"cpu", "cuda"}
    precision : {"fp32", "bf16"}
        Resolved precision (see :func:`resolve_precision`); the head runs in fp32.
    window : int
        Days per window.
    batch : int, optional
        Windows per forward (default 2,048 on CPU, 16,384 on CUDA).
    """

    def __init__(self, model, device: str = "cpu", precision: str = "fp32", *,
                 window: int = WINDOW, batch: int | None = None):
        import torch

        lstm, head = model.as_lstm()
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.device, self.precision, self.window = device, precision, int(window)
        self.batch = int(batch or _BATCH.get(device, 2048))
        self.lstm = lstm.to(device=device, dtype=self.dtype)
        self.head = head.to(device)
        self.n_dynamic = model.architecture["n_dynamic"]
        self.n_static = model.architecture["n_static"]

    def __call__(self, dynamic: np.ndarray, static: np.ndarray) -> np.ndarray:
        """Model output (standardised units) of every window.

        Parameters
        ----------
        dynamic : float32 array (cells, days, n_dynamic)
            Standardised dynamic inputs, ``days >= window``.
        static : float32 array (cells, n_static)
            Standardised static inputs.

        Returns
        -------
        float32 array (cells, days − window + 1)
            Output for the window ending on each day from ``window − 1`` on;
            NaN where a window or the cell's statics have a missing value.
        """
        import torch

        cells, days, _ = dynamic.shape
        n_out = days - self.window + 1
        out = np.full((cells, max(n_out, 0)), np.nan, dtype=np.float32)
        if n_out <= 0 or cells == 0:
            return out
        ok = valid_windows(np.isfinite(dynamic).all(axis=2), self.window)
        ok &= np.isfinite(static).all(axis=1)[:, None]
        cell_of, start_of = np.nonzero(ok)
        if cell_of.size == 0:
            return out
        dyn = torch.from_numpy(np.ascontiguousarray(dynamic, dtype=np.float32)).to(self.device)
        sta = torch.from_numpy(np.ascontiguousarray(static, dtype=np.float32)).to(self.device)
        steps = torch.arange(self.window, device=self.device)
        result = np.empty(cell_of.size, dtype=np.float32)
        with torch.inference_mode():
            for lo in range(0, cell_of.size, self.batch):
                c = torch.from_numpy(cell_of[lo:lo + self.batch]).to(self.device)
                t = torch.from_numpy(start_of[lo:lo + self.batch]).to(self.device)
                x = dyn[c[:, None], t[:, None] + steps[None, :]]            # (b, W, nd)
                s = sta[c][:, None, :].expand(-1, self.window, -1)         # (b, W, ns)
                xin = torch.cat([x, s], dim=2).to(self.dtype)
                _, (h, _) = self.lstm(xin)
                y = self.head(h[-1].float()).reshape(-1)
                result[lo:lo + c.numel()] = y.cpu().numpy()
        out[cell_of, start_of] = result
        return out
