"""The seasonal stage's datasets: parameters and residuals of every variable, and their store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from casm_cloud.seasonal.cycle import deseasonalize
from casm_cloud.seasonal.fit import SeasonalError, fit_seasonal_cycle

__all__ = ["seasonal_params", "seasonal_residuals", "write_seasonal"]


# --------------------------------------------------------------------- stage


def _select(ds: xr.Dataset, variables: Sequence[str] | None) -> list[str]:
    names = list(variables) if variables else [n for n in ds.data_vars if "time" in ds[n].dims]
    missing = [n for n in names if n not in ds.data_vars]
    if missing:
        raise SeasonalError(f"variables {missing} are not in the input; it has {list(ds.data_vars)}")
    if not names:
        raise SeasonalError(f"the input has no time-dependent variable to fit; it has "
                         f"{list(ds.data_vars)}")
    return names


def seasonal_params(ds: xr.Dataset, variables: Sequence[str] | None = None, *,
                    min_obs: int = 40, dim: str = "time") -> xr.Dataset:
    """The stage: lazy parameters of every (selected) variable of ``ds``.

    Parameters
    ----------
    ds : xarray.Dataset
        Canonical dataset with a ``time`` dimension.
    variables : sequence of str, optional
        Variables to fit (default: all with ``dim``).
    min_obs, dim
        As for :func:`fit_seasonal_cycle`.

    Returns
    -------
    xarray.Dataset
        With a ``variable`` dimension (coordinate: the names), also for one
        variable, so stores of one and of several variables read alike.

    Raises
    ------
    SeasonalError
        For unknown variables or as :func:`fit_seasonal_cycle`.
    """
    names = _select(ds, variables)
    da = ds[names].to_dataarray("variable")
    params = fit_seasonal_cycle(da, dim=dim, min_obs=min_obs)
    params.attrs["seasonal_fitted_variable"] = ",".join(names)
    return params


def seasonal_residuals(ds: xr.Dataset, params: xr.Dataset, variables: Sequence[str] | None = None,
                       *, dim: str = "time") -> xr.Dataset:
    """Lazy residuals of each variable from stored parameters.

    Parameters
    ----------
    ds : xarray.Dataset
        The input the parameters were fitted on (or new months of it).
    params : xarray.Dataset
        Output of :func:`seasonal_params` (with a ``variable`` dimension or a
        scalar ``variable`` coordinate).
    variables : sequence of str, optional
        Default: the variables named by ``params``.

    Returns
    -------
    xarray.Dataset of residuals, same names, dims and chunks as ``ds``.

    Raises
    ------
    SeasonalError
        If a variable has no parameters.
    """
    have = [str(v) for v in np.atleast_1d(params["variable"].values)] if "variable" in \
        params.coords else []
    names = _select(ds, variables or have or None)
    out = {}
    for n in names:
        if n not in have:
            raise SeasonalError(f"{n}: no seasonal parameters (have {have})")
        p = params.sel(variable=n) if "variable" in params.dims else params
        p = p.drop_vars("variable", errors="ignore")
        out[n], _ = deseasonalize(ds[n], p, dim=dim)
    res = xr.Dataset(out)
    res.attrs = dict(ds.attrs)
    return res


def write_seasonal(params: xr.Dataset, url: str, *, data: xr.Dataset | None = None,
                   residuals_url: str | None = None,
                   storage_options: Mapping | None = None,
                   config_hash: str | None = None) -> xr.Dataset:
    """Compute and write the parameters (and optionally residuals) as Zarr.

    Parameters go to one store at ``url`` (small: computed in one go, then
    written template-first through :mod:`casm_cloud.storage`).  With
    ``residuals_url``, the residuals of ``data`` from the just computed
    parameters stream chunk by chunk to that store, in the chunks of
    ``data``, and are marked complete first; the parameters' completion
    attribute is set last of all, so a killed run never leaves a store that
    looks finished.

    Parameters
    ----------
    params : xarray.Dataset
        From :func:`seasonal_params` (lazy).
    url : str
        Parameter store (local path or fsspec URL).
    data : xarray.Dataset, optional
        The fitted input; needed with ``residuals_url``.
    residuals_url : str, optional
        Where to write the residuals (optional: consumers recompute them on
        the fly with :func:`cycle_values`).
    storage_options : mapping, optional
        fsspec options for both stores.
    config_hash : str, optional
        Recorded in the stores' attributes.

    Returns
    -------
    xarray.Dataset: the computed parameters.

    Raises
    ------
    SeasonalError
        If ``residuals_url`` is given without ``data``.
    """
    from casm_cloud import storage

    if residuals_url is not None and data is None:
        raise SeasonalError("residuals_url: the residuals need the fitted input (data=...)")
    computed = params.compute()
    if "variable" in computed.coords and computed["variable"].dtype.kind == "U":
        # Variable-length strings: the Zarr 3 string type with a specification.
        computed = computed.assign_coords(variable=computed["variable"].astype(object))
    storage.write_template(computed.chunk(), url, storage_options, config_hash=config_hash)
    storage.write_region(computed, url, storage_options,
                         region={d: slice(None) for d in computed.dims})
    if residuals_url is not None:
        residuals = seasonal_residuals(data, computed)
        storage.write_template(residuals, residuals_url, storage_options,
                               config_hash=config_hash, encoding=_encoding_like(residuals))
        storage.write_region(residuals, residuals_url, storage_options,
                             region={d: slice(None) for d in residuals.dims})
        storage.mark_complete(residuals_url, storage_options, config_hash=config_hash)
    storage.mark_complete(url, storage_options, config_hash=config_hash)
    return computed


def _encoding_like(ds: xr.Dataset) -> dict:
    """zstd (storage default) plus one Zarr chunk per dask chunk."""
    from casm_cloud import storage

    enc = storage.zarr_encoding(ds)
    for n in ds.data_vars:
        if ds[n].chunks:
            enc[n]["chunks"] = tuple(c[0] for c in ds[n].chunks)
    return enc
