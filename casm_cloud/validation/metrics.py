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

The moments live in :mod:`casm_cloud.validation.moments`, the short-term
anomalies and their R in :mod:`casm_cloud.validation.anomaly`; their public
names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from casm_cloud.validation.anomaly import anomaly, anomaly_r
from casm_cloud.validation.moments import _check, _from_moments, pair_moments

__all__ = ["pearson_r", "rmse", "ubrmse", "bias", "nrmse", "nrmsd", "rel_bias", "anomaly_r", "r2",
           "anomaly", "n_pairs", "pair_moments", "pair_metrics", "METRICS"]


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
