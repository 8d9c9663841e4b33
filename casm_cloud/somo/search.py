"""Hyper-parameter search by the spatial cross-validation (O & Orth 2021).

The paper chose its EA-LSTM's settings by the same 5-fold spatially blocked CV
that scores it.  The recipe's ``search.candidates`` lists values per setting
(``hidden``, ``dropout``, ``initial_forget_bias`` of the model; ``lr``,
``epochs``, ``batch_size``, ``samples_per_epoch`` of the training); every
combination is trained on every fold of a layer as parallel tasks, scored
on its held-out station cells (median over the cells, mean over the folds,
as the CV table), and the best by ``search.metric`` becomes the layer's
setting: its fold models are the layer's CV folds and the final seeds train
with it.  Layers are searched in order, each on the chosen upper layers'
predictions.

Before the trainings start the train stage prints their count and an
estimated cost from the measured EA-LSTM training rate
(:mod:`casm_cloud.rates`, measured by ``benchmarks/bench_somo_training.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pandas as pd

__all__ = ["combinations", "combination_name", "apply", "choose", "train_cost",
           "stage_cost", "cost_line"]

#: Direction of each selection metric: +1 larger is better, -1 smaller is better.
BETTER = {"R": 1, "anomaly_R": 1, "NRMSE": -1}


def combinations(candidates: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of the candidate values (keys sorted; one empty dict when none)."""
    keys = sorted(candidates)
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(candidates[k] for k in keys))]


def combination_name(combo: Mapping) -> str:
    """A path-safe name of a combination: ``hidden-32_lr-0.01`` (``default`` when empty)."""
    return "_".join(f"{k}-{v:g}" for k, v in sorted(combo.items())) or "default"


def apply(model: Mapping, fit: Mapping, combo: Mapping, where: Mapping[str, str]
          ) -> tuple[dict, dict]:
    """``model`` and ``fit`` settings with ``combo``'s values (``where[key]``: its section)."""
    model, fit = dict(model), dict(fit)
    for key, value in combo.items():
        (model if where[key] == "model" else fit)[key] = value
    return model, fit


def choose(scores: pd.DataFrame, metric: str) -> pd.Series:
    """The best row of ``scores`` (one row per candidate) by ``metric`` (ties: first)."""
    if metric not in BETTER:
        raise ValueError(f"metric {metric!r}: expected one of {sorted(BETTER)}")
    valid = scores.dropna(subset=[metric])
    if valid.empty:
        raise ValueError(f"no candidate has a CV {metric}: too few held-out days")
    values = valid[metric] * BETTER[metric]
    return valid.loc[values.idxmax()]


def train_cost(*, hidden: int, n_inputs: int, window: int, samples: int, epochs: int,
               batch_size: int, cells: int, days: int) -> tuple[int, float]:
    """``(recurrent steps, flop)`` of one EA-LSTM training and its predictions at the cells.

    A window of W steps costs W · 2 · (n_inputs + hidden) · 4 · hidden in the LSTM's
    GEMMs forward; forward and backward together about three times that.  Each batch
    runs W recurrent steps, whose fixed cost (gate kernels, autograd) dominates small
    models (``benchmarks/bench_somo_training.py`` fits both).  After training the model
    predicts every station cell's days (forward only; counted as flop).
    """
    step = 2.0 * (n_inputs + hidden) * 4 * hidden * window
    steps = epochs * -(-samples // batch_size) * window
    return steps, 3.0 * step * samples * epochs + step * cells * days


def stage_cost(model: Mapping, fit: Mapping, candidates: Mapping[str, Sequence],
               where: Mapping[str, str], *, folds: int, members: int, n_inputs: Sequence[int],
               samples: Sequence[int], cells: int, days: int) -> tuple[int, int, float]:
    """``(trainings, steps, flop)`` of a train stage: per layer (``n_inputs``, ``samples``:
    its input count and training samples over all cells) every candidate on every fold
    (the folds once without a search) and the final seeds (costed at the candidates'
    mean, the chosen one being unknown before)."""
    settings = [apply(model, fit, c, where) for c in combinations(candidates)]
    n, steps, flop = 0, 0.0, 0.0
    for n_in, n_samples in zip(n_inputs, samples, strict=True):
        per = [train_cost(hidden=m["hidden"], n_inputs=n_in, window=m["window"],
                          samples=min(f["samples_per_epoch"] or n_samples, n_samples),
                          epochs=f["epochs"], batch_size=f["batch_size"], cells=cells,
                          days=days) for m, f in settings]
        weight = folds + members / len(per)
        steps += weight * sum(p[0] for p in per)
        flop += weight * sum(p[1] for p in per)
        n += folds * len(per) + members
    return n, int(steps), flop


def cost_line(n_trainings: int, steps: int, flop: float, *, step_ms: float, gflops: float,
              source: str, workers: int | None = None) -> str:
    """``"24 trainings, ≈ 0.42 worker-hours, ≈ 0.21 h on 2 workers (...)"``."""
    hours = (steps * step_ms / 1e3 + flop / (gflops * 1e9)) / 3600.0
    wall = f", ≈ {hours / workers:.2f} h on {workers} workers" if workers else ""
    return (f"{n_trainings} trainings, ≈ {hours:.2f} worker-hours{wall} (at "
            f"{step_ms:g} ms per recurrent step + {gflops:g} GFLOP/s, {source})")
