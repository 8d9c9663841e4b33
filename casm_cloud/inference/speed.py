"""The speed gate of ``precision="auto"``: whether bf16 is faster here, for this model.

Speed only: :func:`casm_cloud.inference.precision.choose_precision` takes bf16
from here only once its difference from fp32 on the run's own data is within
the tolerance (docs/architecture.md, "Where each concept lives").

* on CUDA: bf16 if a short measurement of the model's own shapes
  (:class:`Probe`: its architecture, the rows of one forward, in the way the
  stage runs it) finds bf16 at least 1.5x faster than fp32 (:data:`FASTER`).
* on a CPU: only where the CPU has AMX tiles (torch's
  ``get_cpu_capability()`` or ``amx_bf16`` in ``/proc/cpuinfo``) *and* the same
  measurement finds bf16 faster.  Without AMX nothing is measured: on an
  AVX-512 Xeon without AMX a bf16 matmul ran at 121 GFLOP/s against fp32's
  236.  CPUs with AVX512-BF16 but no AMX are kept at fp32 too, although there
  the measurement can find bf16 faster (on the 2-core development machines:
  about 2x for the EA-LSTM, 4x for the 7 x 1050 MLP); ``"bf16"`` remains
  available by name.  :func:`_may_use_bf16` is the one place this gate lives.
* Networks narrower than :data:`MIN_WIDTH` (their widest layer) are fp32
  everywhere without measuring: bf16's matrix units (AMX tiles, tensor cores)
  gain nothing on such small GEMMs, and their two timings sit so close that a
  loaded worker decided differently from run to run.
* The measurement is cached per process (``lru_cache`` keyed by device and
  probe), so a worker measures once.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FASTER", "MIN_WIDTH", "Probe", "bf16_faster_here", "bf16_time_ratio", "cpu_has_amx"]

#: bf16 is chosen only when it takes less than this fraction of fp32's time.
#: Its rounding is accepted for a clear gain only, and a bar far from parity
#: keeps the decision of small networks, whose two timings hover around each
#: other, from flipping between processes (a bar of 0.9 made separate runs of
#: one tiny recipe differ).  ``benchmarks/bench_somo.py`` prints
#: :func:`bf16_time_ratio` for real and tiny networks.
FASTER = 2 / 3
#: Width of a network's widest layer below which "auto" is fp32 without measuring
#: (a worker training in its other thread once timed a 4 x 32 MLP's bf16 faster,
#: although it is slower).
MIN_WIDTH = 64
_now = time.perf_counter


@dataclass(frozen=True)
class Probe:
    """The shapes to measure: a model architecture and how the stage runs it.

    Attributes
    ----------
    architecture : str
        The model's architecture as JSON (``model.architecture``, rebuilt
        with random weights by :func:`casm_cloud.models.build_model`).
    rows : int
        Rows of one forward: samples (dense) or windows (LSTM).
    steps : int
        Time steps per window of an EA-LSTM probe (a window's prefix: the
        per-step shapes are the model's, the time only scales).
    """

    architecture: str
    rows: int
    steps: int = 32

    @property
    def width(self) -> int:
        """Units of the network's widest hidden layer."""
        hidden = json.loads(self.architecture).get("hidden", 0)
        return max(hidden, default=0) if isinstance(hidden, list) else int(hidden)

    @classmethod
    def of(cls, architecture: Mapping, rows: int, steps: int = 32) -> Probe:
        """A probe of an architecture dict."""
        return cls(json.dumps(dict(architecture), sort_keys=True), int(rows), int(steps))


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (torch's capability, or ``amx_bf16`` in cpuinfo)."""
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


def bf16_faster_here(device: str, probe: Probe) -> bool:
    """The speed gate: whether ``"auto"`` may take bf16 for ``probe``'s model on ``device``.

    fp32 without measuring where :func:`_may_use_bf16` says no or the network is
    narrower than :data:`MIN_WIDTH`; else whether bf16 is faster by :data:`FASTER`.
    """
    if not _may_use_bf16(device) or probe.width < MIN_WIDTH:
        return False
    return _bf16_faster(device, probe)


def _may_use_bf16(device: str) -> bool:
    """Whether ``"auto"`` measures bf16 at all here: on CUDA, and on CPUs with AMX."""
    return device == "cuda" or cpu_has_amx()


#: Seconds each timing lasts at least (a probe's run repeated): tiny networks
#: run in ~0.1 ms, within the noise of a descheduled thread on a shared core.
_MIN_TIMING = 0.01


def _bf16_faster(device: str, probe: Probe) -> bool:
    """True if bf16 takes less than :data:`FASTER` of fp32's time for the probe's model."""
    ratio = bf16_time_ratio(device, probe)
    return ratio is not None and ratio < FASTER


@functools.lru_cache(maxsize=16)
def bf16_time_ratio(device: str, probe: Probe) -> float | None:
    """bf16's time over fp32's for the probe's model, alternating, best of 5 each
    (None where the backend has no bf16 LSTM); measured once per process."""
    runners = _runners(device, probe)
    if runners is None:
        return None
    once = {}
    for name, run in runners.items():
        run()                                   # warm-up (oneDNN primitives, cuDNN plans)
        _sync(device)
        t0 = _now()
        run()
        _sync(device)
        once[name] = _now() - t0
    repeat = max(1, int(_MIN_TIMING / max(min(once.values()), 1e-6)) + 1)
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(5):                          # alternate: a shared machine is noisy
        for name, run in runners.items():
            _sync(device)
            t0 = _now()
            for _ in range(repeat):
                run()
            _sync(device)
            best[name] = min(best[name], _now() - t0)
    return best["bf16"] / best["fp32"]


def _runners(device: str, probe: Probe):
    """``{"fp32": f, "bf16": f}`` running the probe's model as the stage does, or None."""
    import torch

    from casm_cloud.models import build_model

    arch = json.loads(probe.architecture)
    model = build_model(arch).eval().to(device)
    gen = torch.Generator().manual_seed(0)
    if arch["name"] == "ealstm":
        lstm, _ = model.as_lstm()
        n_in = arch["n_dynamic"] + arch["n_static"]
        x = torch.randn(probe.rows, probe.steps, n_in, generator=gen).to(device)
        try:
            lstm16 = lstm.to(device=device, dtype=torch.bfloat16)
            with torch.inference_mode():
                lstm16(x[:1].to(torch.bfloat16))
        except RuntimeError:                    # no bf16 LSTM on this backend
            return None
        lstm32 = model.as_lstm()[0].to(device)
        x16 = x.to(torch.bfloat16)

        def lstm_run(m, xx):
            def run():
                with torch.inference_mode():
                    m(xx)
            return run
        return {"fp32": lstm_run(lstm32, x), "bf16": lstm_run(lstm16, x16)}

    rows = probe.rows if device == "cuda" else min(probe.rows, 2048)  # GEMMs as efficient: short
    x = torch.randn(rows, arch["n_inputs"], generator=gen).to(device)

    def dense_run(bf16: bool):
        def run():
            with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16,
                                                        enabled=bf16):
                model(x)
        return run
    return {"fp32": dense_run(False), "bf16": dense_run(True)}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()

