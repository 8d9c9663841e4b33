"""The seasonal cycle evaluated, and removed: NumPy helpers and lazy (dask) versions."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from casm_cloud.kernels import seasonal as _k
from casm_cloud.seasonal.fit import (
    SeasonalError,
    _as2d,
    _check,
    _is_dask,
    _sincos,
    fit_seasonal_cycle,
)

__all__ = ["cycle_values", "residual_values", "seasonal_cycle", "deseasonalize"]


# ---------------------------------------------------------------- NumPy helper


def cycle_values(amplitude: Any, phase: Any, offset: Any, time: Any) -> np.ndarray:
    """The seasonal cycle ``A·sin(θ(t) + φ) + b`` as a NumPy array.

    For consumers computing residuals inside their own chunk functions.  One
    formula serves every method: the median/mean fallbacks have amplitude 0
    and offset the median/mean; empty pixels are NaN.

    Parameters
    ----------
    amplitude, phase, offset : array-like
        Parameters (as stored by :func:`fit_seasonal_cycle`); they broadcast
        against each other to ``param_shape``.
    time : 1-D array-like of datetime64
        Times at which to evaluate; see :func:`year_phase` for ``θ``.

    Returns
    -------
    numpy.ndarray, float64, shape ``(len(time), *param_shape)``.

    Raises
    ------
    SeasonalError
        If ``time`` is not a 1-D datetime64 array.
    """
    t = np.asarray(time)
    if t.ndim != 1:
        raise SeasonalError(f"time: expected a 1-D datetime64 array, got shape {t.shape}")
    s, c = _sincos(t)
    amp, ph, off = np.broadcast_arrays(np.asarray(amplitude, np.float64),
                                       np.asarray(phase, np.float64),
                                       np.asarray(offset, np.float64))
    return _cycle_block(s, c, amp, ph, off)


def residual_values(values: Any, amplitude: Any, phase: Any, offset: Any,
                    time: Any) -> np.ndarray:
    """Residuals ``values − cycle`` as a NumPy array (the residuals the networks learn).

    For consumers inside their own chunk functions: bit for bit the values
    minus :func:`cycle_values`, computed in ``values``' precision when it is
    float32 or float64 (float64 otherwise).

    Parameters
    ----------
    values : array-like, shape ``(len(time), *param_shape)``
    amplitude, phase, offset : array-like
        Parameters over ``param_shape`` (they broadcast against each other).
    time : 1-D array-like of datetime64

    Returns
    -------
    numpy.ndarray, shape and dtype of ``values`` (float64 for other dtypes).

    Raises
    ------
    SeasonalError
        If ``time`` is not 1-D datetime64 or ``values`` do not have its length first.
    """
    t = np.asarray(time)
    if t.ndim != 1:
        raise SeasonalError(f"time: expected a 1-D datetime64 array, got shape {t.shape}")
    y = np.asarray(values)
    if y.ndim == 0 or y.shape[0] != t.size:
        raise SeasonalError(f"values: expected {t.size} time steps first, got shape {y.shape}")
    s, c = _sincos(t)
    amp, ph, off = np.broadcast_arrays(np.asarray(amplitude, np.float64),
                                       np.asarray(phase, np.float64),
                                       np.asarray(offset, np.float64))
    if amp.shape != y.shape[1:]:
        amp, ph, off = (np.broadcast_to(a, y.shape[1:]) for a in (amp, ph, off))
    return _residual_block(y, s, c, amp, ph, off)


# ------------------------------------------------------- cycle and residuals


def _param_arrays(params: xr.Dataset, dims: tuple, what: str) -> tuple[Any, Any, Any]:
    """Amplitude, phase, offset (NumPy or dask arrays), their dims in the order ``dims``.

    Three arrays rather than one stack: a stack would enter the chunk
    functions through a contracted index, and dask does not fuse the reading
    of the data into a blockwise task that has one: every chunk would be read
    by a task of its own and held in memory until its residual task ran.
    """
    missing = [n for n in ("amplitude", "phase", "offset") if n not in params]
    if missing:
        raise SeasonalError(f"{what}: parameters lack {missing}; expected the output of "
                         "fit_seasonal_cycle")
    p = params[["amplitude", "phase", "offset"]]
    if set(p["amplitude"].dims) != set(dims):
        raise SeasonalError(f"{what}: parameter dims {p['amplitude'].dims} do not match the "
                         f"data's non-time dims {dims}")
    return tuple(p[n].transpose(*dims).data for n in ("amplitude", "phase", "offset"))


def seasonal_cycle(params: xr.Dataset, time: Any, *, dim: str = "time",
                   time_chunks: int | None = None) -> xr.DataArray:
    """The fitted cycle at any times (new months too: no refit).

    Parameters
    ----------
    params : xarray.Dataset
        Output of :func:`fit_seasonal_cycle` (or the stored parameters).
    time : array-like of datetime64 or xarray.DataArray
        1-D times; ``θ`` per :func:`year_phase`.
    dim : str
        Name of the new time dimension.
    time_chunks : int, optional
        Time chunk length when ``params`` are dask-backed (default: one chunk).

    Returns
    -------
    xarray.DataArray (dim, *param dims), float64; lazy if ``params`` is.

    Raises
    ------
    SeasonalError
        If the parameters are incomplete or ``time`` is not 1-D datetime64.
    """
    t = np.asarray(time.values if isinstance(time, xr.DataArray) else time)
    if t.ndim != 1 or not np.issubdtype(t.dtype, np.datetime64):
        raise SeasonalError(f"time: expected 1-D datetime64 values, got {t.dtype} shape {t.shape}")
    dims = params["amplitude"].dims
    pars = _param_arrays(params, dims, "params")
    s, c = _sincos(t)
    if _is_dask(params["amplitude"]):
        import dask.array as dsa

        tch = (time_chunks or max(t.size, 1),)
        s_d = dsa.from_array(s, chunks=tch)
        c_d = dsa.from_array(c, chunks=tch)
        pind = tuple(range(1, len(dims) + 1))
        data = dsa.blockwise(_cycle_block, (0, *pind), s_d, (0,), c_d, (0,),
                             *(x for a in pars for x in (a, pind)),
                             dtype=np.float64, meta=np.empty((0,) * (len(dims) + 1)),
                             token="seasonal-cycle")
    else:
        data = _cycle_block(s, c, *(np.asarray(a) for a in pars))
    coords = {k: v for k, v in params.coords.items() if set(v.dims) <= set(dims)}
    coords[dim] = t.astype("datetime64[ns]")
    units = params["offset"].attrs.get("units")
    return xr.DataArray(data, dims=(dim, *dims), coords=coords, name="seasonal_cycle",
                        attrs={"long_name": "seasonal cycle", **({"units": units} if units else {})})


def _flat(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float64).reshape(-1)


def _cycle_block(s: np.ndarray, c: np.ndarray, amplitude: np.ndarray, phase: np.ndarray,
                 offset: np.ndarray) -> np.ndarray:
    out = np.empty((s.size, amplitude.size))
    _k.cycle(s, c, _flat(amplitude), _flat(phase), _flat(offset), out)
    return out.reshape((s.size,) + amplitude.shape)


def _residual_block(y: np.ndarray, s: np.ndarray, c: np.ndarray, amplitude: np.ndarray,
                    phase: np.ndarray, offset: np.ndarray) -> np.ndarray:
    y2 = _as2d(y)
    if y2.dtype not in (np.float32, np.float64):
        y2 = y2.astype(np.float64)
    out = np.empty_like(y2)
    _k.residuals(y2, s, c, _flat(amplitude), _flat(phase), _flat(offset), out)
    return out.reshape(y.shape)


def deseasonalize(da: xr.DataArray, params: xr.Dataset | None = None, *, dim: str = "time",
                  min_obs: int = 40) -> tuple[xr.DataArray, xr.Dataset]:
    """Residuals ``da − cycle`` (and the parameters used).

    Lazy on dask input; the residual keeps ``da``'s dims, chunks and dtype
    (float64 for integer input).

    Parameters
    ----------
    da : xarray.DataArray
        As for :func:`fit_seasonal_cycle`.
    params : xarray.Dataset, optional
        Stored parameters over ``da``'s non-``dim`` dims; fitted on ``da``
        when omitted.
    dim : str
        The time dimension.
    min_obs : int
        Used when fitting.

    Returns
    -------
    (residual, params) : (xarray.DataArray, xarray.Dataset)

    Raises
    ------
    SeasonalError
        As :func:`fit_seasonal_cycle`; or parameters whose dims differ from
        ``da``'s non-time dims.
    """
    t = _check(da, dim)
    if params is None:
        params = fit_seasonal_cycle(da, dim=dim, min_obs=min_obs)
    order = da.dims
    y = da.transpose(dim, ...)
    rest = y.dims[1:]
    pars = _param_arrays(params, rest, "params")
    s, c = _sincos(t)
    if _is_dask(y):
        import dask.array as dsa

        data = y.data
        pars = [a.rechunk(data.chunks[1:]) if hasattr(a, "dask")
                else dsa.from_array(np.asarray(a), chunks=data.chunks[1:]) for a in pars]
        tch = (data.chunks[0],)
        ind = tuple(range(data.ndim))
        out = dsa.blockwise(_residual_block, ind, data, ind, dsa.from_array(s, chunks=tch), (0,),
                            dsa.from_array(c, chunks=tch), (0,),
                            *(x for a in pars for x in (a, ind[1:])),
                            dtype=_out_dtype(data.dtype),
                            meta=np.empty((0,) * data.ndim, _out_dtype(data.dtype)),
                            token="seasonal-residual")
    else:
        if _is_dask(params["amplitude"]):
            import dask

            pars = dask.compute(*pars)  # one pass over a lazy fit, not three
        out = _residual_block(np.asarray(y.values), s, c, *(np.asarray(a) for a in pars))
    attrs = {k: v for k, v in da.attrs.items() if k in ("units",)}
    attrs["long_name"] = f"{da.name or 'value'} minus its seasonal cycle"
    res = xr.DataArray(out, dims=y.dims, coords=y.coords, name=da.name, attrs=attrs)
    return res.transpose(*order), params


def _out_dtype(dtype) -> np.dtype:
    return np.dtype(dtype) if np.dtype(dtype) in (np.float32, np.float64) else np.dtype(np.float64)
