"""Short-term anomalies (value minus a centred 35-day window's mean) and their R."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from casm_cloud.validation.exceptions import ValidationError
from casm_cloud.validation.moments import _check, _paired, _r, _require

__all__ = ["anomaly", "anomaly_r"]


# A dask task carries this module-level function (pickled by reference), never the numba
# gufunc itself (see casm_cloud.validation.moments).
def _call_boxcar_anomaly(values, t_days, half_window, min_obs):
    from casm_cloud.kernels.metrics import _boxcar_anomaly

    return _boxcar_anomaly(values, t_days, half_window, min_obs)


def anomaly(da: xr.DataArray, dim: Hashable = "time", *, window_days: float = 35.0,
            min_obs: int = 10) -> xr.DataArray:
    r"""Short-term anomaly: value minus the mean of a centred time window.

    .. math:: a_i = v_i - \overline{\{v_j : |t_j - t_i| \le w/2\}}

    with ``w = window_days`` (35 days = ±17.5 days, the "±17-day" window of
    the CASM paper) and at least ``min_obs`` valid values in the window,
    else NaN.  Same rule as ``pytesmo.time_series.filtering.moving_average``
    (``window_size=35, min_obs=10``).

    Parameters
    ----------
    da : xarray.DataArray
        Values with a datetime ``dim`` (sorted ascending).
    dim : hashable
        The time dimension.
    window_days : float
        Full window width in days.
    min_obs : int
        Fewest valid values in the window for a valid anomaly.

    Returns
    -------
    xarray.DataArray
        Same shape as ``da`` (float64).

    Raises
    ------
    ValidationError
        If ``dim`` is missing, not datetime or not sorted.
    """
    if dim not in da.dims:
        raise ValidationError(f"anomaly: no dimension {dim!r} (dims: {da.dims})")
    t = da[dim].values
    if not np.issubdtype(t.dtype, np.datetime64):
        raise ValidationError(f"anomaly: coordinate {dim!r} must be datetime64, got {t.dtype}")
    t_days = (t - t[0]) / np.timedelta64(1, "D") if t.size else t.astype(np.float64)
    if t.size > 1 and np.any(np.diff(t_days) < 0):
        raise ValidationError(f"anomaly: coordinate {dim!r} must be sorted ascending")
    t_da = xr.DataArray(np.asarray(t_days, dtype=np.float64), dims=[dim])
    return xr.apply_ufunc(
        _call_boxcar_anomaly, da.astype(np.float64), t_da, window_days / 2.0, int(min_obs),
        input_core_dims=[[dim], [dim], [], []], output_core_dims=[[dim]],
        dask="parallelized", output_dtypes=[np.float64],
        dask_gufunc_kwargs={"allow_rechunk": True},
    ).transpose(*da.dims)


def anomaly_r(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time", *,
              window_days: float = 35.0, min_obs: int = 10,
              pair_first: bool = False) -> xr.DataArray:
    r"""Pearson R of the short-term anomalies of two series.

    Each series is turned into anomalies with :func:`anomaly` (value − mean
    of a centred 35-day window, ±17.5 days, with ≥ 10 values) **on its own**,
    from every valid value it has along its own ``dim`` (before the two are
    aligned: values of one series outside the other's span still enter the
    windows near the span's ends), and R is then taken over the times where
    both anomalies exist.  This is the rule of the SoMo.ml and CASM papers and
    of pytesmo's validation framework with the ``AnomalyAdapter``
    (:mod:`pytesmo.validation_framework.adapters`: each reader's whole series
    becomes anomalies, then the series are matched in time).

    With ``pair_first=True`` both series are first reduced to their common
    valid times and the anomalies are taken of the paired series (an older
    rule: a window then holds only the paired values).  Anomaly as
    ``pytesmo.time_series.filtering.moving_average``, R as
    ``pytesmo.metrics.pearson_r``.

    On the ISMN–ASCAT pair of pytesmo's tests (G-flagged hourly ISMN and
    ASCAT, each averaged per day, 188 common days; ``tests/test_validation_real.py``):
    0.300 with this rule (ASCAT's anomalies from its 2007–2017 record),
    0.313 when both series are first cut to their common span
    (2017-01-01 .. 2017-12-29) and 0.307 with ``pair_first=True``.

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, each with a datetime ``dim`` sorted ascending
        (their time axes may differ).
    dim : hashable
        Time dimension.
    window_days : float
        Full window width in days (35 = ±17.5 days).
    min_obs : int
        Fewest valid values of a series in the window.
    pair_first : bool
        Pair the series before taking anomalies (default: each on its own).

    Returns
    -------
    xarray.DataArray

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input, is not datetime or not sorted.
    """
    if pair_first:
        x, y = _paired(x, y, dim)
    else:
        _require(x, y, dim)
    ax = anomaly(x, dim, window_days=window_days, min_obs=min_obs)
    ay = anomaly(y, dim, window_days=window_days, min_obs=min_obs)
    ax, ay = _check(ax, ay, dim)
    both = ax.notnull() & ay.notnull()
    return _r(ax.where(both), ay.where(both), dim)
