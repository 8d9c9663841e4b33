"""Private numba kernels for validation metrics (NumPy in, NumPy out).

Two kernels, both run per series (``xarray.apply_ufunc``, or per block of dask chunks):

* ``_pair_moments``: count, means, centred sums and range of the valid pairs,
  from which every pairwise metric is a closed form, so all metrics of all
  stations or cells cost one pass over the data (instead of one masked
  xarray expression per metric); for dask inputs it runs on each time chunk
  and ``casm_cloud.validation.metrics`` merges the chunks' moments;
* ``_boxcar_anomaly``: a centred mean over a *time* window (not a count of
  samples) on an irregular time axis, which is not a NumPy one-liner.
"""

from __future__ import annotations

import numpy as np
from numba import guvectorize

__all__: list[str] = []  # private kernels; see casm_cloud.validation.metrics


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


#: order of the moments returned by ``_pair_moments``
MOMENTS = ("n", "mean_x", "mean_y", "sxx", "syy", "sxy", "min", "max")


@guvectorize(
    ["void(float64[:], float64[:], float64[:], float64[:])"],
    "(n),(n),(m)->(m)",
    nopython=True,
    cache=True,
)
def _pair_moments(x, y, _like, out):  # pragma: no cover - numba
    """Moments of the pairs where both x and y are finite, in two passes.

    ``out`` (length 8, shaped by the dummy ``_like``): count, means, the
    centred sums Σ(x−x̄)², Σ(y−ȳ)², Σ(x−x̄)(y−ȳ) (second pass, so no
    cancellation), and the joint min and max of both series.
    """
    n = 0
    sx = 0.0
    sy = 0.0
    lo = np.inf
    hi = -np.inf
    for i in range(x.shape[0]):
        if np.isfinite(x[i]) and np.isfinite(y[i]):
            n += 1
            sx += x[i]
            sy += y[i]
            lo = min(lo, x[i], y[i])
            hi = max(hi, x[i], y[i])
    out[:] = np.nan
    out[0] = n
    if n == 0:
        return
    mx = sx / n
    my = sy / n
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    for i in range(x.shape[0]):
        if np.isfinite(x[i]) and np.isfinite(y[i]):
            dx = x[i] - mx
            dy = y[i] - my
            sxx += dx * dx
            syy += dy * dy
            sxy += dx * dy
    out[1] = mx
    out[2] = my
    out[3] = sxx
    out[4] = syy
    out[5] = sxy
    out[6] = lo
    out[7] = hi
