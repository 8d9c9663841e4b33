"""Private numba kernel: apply sparse interpolation weights (NumPy in, NumPy out)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def apply_weights(src: np.ndarray, index: np.ndarray, weight: np.ndarray,
                  min_weight: float) -> np.ndarray:
    """Weighted sums of source cells, renormalised over the valid ones.

    Parameters
    ----------
    src : (n, m) float array
        ``n`` fields (leading dimensions flattened), ``m`` source cells each.
    index : (p, k) int64
        Source cell of each of the ``k`` neighbours of ``p`` target cells;
        ``-1`` marks a neighbour outside the source grid.
    weight : (p, k) float64
        Interpolation weight of each neighbour (rows sum to 1 inside).
    min_weight : float
        A target whose valid (finite, inside) neighbours carry less than this
        total weight is NaN; otherwise the valid weights are renormalised.

    Returns
    -------
    (n, p) float32
    """
    n = src.shape[0]
    p, k = index.shape
    out = np.empty((n, p), dtype=np.float32)
    for t in range(n):
        row = src[t]
        for j in range(p):
            s = 0.0
            ws = 0.0
            for q in range(k):
                i = index[j, q]
                if i < 0:
                    continue
                v = row[i]
                if np.isfinite(v):
                    w = weight[j, q]
                    s += w * v
                    ws += w
            out[t, j] = s / ws if ws >= min_weight and ws > 0.0 else np.nan
    return out
