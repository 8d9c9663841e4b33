"""Measured compute rates behind the cost estimates printed before work starts.

A rate is this machine's when a benchmark has measured it here (written to
``$CASM_RATES``, default ``~/.cache/casm_cloud/rates.json``), else the
reference value below, measured on the reference machine (2-core Xeon with
AMX, torch 2.13 CPU build) by the command beside it.  Each estimate says
which it used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["REFERENCE", "rates_path", "rate", "record"]

#: name -> (value, unit, the command that measured it on the reference machine).  The
#: EA-LSTM training cost model: seconds = recurrent steps x step + flop / rate, fitted to
#: fit_ealstm at three sizes on one thread (one worker of the recipes' clusters)
REFERENCE = {
    "somo_train_step_ms": (0.80, "ms per recurrent step (one thread)",
                           "python benchmarks/bench_somo_training.py"),
    "somo_train_gflops": (54.7, "GFLOP/s (one thread)",
                          "python benchmarks/bench_somo_training.py"),
}


def rates_path() -> Path:
    return Path(os.environ.get("CASM_RATES") or Path.home() / ".cache" / "casm_cloud"
                / "rates.json")


def _measured() -> dict:
    try:
        return json.loads(rates_path().read_text())
    except (OSError, ValueError):
        return {}


def rate(name: str) -> tuple[float, str]:
    """``(value, where it came from)``: this machine's measurement, else the reference."""
    here = _measured().get(name)
    if isinstance(here, (int, float)) and here > 0:
        return float(here), f"measured here ({rates_path()})"
    value, _, command = REFERENCE[name]
    return value, f"reference machine ({command})"


def record(name: str, value: float) -> Path:
    """Store this machine's measured ``name`` (the benchmarks call this)."""
    from casm_cloud import storage

    path = rates_path()
    storage.write_text(str(path), json.dumps({**_measured(), name: float(value)}, indent=1))
    return path
