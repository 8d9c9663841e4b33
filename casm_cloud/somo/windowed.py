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
  of ``batch`` windows × 365 steps at a time (:func:`default_batch`: 128 per
  torch thread on CPU, where small batches keep the LSTM's gates and outputs
  in cache — 128 runs ~20–40 % faster per window than 2,048 on one thread and
  needs a tenth of the memory — and 16,384 on CUDA);
* on CPU each batch runs through the LSTM a few steps per call
  (:func:`segment_steps`), carrying the state: torch projects all of a call's
  inputs at once (steps × batch × 4·hidden floats), which for a whole window
  is ~100 MB per batch, beyond glibc's mmap ceiling, so every batch mapped and
  faulted in fresh pages; ~12 steps keep it in a core's L2 cache, and the
  process keeps freed buffers for reuse (:mod:`casm_cloud.inference.heap`;
  dask's nanny sets ``MALLOC_TRIM_THRESHOLD_``, which otherwise maps every
  buffer over 128 kB anew).  ``benchmarks/bench_somo.py`` (1) times it
  against one call per window side by side (1.26× the rate on 2 threads, minor
  page faults per 1,000 cell-days 96,500 → 5,400); (2) counts the worker's;
* windows with any missing input are skipped and come out NaN;
* ``precision="auto"`` uses bfloat16 only where the hardware makes it faster
  (a GPU, or a CPU with AMX), decided once per worker by a short timing of the
  model's LSTM (:mod:`casm_cloud.inference.precision`, the resolver both
  recipes share); bf16 rounds inputs, weights and states, which over 365 steps
  moves a few windows by up to ~0.2 target stds (fp32 is the reference).

torch is imported lazily: the module loads without it.
"""

from __future__ import annotations

import numpy as np

from casm_cloud.inference import heap
from casm_cloud.inference.precision import Precision, resolve_precision
from casm_cloud.inference.speed import cpu_has_amx

__all__ = ["WINDOW", "Precision", "WindowedModel", "cpu_has_amx", "default_batch",
           "resolve_precision", "segment_steps", "valid_windows"]

#: Days per input window (the published model's sequence length).
WINDOW = 365
_BATCH_CUDA = 16384
_BATCH_CPU_PER_THREAD, _BATCH_CPU_MAX = 128, 2048
#: Bytes of one LSTM call's input projection per torch thread on CPU (a core's L2 cache).
_CPU_PROJECTION_BYTES = 3 << 20


def default_batch(device: str) -> int:
    """Windows per forward when not given: 128 per torch thread on CPU (≤ 2,048), 16,384 on CUDA."""
    if device == "cuda":
        return _BATCH_CUDA
    import torch

    return min(_BATCH_CPU_PER_THREAD * max(torch.get_num_threads(), 1), _BATCH_CPU_MAX)


def segment_steps(device: str, batch: int, hidden: int, itemsize: int, window: int = WINDOW
                  ) -> int:
    """Steps per LSTM call: the whole window on CUDA; on CPU as many as keep one
    call's input projection (steps × batch × 4·hidden) within
    ``_CPU_PROJECTION_BYTES`` per torch thread (12 for the default batch of
    128 per thread, hidden 128, fp32)."""
    if device == "cuda":
        return window
    import torch

    per_step = batch * 4 * hidden * itemsize
    return max(1, min(window, _CPU_PROJECTION_BYTES * max(torch.get_num_threads(), 1)
                      // per_step))


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
        Windows per forward (default :func:`default_batch`).
    """

    def __init__(self, model, device: str = "cpu", precision: str = "fp32", *,
                 window: int = WINDOW, batch: int | None = None):
        import torch

        lstm, head = model.as_lstm()
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.device, self.precision, self.window = device, precision, int(window)
        self.batch = int(batch or default_batch(device))
        self.lstm = lstm.to(device=device, dtype=self.dtype)
        # The head as columns, applied by elementwise ops in a fixed order (_head).
        self._w = head.weight.detach().to(device=device, dtype=torch.float32).reshape(-1)
        self._b = head.bias.detach().to(device=device, dtype=torch.float32).reshape(())
        self.n_dynamic = model.architecture["n_dynamic"]
        self.n_static = model.architecture["n_static"]
        if device != "cuda":
            heap.keep_freed_buffers()

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
        seg = segment_steps(self.device, self.batch, self.lstm.hidden_size, self.dtype.itemsize,
                            self.window)
        result = np.empty(cell_of.size, dtype=np.float32)
        with torch.inference_mode():
            for lo in range(0, cell_of.size, self.batch):
                c = torch.from_numpy(cell_of[lo:lo + self.batch]).to(self.device)
                t = torch.from_numpy(start_of[lo:lo + self.batch]).to(self.device)
                x = dyn[c[:, None], t[:, None] + steps[None, :]]            # (b, W, nd)
                s = sta[c][:, None, :].expand(-1, self.window, -1)         # (b, W, ns)
                xin = torch.cat([x, s], dim=2).to(self.dtype)
                state = None                                               # zero state
                for a in range(0, self.window, seg):
                    _, state = self.lstm(xin[:, a:a + seg], state)
                result[lo:lo + c.numel()] = self._head(state[0][-1].float()).cpu().numpy()
        out[cell_of, start_of] = result
        if self.device != "cuda":
            heap.trim()
        return out

    def _head(self, h):
        """``h @ w + b`` of the last hidden states, row by row in one fixed order.

        A matmul's kernel (and so its summation order) depends on the number
        of rows; elementwise ops do not, so a window's output does not depend
        on which batch it is in (a grown partial chunk of an append gives the
        days it shares with the stored chunk the same bits).
        """
        y = self._b.expand(h.shape[0]).clone()
        for k in range(h.shape[1]):
            y += h[:, k] * self._w[k]
        return y
