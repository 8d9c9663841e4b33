"""Spatially blocked cross validation for SoMo.ml and its scores.

Cells are grouped into square blocks of ``block_size`` × ``block_size``
cells of the window; whole blocks go to one fold, so neighbouring cells
(which share weather and often stations) are never split between training
and testing.  Blocks are shuffled with the seed and handed out greedily to
the fold with the fewest cells so far, which keeps the folds' sizes close.

Scores per fold and layer (:func:`cv_scores`): the median over the fold's
held-out cells of R, NRMSE and anomaly R (anomalies of each series on its
own, :func:`casm_cloud.validation.metrics.anomaly_r`), and their mean over
the folds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.errors import UserError

__all__ = ["CVError", "spatial_folds", "check_folds", "cell_scores", "cv_scores", "SCORES"]

#: Scores of the CV table, in its column order.
SCORES = ("R", "NRMSE", "rel_bias", "anomaly_R")


class CVError(UserError, ValueError):
    """A cross validation that cannot run (too few blocks, an empty fold); names the key."""


def spatial_folds(cell_y: Sequence[int], cell_x: Sequence[int], n_folds: int, block_size: int,
                  seed: int = 0) -> np.ndarray:
    """The fold (0 … n_folds − 1) of every cell, whole spatial blocks per fold.

    Raises
    ------
    CVError
        If the cells fall into fewer blocks than folds (a fold would be empty).
    """
    cy, cx = np.asarray(cell_y, np.int64), np.asarray(cell_x, np.int64)
    if n_folds < 2:
        raise CVError(f"cv.folds={n_folds}: need at least 2 folds")
    block = (cy // block_size) * 1_000_003 + (cx // block_size)
    blocks, inverse, sizes = np.unique(block, return_inverse=True, return_counts=True)
    if blocks.size < n_folds:
        raise CVError(f"cv.folds={n_folds}: the {cy.size} station cells lie in only "
                      f"{blocks.size} spatial block(s) of cv.block_size={block_size} cells, so "
                      f"fold {blocks.size} would be empty; lower cv.folds or cv.block_size")
    order = np.random.default_rng([int(seed), 5]).permutation(blocks.size)
    fold_of_block = np.empty(blocks.size, dtype=np.int64)
    load = np.zeros(n_folds, dtype=np.int64)
    for b in order:
        f = int(np.argmin(load))
        fold_of_block[b] = f
        load[f] += sizes[b]
    return fold_of_block[inverse]


def check_folds(folds: np.ndarray, has_target: Mapping[str, np.ndarray], n_folds: int) -> None:
    """Refuse a fold without any held-out cell of a layer (names the fold and layer)."""
    for layer, has in has_target.items():
        for f in range(n_folds):
            if not np.any(has & (folds == f)):
                raise CVError(f"cv: fold {f} holds no station cell of layer {layer} "
                              f"({int(np.sum(folds == f))} cell(s) in the fold, none with "
                              f"{layer} targets); lower cv.folds or cv.block_size, or change "
                              "cv.seed")
            if not np.any(has & (folds != f)):
                raise CVError(f"cv: without fold {f} no cell of layer {layer} is left to "
                              "train on")


def cell_scores(pred: xr.DataArray, obs: xr.DataArray, dim: str = "time") -> xr.Dataset:
    """R, NRMSE and relative bias (the paper's, over the mean of the in-situ series) and
    anomaly R of every cell (:mod:`casm_cloud.validation.metrics`)."""
    from casm_cloud.validation import metrics as vm

    return xr.Dataset({"R": vm.pearson_r(pred, obs, dim), "NRMSE": vm.nrmse(pred, obs, dim),
                       "rel_bias": vm.rel_bias(pred, obs, dim),
                       "anomaly_R": vm.anomaly_r(pred, obs, dim),
                       "n": vm.n_pairs(pred, obs, dim)})


def cv_scores(per_cell: pd.DataFrame) -> pd.DataFrame:
    """The CV table: per layer and fold the median cell scores, and their mean over folds.

    Parameters
    ----------
    per_cell : pandas.DataFrame
        Columns ``layer``, ``fold``, ``cell`` and :data:`SCORES`.

    Returns
    -------
    pandas.DataFrame
        Columns ``layer``, ``fold`` (``"mean"`` for the average over folds),
        ``n_cells`` and :data:`SCORES`.
    """
    rows = []
    for layer, sub in per_cell.groupby("layer", sort=True):
        folds = sub.groupby("fold", sort=True)
        table = folds[list(SCORES)].median()
        table.insert(0, "n_cells", folds.size())
        table = table.reset_index()
        table["fold"] = table["fold"].astype(str)
        mean = {"fold": "mean", "n_cells": int(table["n_cells"].sum()),
                **{s: float(table[s].mean()) for s in SCORES}}
        table = pd.concat([table, pd.DataFrame([mean])], ignore_index=True)
        table.insert(0, "layer", layer)
        rows.append(table)
    return pd.concat(rows, ignore_index=True)
