"""Pair moments: count, means, centred sums and range of the valid pairs, in one pass.

Every pairwise metric of :mod:`casm_cloud.validation.metrics` is a closed form
of these moments (:func:`_from_moments`).  In memory they take one pass of a
numba kernel (:mod:`casm_cloud.kernels.metrics`) per series; dask-backed series
are reduced chunk by chunk along time, each chunk's moments merged with Chan et
al.'s pairwise update, so memory does not grow with the record's length.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import xarray as xr

from casm_cloud.validation.exceptions import ValidationError

__all__ = ["pair_moments"]


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


def _r(x: xr.DataArray, y: xr.DataArray, dim: Hashable) -> xr.DataArray:
    """Pearson R of the valid pairs (the closed form of the moments)."""
    return _from_moments(pair_moments(x, y, dim))["R"]
