"""The floating-point precision of inference: faster only within a tolerance of fp32.

One chooser for both recipes' predict stages (CASM's dense ensemble and
SoMo.ml's windowed EA-LSTM), :func:`choose_precision`:

* ``"fp32"`` is IEEE fp32, also on CUDA, where TF32 is turned off for matmuls
  and cuDNN while a block runs (:func:`numerics`).
* ``"bf16"`` and ``"tf32"`` (CUDA only) are used as asked, their largest
  difference from fp32 on the run's own first chunk measured and recorded.
* ``"auto"`` checks the faster candidates, fastest first, on the run's own
  first chunk with its own networks: the largest absolute difference from fp32
  must be within the tolerance (:data:`TOLERANCE`, ``predict.tolerance`` in a
  recipe, in the product's units), else fp32.  The candidates: bf16 where the
  speed gate below finds it faster, then TF32 on CUDA.  A speed gate alone is
  not enough: bf16 rounds an LSTM's states at each of its 365 steps, and the
  published SoMo.ml model drifted by up to 0.13 m3 m-3 at bf16 on an AMX CPU,
  while CASM's dense networks stay within 1e-3 (docs/science.md).

The speed gate (:func:`resolve_precision`):

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

Reproducibility (resume and append).  The configuration hash of a predict
stage holds the *requested* precision (``"auto"``), never a worker's hardware
decision, so the runner's stage hash is the same on any machine.  The decision
is made once per output store, when its template is written, on a worker of
the kind that runs the chunks (:func:`resolve_for_run`), and recorded in the
store's attributes (``casm_precision``: the resolved one,
``casm_precision_requested``: what was asked, and the check behind it:
``casm_precision_tolerance``, ``_error``, ``_samples``, ``_checked``).  A resumed or appended run reads
the recorded precision back (:func:`pinned_precision`) and computes its remaining
chunks in it, whatever a new measurement would say, so every chunk of a store
is in one precision and a run resumed on the same machine gives the same bits
as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["PRECISION_ATTR", "REQUESTED_ATTR", "TOLERANCE", "Choice", "Precision", "Probe",
           "Sample", "bf16_time_ratio", "choose_precision", "cpu_has_amx", "numerics", "pinned_precision",
           "resolve_for_run", "resolve_precision", "summary_attrs", "summary_line"]

Precision = Literal["auto", "fp32", "bf16", "tf32"]
Resolved = Literal["fp32", "bf16", "tf32"]
#: Largest difference from fp32 a faster precision may make, in the product's units
#: (m3 m-3): a small fraction of both products' structural uncertainty (docs/science.md).
TOLERANCE = 1e-3
#: Store attribute holding the precision the chunks were computed in.
PRECISION_ATTR = "casm_precision"
#: Store attribute holding the requested precision (what the hash covers).
REQUESTED_ATTR = "casm_precision_requested"
#: Store attributes of the check behind the precision: the tolerance, the largest
#: difference from fp32 measured on the run's own first chunk, the number of values
#: compared, and every faster precision measured (JSON: name -> largest difference).
TOLERANCE_ATTR, ERROR_ATTR = "casm_precision_tolerance", "casm_precision_error"
SAMPLES_ATTR, CHECKED_ATTR = "casm_precision_samples", "casm_precision_checked"
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


PRECISIONS = ("auto", "fp32", "bf16", "tf32")


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")


def resolve_precision(precision: Precision, device: str, probe: Probe) -> Resolved:
    """The speed gate: ``"auto"`` → bf16 only where it is faster for ``probe``'s model.

    Speed only: :func:`choose_precision` takes bf16 from here only once its
    difference from fp32 on the run's own data is within the tolerance.

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "tf32"}
    device : {"cpu", "cuda"}
        The resolved torch device.
    probe : Probe
        The model's shapes for the measurement.

    Returns
    -------
    {"fp32", "bf16", "tf32"}

    Raises
    ------
    ValueError
        For an unknown precision.
    """
    _check(precision)
    if precision != "auto":
        return precision
    if not _may_use_bf16(device) or probe.width < MIN_WIDTH:
        return "fp32"
    return "bf16" if _bf16_faster(device, probe) else "fp32"


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


@contextlib.contextmanager
def numerics(device: str, precision: str) -> Iterator[None]:
    """Run the block in ``precision``'s matmul numerics, restoring torch's settings after.

    On CUDA, ``"fp32"`` is IEEE fp32: TF32 off for matmuls and cuDNN (whose LSTM
    uses TF32 by default on Ampere and later); ``"tf32"`` turns both on.  bf16 is
    the model's dtype or autocast, set by the caller.  On a CPU there is no TF32.
    """
    if precision == "tf32" and device != "cuda":
        raise ValueError(f"precision='tf32' runs on CUDA only (device {device!r})")
    if device != "cuda":
        yield
        return
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    on = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass(frozen=True)
class Choice:
    """The precision of a run and the check behind it (recorded in the store's attributes).

    ``error`` is the largest absolute difference from fp32 over ``samples`` values of
    the run's own first chunk (0.0 for fp32, the reference, with ``samples`` 0);
    ``checked`` every faster precision measured, with its difference.
    """

    precision: Resolved
    requested: Precision
    tolerance: float
    error: float | None = 0.0      # None: not measured (a name asked for without a sample)
    samples: int = 0
    checked: tuple[tuple[str, float], ...] = ()

    def attrs(self) -> dict:
        return {PRECISION_ATTR: self.precision, REQUESTED_ATTR: self.requested,
                TOLERANCE_ATTR: self.tolerance, ERROR_ATTR: self.error,
                SAMPLES_ATTR: self.samples, CHECKED_ATTR: json.dumps(dict(self.checked))}


class Sample:
    """``sample(device, precision)`` for :func:`resolve_for_run`: the run's first chunk in a
    precision, ``compute(inputs, device, precision)`` on inputs ``read()`` once per process
    (the task that chooses ships it to a worker without them)."""

    def __init__(self, read: Callable[[], Any], compute: Callable[..., np.ndarray]):
        self.read, self.compute, self._inputs = read, compute, None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_inputs": None}

    def __call__(self, device: str, precision: str) -> np.ndarray:
        if self._inputs is None:
            self._inputs = self.read()
        return self.compute(self._inputs, device, precision)


def _candidates(device: str, probe: Probe) -> list[str]:
    """The precisions ``"auto"`` checks, fastest first: bf16 where the speed gate takes it
    (:func:`resolve_precision`), then TF32 on CUDA."""
    out = ["bf16"] if resolve_precision("auto", device, probe) == "bf16" else []
    return out + (["tf32"] if device == "cuda" else [])


def choose_precision(precision: Precision, device: str, probe: Probe, *,
                     tolerance: float = TOLERANCE,
                     sample: Callable[[str], np.ndarray] | None = None) -> Choice:
    """The precision to run in, checked on the run's own data.

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "tf32"}
        A name is used as asked (its difference from fp32 measured and recorded);
        ``"auto"`` takes the fastest candidate (:func:`_candidates`) whose largest
        difference from fp32 on ``sample`` is within ``tolerance``, else fp32.
    device : {"cpu", "cuda"}
        The resolved device.
    probe : Probe
        The model's shapes, for the speed gate.
    tolerance : float
        In the product's units.
    sample : callable, optional
        ``sample(precision)`` → the product's values on the run's first chunk in that
        precision (NaN where there is no value).  Without one nothing faster than
        fp32 is taken by ``"auto"``.
    """
    _check(precision)
    if precision == "fp32":
        return Choice("fp32", "fp32", tolerance)
    names = _candidates(device, probe) if precision == "auto" else [precision]
    if sample is None or not names:
        if precision != "auto":
            return Choice(precision, precision, tolerance, None)
        return Choice("fp32", precision, tolerance)
    ref = np.asarray(sample("fp32"), dtype=np.float64)
    if precision == "auto" and not np.isfinite(ref).any():  # nothing to check it on: exact
        return Choice("fp32", precision, tolerance)
    checked = []
    for name in names:
        diff = np.abs(np.asarray(sample(name), dtype=np.float64) - ref)
        both = np.isfinite(diff)
        error = float(diff[both].max()) if both.any() else 0.0
        checked.append((name, error))
        if precision != "auto" or error <= tolerance:
            return Choice(name, precision, tolerance, error, int(both.sum()), tuple(checked))
    return Choice("fp32", precision, tolerance, 0.0, int(np.isfinite(ref).sum()), tuple(checked))


def _choose_here(precision: Precision, device: str, probe: Probe, tolerance: float,
                 sample) -> tuple[str, Choice]:
    """(device, choice) as made in this process (a worker, or the caller)."""
    from casm_cloud.inference.device import resolve_device

    dev = resolve_device(device)
    return dev, choose_precision(precision, dev, probe, tolerance=tolerance,
                                 sample=None if sample is None else functools.partial(sample, dev))


def resolve_for_run(precision: Precision, device: str, probe: Probe, *,
                    tolerance: float = TOLERANCE, sample=None, client=None,
                    resources: Mapping | None = None) -> Choice:
    """The precision of a whole run, chosen on a worker of the kind that runs its chunks.

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16", "tf32"}
    device : {"auto", "cpu", "cuda"}
    probe : Probe
    tolerance : float
    sample : callable, optional
        ``sample(device, precision)`` → the first chunk's values (picklable: it
        runs on the worker); see :func:`choose_precision`.
    client : distributed.Client, optional
        With a client, one task (``resources`` as the chunk tasks') chooses on a
        worker; without one, this process.
    resources : mapping, optional
        The chunk tasks' resources (``{"GPU": 1}`` on GPU clusters).
    """
    _check(precision)
    if precision == "fp32":
        return Choice("fp32", "fp32", tolerance)
    if client is None:
        return _choose_here(precision, device, probe, tolerance, sample)[1]
    fut = client.submit(_choose_here, precision, device, probe, tolerance, sample, pure=False,
                        resources=dict(resources) if resources else None)
    return fut.result()[1]


def pinned_precision(stored: Mapping | None, precision: Precision) -> Resolved | None:
    """The precision recorded in a reused store, if it fits the request; None to decide anew.

    ``stored`` is the store's attributes (None for a new store).  The
    configuration hash already ties the store to the requested precision, so
    a recorded ``"fp32"``/``"bf16"`` is this configuration's decision.
    """
    if not stored:
        return None
    got = stored.get(PRECISION_ATTR)
    want = stored.get(REQUESTED_ATTR, got)
    if got in ("fp32", "bf16", "tf32") and (precision == "auto" or got == precision) and want == precision:
        return got
    return None


def summary_attrs(stores: list[Mapping]) -> dict:
    """One product's precision attributes from those of the stores it was made of
    (networks, layers, seeds): every precision used, the largest measured difference."""
    recorded = [a for a in stores if PRECISION_ATTR in a]
    if not recorded:
        return {}
    errors = [a.get(ERROR_ATTR) for a in recorded]
    return {PRECISION_ATTR: ",".join(sorted({a[PRECISION_ATTR] for a in recorded})),
            REQUESTED_ATTR: ",".join(sorted({a.get(REQUESTED_ATTR, "") for a in recorded})),
            TOLERANCE_ATTR: min(a.get(TOLERANCE_ATTR, TOLERANCE) for a in recorded),
            ERROR_ATTR: None if None in errors else max(errors),
            SAMPLES_ATTR: int(sum(a.get(SAMPLES_ATTR, 0) for a in recorded))}


def summary_line(attrs: Mapping) -> str:
    """A store's or a product's precision record in words, for the stage's line:
    ``bf16 (max |diff| vs fp32 3.1e-05 over 40960 values; tolerance 0.001)``."""
    if PRECISION_ATTR not in attrs:
        return "not recorded"
    prec, tol = attrs[PRECISION_ATTR], attrs.get(TOLERANCE_ATTR, TOLERANCE)
    error, samples = attrs.get(ERROR_ATTR), attrs.get(SAMPLES_ATTR, 0)
    if prec == "fp32":
        rejected = ", ".join(f"{k} off by {v:.2g}"
                             for k, v in json.loads(attrs.get(CHECKED_ATTR) or "{}").items())
        return (f"fp32 ({rejected} > tolerance {tol:g})" if rejected
                else "fp32 (the reference; no faster precision was a candidate here)")
    if error is None:
        return f"{prec} (not checked against fp32)"
    return f"{prec} (max |diff| vs fp32 {error:.2g} over {samples} values; tolerance {tol:g})"
