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

The speed gate (:func:`resolve_precision`; :mod:`casm_cloud.inference.speed`):
bf16 only where a short measurement of the model's own shapes
(:class:`~casm_cloud.inference.speed.Probe`) finds it clearly faster than fp32,
on CUDA, or on a CPU with AMX tiles; networks narrower than
:data:`~casm_cloud.inference.speed.MIN_WIDTH` are fp32 without measuring.

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from casm_cloud.inference.speed import Probe, bf16_faster_here

__all__ = ["PRECISION_ATTR", "REQUESTED_ATTR", "TOLERANCE", "Choice", "Precision", "Sample",
           "choose_precision", "numerics", "pinned_precision", "resolve_for_run",
           "resolve_precision", "summary_attrs", "summary_line"]

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
    return "bf16" if bf16_faster_here(device, probe) else "fp32"


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
