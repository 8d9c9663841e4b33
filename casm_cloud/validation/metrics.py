"""Pairwise validation metrics, vectorised over stations and grid cells.

Every metric has one signature, ``f(x, y, dim="time") -> xarray.DataArray``
(the pytesmo convention ``metric(x, y)``, labelled): ``x`` is the product
(estimate), ``y`` the reference (station, target).  Only pairs where both are
valid count; the result keeps every other dimension, so one call scores all
stations (or all grid cells) at once, lazily when the inputs are dask-backed.

The definitions are pytesmo's (:mod:`pytesmo.metrics`, version 0.18), which
``tests/test_validation_metrics.py`` checks to 1e-9 on random pairs: pytesmo
works on one station's 1-D arrays at a time, these on whole labelled arrays.
All pairwise metrics are closed forms of one set of pair moments (count,
means, centred sums, range) computed by a numba kernel in one pass, in
float64 whatever the input dtype; :func:`pair_metrics` returns them all at
once.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from casm_cloud.validation.exceptions import ValidationError

__all__ = ["pearson_r", "rmse", "ubrmse", "bias", "nrmse", "nrmsd", "rel_bias", "anomaly_r", "r2",
           "anomaly", "n_pairs", "pair_moments", "pair_metrics", "METRICS"]


def _require(x: xr.DataArray, y: xr.DataArray, dim: Hashable) -> None:
    """Both inputs are DataArrays with ``dim``."""
    for name, da in (("x", x), ("y", y)):
        if not isinstance(da, xr.DataArray):
            raise TypeError(f"{name} must be an xarray.DataArray, got {type(da).__name__}")
        if dim not in da.dims:
            raise ValidationError(f"{name} has no dimension {dim!r} (dims: {da.dims})")


def _check(x: xr.DataArray, y: xr.DataArray, dim: Hashable) -> tuple[xr.DataArray, xr.DataArray]:
    """Both inputs as float64 DataArrays with ``dim``, aligned (inner join)."""
    _require(x, y, dim)
    return xr.align(x.astype(np.float64), y.astype(np.float64), join="inner")


def _paired(x: xr.DataArray, y: xr.DataArray, dim: Hashable) -> tuple[xr.DataArray, xr.DataArray]:
    """As :func:`_check`, with NaN wherever either one is NaN."""
    x, y = _check(x, y, dim)
    both = x.notnull() & y.notnull()
    return x.where(both), y.where(both)


# Dask tasks carry these module-level functions (pickled by reference), never the
# numba gufuncs themselves: a GUFunc pickled into another process (a dask worker)
# segfaults when called there (numba 0.68); imported there, it works.
def _call_pair_moments(x, y, like):
    from casm_cloud.kernels.metrics import _pair_moments

    return _pair_moments(x, y, like)


def _call_boxcar_anomaly(values, t_days, half_window, min_obs):
    from casm_cloud.kernels.metrics import _boxcar_anomaly

    return _boxcar_anomaly(values, t_days, half_window, min_obs)


def _call_block_moments(x, y):
    """The pair moments of one block, as one set per block: (..., 1, moment)."""
    from casm_cloud.kernels.metrics import MOMENTS

    return _call_pair_moments(x, y, np.zeros(len(MOMENTS)))[..., None, :]


def _merge_moments(m: np.ndarray, axis, keepdims: bool = False) -> np.ndarray:
    """Moments of the union of the pair sets stacked along ``axis`` (sets on ``axis``, the
    moments on the last axis): Chan et al.'s pairwise update of means and centred sums,
    for many sets at once, so centred sums are never formed from raw sums (no cancellation).
    """
    ax = axis[0] if isinstance(axis, tuple) else axis
    ax = ax % m.ndim
    n_i = m[..., 0]
    has = n_i > 0
    n = n_i.sum(axis=ax, keepdims=True)
    safe = np.where(n > 0, n, 1.0)
    means = [np.where(has, m[..., k], 0.0) for k in (1, 2)]
    mx, my = ((n_i * v).sum(axis=ax, keepdims=True) / safe for v in means)
    dx, dy = means[0] - mx, means[1] - my

    def total(k, extra):
        return (np.where(has, m[..., k], 0.0) + n_i * extra).sum(axis=ax, keepdims=True)

    lo = np.fmin.reduce(np.where(has, m[..., 6], np.nan), axis=ax, keepdims=True)
    hi = np.fmax.reduce(np.where(has, m[..., 7], np.nan), axis=ax, keepdims=True)
    out = np.stack([n, mx, my, total(3, dx * dx), total(4, dy * dy), total(5, dx * dy), lo, hi],
                   axis=-1)
    out[..., 1:] = np.where((n > 0)[..., None], out[..., 1:], np.nan)
    return out if keepdims else np.squeeze(out, axis=ax)


def _streamed_moments(x: xr.DataArray, y: xr.DataArray, dim: Hashable) -> xr.DataArray:
    """Pair moments of dask-backed series, chunk by chunk along ``dim``: each time chunk
    gives one set of moments per series, and sets are merged in a tree
    (``dask.array.reduction``), so no task holds more than a chunk of the record."""
    import dask.array as dsa

    from casm_cloud.kernels.metrics import MOMENTS

    x, y = xr.broadcast(x, y)
    order = [*(d for d in x.dims if d != dim), dim]
    x, y = x.transpose(*order), y.transpose(*order)
    if x.chunks is None:
        x = x.chunk(dict(zip(y.dims, y.chunks, strict=True)))
    y = y.chunk(dict(zip(x.dims, x.chunks, strict=True)))
    xd, yd = x.data, y.data
    per_block = dsa.map_blocks(
        _call_block_moments, xd, yd, dtype=np.float64, new_axis=xd.ndim,
        chunks=(*xd.chunks[:-1], (1,) * len(xd.chunks[-1]), (len(MOMENTS),)))
    data = dsa.reduction(per_block, chunk=_keep, combine=_merge_moments,
                         aggregate=_merge_moments, axis=xd.ndim - 1, concatenate=True,
                         dtype=np.float64, meta=np.empty((0,) * xd.ndim, np.float64))
    coords = {k: c for k, c in x.coords.items() if dim not in c.dims}
    return xr.DataArray(data, dims=(*order[:-1], "moment"), coords=coords)


def _keep(block: np.ndarray, axis, keepdims: bool) -> np.ndarray:
    return block  # already one set per block along ``axis`` (dask.array.reduction's chunk)


def pair_moments(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.Dataset:
    """Count, means, centred sums and range of the valid pairs.

    In-memory inputs take one pass of a numba kernel per series; dask-backed
    ones are reduced chunk by chunk along ``dim`` (a tree of merged moments,
    no rechunking of the record), so memory does not grow with its length.

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.Dataset
        Variables ``n``, ``mean_x``, ``mean_y``, ``sxx`` = Σ(x−x̄)²,
        ``syy``, ``sxy`` = Σ(x−x̄)(y−ȳ), ``min``, ``max`` (of both series),
        over the remaining dimensions; lazy for dask inputs.

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    from casm_cloud.kernels.metrics import MOMENTS

    x, y = _check(x, y, dim)
    if x.chunks is None and y.chunks is None:
        like = xr.DataArray(np.zeros(len(MOMENTS)), dims="moment")
        m = xr.apply_ufunc(_call_pair_moments, x, y, like,
                           input_core_dims=[[dim], [dim], ["moment"]],
                           output_core_dims=[["moment"]])
    else:
        m = _streamed_moments(x, y, dim)
    return xr.Dataset({name: m.isel(moment=i, drop=True) for i, name in enumerate(MOMENTS)})


def _msd_parts(m: xr.Dataset) -> tuple[xr.DataArray, xr.DataArray]:
    """(variance of x − y, bias) from the moments: MSD = var + bias²."""
    var_d = ((m.sxx + m.syy - 2.0 * m.sxy) / m.n).clip(min=0.0)
    return var_d, m.mean_x - m.mean_y


def _from_moments(m: xr.Dataset) -> dict[str, xr.DataArray]:
    """Every pairwise metric as a closed form of the moments."""
    var_d, b = _msd_parts(m)
    msd = var_d + b**2
    den = np.sqrt(m.sxx * m.syy)
    return {
        "R": (m.sxy / den.where(den > 0)).clip(-1.0, 1.0),
        "RMSE": np.sqrt(msd),
        "ubRMSE": np.sqrt(var_d),
        "bias": b,
        "NRMSE": np.sqrt(msd) / m.mean_y.where(m.mean_y != 0),
        "NRMSD": np.sqrt(msd) / (m["max"] - m["min"]),
        "rel_bias": b / m.mean_y.where(m.mean_y != 0),
        "R2": 1.0 - m.n * msd / m.syy.where(m.syy > 0),
    }


def n_pairs(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    """Number of pairs where both ``x`` and ``y`` are valid.

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.DataArray
        Integer counts over the remaining dimensions.
    """
    x, y = _check(x, y, dim)
    return (x.notnull() & y.notnull()).sum(dim)


def bias(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    r"""Mean difference, product minus reference.

    .. math:: b = \frac{1}{n}\sum_i (x_i - y_i) = \bar x - \bar y

    Reference: ``pytesmo.metrics.bias`` (sign: mean(x) − mean(y)).

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.DataArray
        Over the remaining dimensions; NaN where there is no pair.

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    return _from_moments(pair_moments(x, y, dim))["bias"]


def rmse(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    r"""Root-mean-square error (deviation).

    .. math:: \mathrm{RMSE} = \sqrt{\frac{1}{n}\sum_i (x_i - y_i)^2}
              = \sqrt{\mathrm{ubRMSE}^2 + b^2}

    Reference: ``pytesmo.metrics.rmsd`` (ddof = 0).

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.DataArray

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    return _from_moments(pair_moments(x, y, dim))["RMSE"]


def ubrmse(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    r"""Unbiased RMSE: RMSE after removing each series' mean.

    .. math:: \mathrm{ubRMSE} = \sqrt{\frac{1}{n}\sum_i
              \big((x_i - \bar x) - (y_i - \bar y)\big)^2}

    Reference: ``pytesmo.metrics.ubrmsd``; Entekhabi et al. (2010),
    *Performance metrics for soil moisture retrievals and application
    requirements*, J. Hydrometeorol. 11, 832-840.

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.DataArray

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    return _from_moments(pair_moments(x, y, dim))["ubRMSE"]


def nrmse(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    r"""RMSE normalised by the mean of the reference, as SoMo.ml's paper defines it.

    .. math:: \mathrm{NRMSE} = \frac{\mathrm{RMSE}}{\bar y}

    over the pairs (O & Orth 2021, Sci. Data 8, 170: "normalised by the mean of the
    in-situ data").  pytesmo has no such metric; its range-normalised ``nrmsd`` is
    :func:`nrmsd` here.

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.DataArray
        NaN where the reference's mean is 0.

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    return _from_moments(pair_moments(x, y, dim))["NRMSE"]


def nrmsd(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    r"""RMSE normalised by the joint range of both series.

    .. math:: \mathrm{NRMSD} = \frac{\mathrm{RMSE}}
              {\max(\max x, \max y) - \min(\min x, \min y)}

    Reference: ``pytesmo.metrics.nrmsd`` (same normalisation, over the pairs).

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.DataArray

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    return _from_moments(pair_moments(x, y, dim))["NRMSD"]


def rel_bias(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    r"""Bias relative to the mean of the reference: :math:`(\bar x - \bar y) / \bar y`,
    over the pairs, as SoMo.ml's paper reports it (pytesmo has none; its ``bias`` over
    the reference's mean is the same number).

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.DataArray
        NaN where the reference's mean is 0.

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    return _from_moments(pair_moments(x, y, dim))["rel_bias"]


def pearson_r(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    r"""Pearson's linear correlation coefficient.

    .. math:: R = \frac{\sum_i (x_i - \bar x)(y_i - \bar y)}
              {\sqrt{\sum_i (x_i - \bar x)^2 \sum_i (y_i - \bar y)^2}}

    Reference: ``pytesmo.metrics.pearson_r`` (``scipy.stats.pearsonr``).

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.DataArray
        NaN with fewer than two pairs or a constant series.

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    return _from_moments(pair_moments(x, y, dim))["R"]


def _r(x: xr.DataArray, y: xr.DataArray, dim: Hashable) -> xr.DataArray:
    return _from_moments(pair_moments(x, y, dim))["R"]


def r2(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time") -> xr.DataArray:
    r"""Coefficient of determination of the product against the reference.

    .. math:: R^2 = 1 - \frac{\sum_i (x_i - y_i)^2}{\sum_i (y_i - \bar y)^2}

    The skill score form (not Pearson R squared): it is 1 for a perfect
    estimate and falls below 0 for one worse than the reference mean, so
    biases count.  It equals pytesmo's Nash-Sutcliffe efficiency
    ``pytesmo.metrics.nash_sutcliffe(o=y, p=x)`` (pytesmo has no ``r2``), and
    ``sklearn.metrics.r2_score(y, x)``.

    Parameters
    ----------
    x, y : xarray.DataArray
        Estimate (e.g. predicted residual) and reference (target), sharing
        ``dim``.
    dim : hashable
        Dimension to reduce.

    Returns
    -------
    xarray.DataArray
        NaN where the reference is constant.

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    return _from_moments(pair_moments(x, y, dim))["R2"]


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


def pair_metrics(x: xr.DataArray, y: xr.DataArray, dim: Hashable = "time", *,
                 anomalies: bool = True) -> xr.Dataset:
    """Every metric of :data:`METRICS` (and ``n``) from one pass over the pairs.

    Same values as calling each metric function, but the pair moments are
    computed once.

    Parameters
    ----------
    x, y : xarray.DataArray
        Product and reference, sharing ``dim``.
    dim : hashable
        Dimension to reduce.
    anomalies : bool
        Also compute ``anomaly_R`` (needs a datetime ``dim``).

    Returns
    -------
    xarray.Dataset
        ``n`` and one variable per metric name, over the remaining
        dimensions.

    Raises
    ------
    ValidationError
        If ``dim`` is missing from either input.
    """
    m = pair_moments(x, y, dim)
    out = xr.Dataset({"n": m.n.astype(np.int64), **_from_moments(m)})
    if anomalies:
        out["anomaly_R"] = anomaly_r(x, y, dim)
    return out[["n", *[k for k in METRICS if k in out]]]


#: name used in tables -> metric function (a registry, not an if-chain)
METRICS = {
    "R": pearson_r,
    "RMSE": rmse,
    "ubRMSE": ubrmse,
    "bias": bias,
    "NRMSE": nrmse,
    "NRMSD": nrmsd,
    "rel_bias": rel_bias,
    "anomaly_R": anomaly_r,
    "R2": r2,
}
