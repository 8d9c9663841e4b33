"""Seasonal cycle: fit, evaluate and remove a one-year sinusoid per pixel.

The model (``docs/science.md``, "Seasonal cycle") is, per pixel and variable,

    s(t) = A·sin(θ(t) + φ) + b  =  a·sin θ + c·cos θ + b,
    A = sqrt(a² + c²),  φ = atan2(c, a),

with a one-year period and the **phase convention** ``θ(t) = 2π·(t − Y)/(Y' − Y)``
where ``Y`` is 1 January 00:00 of ``t``'s calendar year and ``Y'`` the next
1 January: the fraction of the calendar year elapsed, so 1 January 00:00 is
``θ = 0`` in every year and the cycle repeats identically each year.  Leap
years are stretched, not shifted: their 366 days share the same ``2π``, so a
calendar date after 28 February sits at most 1/366 of a cycle (< 1 day)
earlier in a leap year than in a common year, and 31 December 24:00 is ``2π``
in both.  Times are taken as given (UTC, naive ``datetime64``).

The fit is ordinary least squares on the valid (non-NaN) values, in closed
form from nine per-pixel sums (numba kernels in
:mod:`casm_cloud.kernels.seasonal`).  Sums add, so each time chunk gives a
partial and partials are merged in a dask tree reduction: the time axis may
be one chunk or one step per chunk (ERA5 on the cloud) and is never
rechunked.  A pixel with fewer than ``min_obs`` valid values, or a singular
system (``det(G)/n³ < 1e-13`` for the 3×3 normal matrix ``G``: at most two
distinct phases up to round-off), falls back to the **exact median** of its
valid values (amplitude 0, offset the median).  The
median is the one statistic that needs every value of a pixel; it is only
ever needed for pixels with fewer than ``min_obs`` values, so each partial
carries those values (at most ``min_obs − 1`` per pixel) and nothing else —
memory does not grow with the length of the series.  The one case that
cannot be served that way, a singular system with ``min_obs`` or more values
(every value on at most two days of the year), gets the exact mean and
``method = 3``.

Parity (tests/test_seasonal.py): on seeded synthetic pixels and on the real
SMAP L3 (4 cells with data, 2015–2025) and SMOS L3 (10 land cells of 456,
2010–2022) Hawaii series the cycle equals ``scipy.optimize.curve_fit`` of the
same fixed-period sinusoid (float64) to within 3e-9 of the series range
(criterion 1e-4); fallback pixels equal ``numpy.nanmedian`` exactly.  The
paper's variant — period free in [365, 366] days on a continuous day count
from the first observation, amplitude bounded to [0, series range] — differs
from this fixed calendar-year fit on those real series by at most 0.48 % of
the series range (SMAP; 0.09–0.48 % per cell) and 0.28 % (SMOS L3; median
0.13 %); its fitted period sits on a bound (365 or 366 days) in every case,
i.e. the free period only lets the cycle drift against the calendar.

Parameters are stored (``amplitude``, ``phase``, ``offset``, ``n_obs``,
``method``, ``residual_std``) so new months are deseasonalised without a
refit; residuals are cheap to recompute inside any chunk function with
:func:`residual_values` (or :func:`cycle_values`), so writing them is optional.

This module is the one owner of the year phase, the cycle formula, the
residuals and the fallbacks: the training samples (:mod:`casm_cloud.pairs`),
inference (:mod:`casm_cloud.inference`) and the report's residual scores
(:mod:`casm_cloud.report`) all call it (``docs/architecture.md``, "Where each
concept lives").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from casm_cloud.errors import UserError
from casm_cloud.kernels import seasonal as _k

__all__ = [
    "METHODS",
    "PARAM_NAMES",
    "SeasonalError",
    "year_phase",
    "fit_seasonal_cycle",
]

#: ``method`` codes of the fit.
METHODS: dict[int, str] = {_k.EMPTY: "empty", _k.SINE: "sine", _k.MEDIAN: "median",
                           _k.MEAN: "mean"}
#: Data variables of a parameter dataset.
PARAM_NAMES: tuple[str, ...] = _k.PARAMS
_MIN_OBS_FLOOR = 4
# Binary tree: each merge frees its two inputs at once, so the partials held at
# a time grow with the depth of the tree (log2 of the time chunks), not its width.
_SPLIT_EVERY = 2


class SeasonalError(UserError, ValueError):
    """Input the seasonal fit cannot use: bad times, dims, parameters or variables."""


# --------------------------------------------------------------------------- time


def year_phase(time: Any) -> np.ndarray:
    """Phase ``θ`` in radians of each time within its calendar year.

    ``θ = 2π·(t − Y)/(Y' − Y)`` with ``Y`` the start of ``t``'s year and ``Y'``
    the start of the next (365 or 366 days later), so ``θ`` is in ``[0, 2π)``
    and a leap year's days are stretched to fill the same cycle.

    Parameters
    ----------
    time : array-like of datetime64
        Any shape.

    Returns
    -------
    numpy.ndarray of float64, same shape as ``time``.

    Raises
    ------
    SeasonalError
        If ``time`` is not datetime64.
    """
    t = np.asarray(time)
    if not np.issubdtype(t.dtype, np.datetime64):
        raise SeasonalError(f"time: expected datetime64 values, got dtype {t.dtype}")
    t = t.astype("datetime64[ns]")
    year = t.astype("datetime64[Y]")
    start = year.astype("datetime64[ns]")
    length = (year + 1).astype("datetime64[ns]") - start
    return 2.0 * np.pi * ((t - start) / length).astype(np.float64)


def _sincos(time: Any) -> tuple[np.ndarray, np.ndarray]:
    th = year_phase(time)
    return np.sin(th), np.cos(th)


# ------------------------------------------------------------ chunk functions


def _as2d(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.reshape(a.shape[0], -1))


def _partial_block(y: np.ndarray, s: np.ndarray, c: np.ndarray, *, kbuf: int,
                   parallel: bool = False) -> tuple:
    """Partial ``(sums (9, *space), idx, vals)`` of one (time, *space) chunk.

    A tuple, not an array: dask passes it untouched from the blockwise step
    through the tree reduction (``concatenate=False``), as its own ``mean``
    passes dicts.
    """
    y2 = _as2d(y)
    if y2.dtype not in (np.float32, np.float64):
        y2 = y2.astype(np.float64)
    sums = np.empty((_k.NSUMS, y2.shape[1]))
    kernel = _k.partial_sums_parallel if parallel else _k.partial_sums
    kernel(y2, np.ascontiguousarray(s, np.float64), np.ascontiguousarray(c, np.float64), sums)
    idx, vals = _k.gather(y2, sums, kbuf)
    return sums.reshape((_k.NSUMS,) + y.shape[1:]), idx, vals


def _flatten(parts) -> list[tuple]:
    if isinstance(parts, tuple):
        return [parts]
    out: list[tuple] = []
    for p in parts:
        out.extend(_flatten(p))
    return out


def _identity(x, axis=None, keepdims=None, computing_meta=False):
    return x


def _combine(parts, axis=None, keepdims=None, *, kbuf: int) -> tuple:
    parts = _flatten(parts)
    sums, idx, vals = parts[0]
    for s2, i2, v2 in parts[1:]:
        idx, vals = _k.merge(_as2d(sums)[0], idx, vals, _as2d(s2)[0], i2, v2, kbuf)
        sums = sums + s2
    return sums, idx, vals


def _aggregate(parts, axis=None, keepdims=None, *, kbuf: int, min_obs: int,
               dtype: np.dtype, parallel: bool = False) -> np.ndarray:
    sums, idx, vals = _combine(parts, kbuf=kbuf)
    space = sums.shape[1:]
    solve = _k.solve_parallel if parallel else _k.solve
    out = np.empty((len(PARAM_NAMES), int(np.prod(space))))
    solve(_as2d(sums), idx, vals, min_obs, out)
    if dtype != np.float64:
        # The exact median in the input's precision, as numpy.nanmedian gives
        # it: float64 (lo + hi)/2 rounded once equals float32 (lo + hi)/2.
        med = out[4] == _k.MEDIAN
        out[2, med] = out[2, med].astype(dtype)
    return out.reshape((out.shape[0],) + space)


# ---------------------------------------------------------------- validation


def _check(da: xr.DataArray, dim: str, what: str = "da") -> np.ndarray:
    if not isinstance(da, xr.DataArray):
        raise SeasonalError(f"{what}: expected an xarray.DataArray, got {type(da).__name__} "
                         "(use ds.to_dataarray('variable') to fit every variable at once)")
    name = da.name if da.name is not None else what
    if dim not in da.dims:
        raise SeasonalError(f"{name}: no dimension {dim!r} to fit over; dims are {da.dims}")
    if dim not in da.coords:
        raise SeasonalError(f"{name}: dimension {dim!r} has no coordinate; expected datetime64 times")
    t = np.asarray(da[dim].values)
    if not np.issubdtype(t.dtype, np.datetime64):
        raise SeasonalError(f"{name}: coordinate {dim!r} must be datetime64, got dtype {t.dtype}")
    if np.isnat(t).any():
        raise SeasonalError(f"{name}: coordinate {dim!r} contains NaT")
    if t.size > 1 and not (np.diff(t) > np.timedelta64(0, "ns")).all():
        bad = int(np.argmin(np.diff(t) > np.timedelta64(0, "ns")))
        raise SeasonalError(f"{name}: coordinate {dim!r} is not strictly increasing "
                         f"(at index {bad + 1}: {t[bad]} then {t[bad + 1]})")
    if not (np.issubdtype(da.dtype, np.floating) or np.issubdtype(da.dtype, np.integer)):
        raise SeasonalError(f"{name}: expected numeric values, got dtype {da.dtype}")
    return t


def _check_min_obs(min_obs: int) -> int:
    if int(min_obs) != min_obs or min_obs < _MIN_OBS_FLOOR:
        raise SeasonalError(f"min_obs: expected an integer >= {_MIN_OBS_FLOOR} (three parameters "
                         f"and at least one degree of freedom), got {min_obs!r}")
    return int(min_obs)


# ----------------------------------------------------------------------- fit


def fit_seasonal_cycle(da: xr.DataArray, dim: str = "time", min_obs: int = 40) -> xr.Dataset:
    """Fit the one-year sinusoid ``a·sin θ + c·cos θ + b`` per pixel.

    Lazy on dask input (nothing is computed here).  ``θ`` is the position
    within the calendar year (see the module docstring and
    :func:`year_phase`; leap years are stretched over the same ``2π``).
    ``dim`` may be split over any number of chunks: each chunk gives nine
    partial sums (plus the values of sparse pixels) and a tree reduction
    merges them, so no pixel's series is ever gathered in one chunk.

    Parameters
    ----------
    da : xarray.DataArray
        Values with a datetime64 ``dim`` coordinate, strictly increasing;
        NaN marks gaps.  Every other dimension is a "pixel" dimension, so
        ``ds.to_dataarray("variable")`` fits every variable at once.
    dim : str
        The time dimension.
    min_obs : int
        Fewest valid values for a sine fit (>= 4); below it, the median.

    Returns
    -------
    xarray.Dataset
        Over every non-``dim`` dimension of ``da`` (and its coordinates):
        ``amplitude`` (A >= 0, units of ``da``), ``phase`` (φ in radians,
        ``atan2(c, a)``), ``offset`` (b; the median or mean for the
        fallbacks), ``n_obs`` (valid values, int32), ``method`` (int8:
        0 empty — all NaN, parameters NaN; 1 sine; 2 median — fewer than
        ``min_obs`` values or a singular system; 3 mean — a singular system
        with ``min_obs`` or more values), ``residual_std`` (population
        standard deviation of ``da − cycle``, ddof 0).  float64 except the
        counts.  Attributes record ``min_obs`` and the phase convention.
        ``residual_std`` of a sine fit comes from the same pass over the data
        (``SSR = Σy² − βᵀXᵀy`` with float64 sums): its relative error is about
        1e-16·Σy²/SSR, e.g. 1e-11 for brightness temperatures near 250 K
        with 1 K residuals.  The median fallback's comes from the exact
        values.

    Raises
    ------
    SeasonalError
        If ``dim`` is missing, its coordinate is not datetime64 or not
        strictly increasing, the values are not numeric, or ``min_obs < 4``.
    """
    t = _check(da, dim)
    min_obs = _check_min_obs(min_obs)
    kbuf = min_obs - 1
    da = da.transpose(dim, ...)
    rest = da.dims[1:]
    dtype = da.dtype if da.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    s, c = _sincos(t)
    agg_kw = dict(kbuf=kbuf, min_obs=min_obs, dtype=dtype)

    if _is_dask(da):
        from functools import partial as bind

        params = _reduce_partials(da.data, s, c, kbuf, bind(_aggregate, **agg_kw),
                                  len(PARAM_NAMES), "seasonal-fit")
    else:
        y = np.asarray(da.values)
        params = _aggregate([_partial_block(y, s, c, kbuf=kbuf, parallel=True)], parallel=True,
                            **agg_kw)

    return _params_dataset(params, da, dim, rest, min_obs)


def _partial_block_sink(y: np.ndarray, s: np.ndarray, c: np.ndarray, *where: np.ndarray,
                        kbuf: int, sink) -> tuple:
    """:func:`_partial_block` of a chunk that ``sink(y, location)`` also stores.

    ``where`` are the chunk's indices along each axis, so ``location`` is the
    chunk's ``(start, stop)`` per axis: one task holds the chunk, writes it
    and adds it to the sums.
    """
    sink(y, tuple((int(w[0]), int(w[-1]) + 1) for w in where))
    return _partial_block(y, s, c, kbuf=kbuf)


def _reduce_partials(data, s: np.ndarray, c: np.ndarray, kbuf: int, aggregate, size: int,
                     name: str, sink=None):
    """The tree reduction over time of the partials of a (time, *space) dask array.

    ``aggregate`` finishes each spatial block's merged partial: the fit
    (:func:`_aggregate`) or, for stored sums, the partial itself
    (:func:`_combine`); ``size`` is the declared length of its first axis.
    ``sink``, if given, is called with each chunk and its location by the
    task that computes its partial (:func:`_partial_block_sink`).
    """
    from functools import partial as bind

    import dask.array as dsa

    tchunks = (data.chunks[0],)
    s_d = dsa.from_array(s, chunks=tchunks)
    c_d = dsa.from_array(c, chunks=tchunks)
    ind = tuple(range(data.ndim))
    # Each block is a (sums, idx, vals) tuple that only the reduction below
    # reads; the declared shape is that of its sums, (9, *space).
    common = dict(adjust_chunks={0: lambda n: _k.NSUMS}, dtype=np.float64,
                  meta=np.empty((0,) * data.ndim, np.float64))
    if sink is None:
        partial = dsa.blockwise(_partial_block, ind, data, ind, s_d, (0,), c_d, (0,), kbuf=kbuf,
                                token="seasonal-partial", **common)
    else:
        where = [x for d, (n, ch) in enumerate(zip(data.shape, data.chunks, strict=True))
                 for x in (dsa.from_array(np.arange(n), chunks=(ch,)), (d,))]
        partial = dsa.blockwise(_partial_block_sink, ind, data, ind, s_d, (0,), c_d, (0,),
                                *where, kbuf=kbuf, sink=sink, token="seasonal-partial-store",
                                **common)
    return dsa.reduction(
        partial, chunk=_identity, combine=bind(_combine, kbuf=kbuf),
        aggregate=aggregate, axis=0, keepdims=True, concatenate=False,
        output_size=size, dtype=np.float64, split_every=_SPLIT_EVERY,
        name=name, meta=np.empty((0,) * data.ndim, np.float64),
    )


def _is_dask(obj: xr.DataArray) -> bool:
    return obj.chunks is not None


def _params_dataset(params, da: xr.DataArray, dim: str, rest: tuple, min_obs: int) -> xr.Dataset:
    units = da.attrs.get("units")
    vname = da.name if da.name is not None else "values"
    coords = {k: v for k, v in da.coords.items() if dim not in v.dims}

    def var(i, dtype, attrs):
        a = params[i]
        if dtype != np.float64:
            a = a.astype(dtype)
        return xr.DataArray(a, dims=rest, attrs=attrs)

    u = {"units": units} if units else {}
    ds = xr.Dataset(
        {
            "amplitude": var(0, np.float64, {"long_name": f"seasonal amplitude of {vname}", **u}),
            "phase": var(1, np.float64, {
                "long_name": "seasonal phase phi of A*sin(theta + phi) + b", "units": "radian",
                "comment": "theta = 2*pi*(fraction of the calendar year elapsed)"}),
            "offset": var(2, np.float64, {"long_name": f"seasonal mean level of {vname}", **u}),
            "n_obs": var(3, np.int32, {"long_name": "number of valid values fitted"}),
            "method": var(4, np.int8, {
                "long_name": "seasonal fit method",
                "flag_values": np.array(sorted(METHODS), np.int8),
                "flag_meanings": " ".join(METHODS[k] for k in sorted(METHODS))}),
            "residual_std": var(5, np.float64, {
                "long_name": f"standard deviation of {vname} minus its seasonal cycle", **u}),
        },
        coords=coords,
    )
    ds.attrs.update({
        "seasonal_model": "A*sin(theta + phase) + offset, one-year period",
        "seasonal_phase_convention": (
            "theta = 2*pi*(t - Jan 1 of t's year)/(length of that year: 365 or 366 days)"),
        "seasonal_min_obs": min_obs,
        "seasonal_fitted_variable": str(vname),
    })
    return ds
