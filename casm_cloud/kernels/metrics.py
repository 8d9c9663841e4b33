"""Private numba kernels for validation metrics (NumPy in, NumPy out).

Only the moving-window anomaly needs a kernel: a centred box-car mean over a
*time* window (not a count of samples) on an irregular time axis is not an
xarray or NumPy one-liner.  Everything else in
:mod:`casm_cloud.validation.metrics` is plain (dask-friendly) xarray
arithmetic.
"""

from __future__ import annotations

import numpy as np
from numba import guvectorize

__all__: list[str] = []


@guvectorize(
    ["void(float64[:], float64[:], float64, int64, float64[:])"],
    "(n),(n),(),()->(n)",
    nopython=True,
    cache=True,
)
def _boxcar_anomaly(values, t_days, half_window, min_obs, out):  # pragma: no cover - numba
    """Anomaly = value − mean of the valid values within ±half_window days.

    Same rule as pytesmo's ``boxcar_filter`` (``|t_j − t_i| ≤ window/2``, a
    value needs ``min_obs`` valid neighbours including itself, missing input
    stays missing).  ``t_days`` must be non-decreasing; a two-pointer sweep
    makes it O(n) instead of pytesmo's O(n·w).
    """
    n = values.shape[0]
    lo = 0
    hi = 0
    total = 0.0
    count = 0
    for i in range(n):
        out[i] = np.nan
        # extend the right edge to every point within the window
        while hi < n and t_days[hi] - t_days[i] <= half_window:
            if not np.isnan(values[hi]):
                total += values[hi]
                count += 1
            hi += 1
        # drop points that fell off the left edge
        while t_days[i] - t_days[lo] > half_window:
            if not np.isnan(values[lo]):
                total -= values[lo]
                count -= 1
            lo += 1
        if not np.isnan(values[i]) and count >= min_obs:
            out[i] = values[i] - total / count
