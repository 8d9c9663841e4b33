"""ERA5 from an ARCO-layout Zarr store: Google's ARCO-ERA5 or ECMWF's geo-chunked one,
cut to the request before any dask array is built (:mod:`casm_cloud.sources.era5`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud.sources.era5.fields import ARCO_NAMES, CANONICAL, era5_dataset, era5_window

__all__ = ["ARCO_URL", "open_era5_arco"]

#: The public ARCO-ERA5 store (anonymous access; one hour per chunk).
ARCO_URL = "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3"


def _arco_request(ds: xr.Dataset, variables, start, end, window, method) -> xr.Dataset:
    """The variables, hours and cells a request needs, cut from a store opened without dask.

    Then chunked on the store's own chunks (one hour per chunk on Google's
    ARCO-ERA5, long time series per chunk on ECMWF's geo-chunked store), so
    the cost of an open follows the request, not the store.
    """
    from casm_cloud.regrid import source_box
    from casm_cloud.sources._common import select_stored

    inverse = {v: k for k, v in ARCO_NAMES.items()}
    wanted = list(CANONICAL) if variables is None else list(variables)
    if "q" in wanted:
        wanted += ["d2m", "sp"]
    raw = [n for v in wanted for n in (inverse.get(v), v) if n in ds.data_vars]
    if raw:
        ds = ds[list(dict.fromkeys(raw))]
    tdim = "valid_time" if "valid_time" in ds.dims else "time"
    index = {}
    if tdim in ds.dims and (start is not None or end is not None):
        t = ds[tdim].values.astype("datetime64[ns]")
        i0 = 0 if start is None else int(np.searchsorted(t, np.datetime64(pd.Timestamp(start)
                                                                          .as_unit("ns"))))
        # the hour after ``end`` too: accumulations ending at 00 UTC
        i1 = t.size if end is None else int(np.searchsorted(t, np.datetime64(
            (pd.Timestamp(end).normalize() + pd.Timedelta(days=1)).as_unit("ns")), "right"))
        index[tdim] = slice(i0, max(i0, i1))
    if window.kind == "latlon":
        ydim, xdim = ("latitude", "longitude") if "latitude" in ds.dims else ("lat", "lon")
        if ydim in ds.dims and xdim in ds.dims:
            la, lo = ds[ydim].values.astype(np.float64), ds[xdim].values.astype(np.float64)
            iy = np.abs(la[None, :] - window.lat[:, None]).argmin(axis=1)
            ix = np.abs(np.mod(lo[None, :] - window.lon[:, None] + 180.0, 360.0)
                        - 180.0).argmin(axis=1)
            index[ydim] = slice(int(iy.min()), int(iy.max()) + 1)
            if np.all(np.diff(ix) > 0):  # not wrapping the seam
                index[xdim] = slice(int(ix.min()), int(ix.max()) + 1)
    else:
        index.update(source_box(ds, window, method=method, name="ERA5 store"))
    return select_stored(ds, index)


def open_era5_arco(urlpath: str = ARCO_URL, *, storage_options: Mapping | None = None,
                   variables: Sequence[str] | None = None, start: str | None = None,
                   end: str | None = None, grid: str = "M25", region: str | None = None,
                   lat: Sequence[float] | None = None, lon: Sequence[float] | None = None,
                   daily: bool = True, min_count: int = 6,
                   method: str = "bilinear", consolidated: bool | None = None,
                   window=None) -> xr.Dataset:
    """ERA5 from an ARCO-layout Zarr store (hourly, global 0.25°), daily on a grid window.

    Parameters
    ----------
    urlpath : str
        The store; default the public ``gs://gcp-public-data-arco-era5`` one.
    storage_options : mapping, optional
        fsspec options; for ``gs://`` without any, anonymous access
        (``{"token": "anon"}``).
    variables : sequence of str, optional
        Canonical short names; default every one the store can give.
    start, end : str, optional
        First and last day (inclusive).
    grid, region, lat, lon
        The target window (see ``casm_cloud.grid``): a named region or a box
        of an EASE2 grid (``"M25"``…, regridded) or of ``"ERA5_0p25"``
        (ERA5's cells, selected; no region or box: the whole 90 N – 60 S grid).
    daily : bool
        Aggregate hourly to daily (see the :mod:`casm_cloud.sources.era5` docstring).
    min_count : int
        Least hourly values per day.
    method : {"bilinear", "nearest"}
        Regridding method.
    consolidated : bool, optional
        Whether the store has consolidated metadata (``None``: try, then
        fall back to reading each array's metadata).
    window : casm_cloud.grid.GridWindow, optional
        The target window itself (instead of ``grid``/``region``/``lat``/``lon``).
        Either layout is read: Google's ARCO-ERA5 (long names, ``time``, one
        hour per chunk) and ECMWF's geo-chunked ARCO single levels (short
        names, ``valid_time``); the store is cut to the variables, hours and
        cells the request needs before any dask array is built.

    Returns
    -------
    xarray.Dataset
        Canonical ``era5`` dataset, lazy.

    Raises
    ------
    casm_cloud.schema.SchemaError
        A missing variable, wrong units, or no data in the period.
    """
    so = dict(storage_options or {})
    if not so and str(urlpath).startswith("gs://"):
        so = {"token": "anon"}
    # Without dask first: cut to the request, then chunk (docs/architecture.md, "Known traps").
    remote = "://" in str(urlpath) and not str(urlpath).startswith("file://")
    ds = xr.open_zarr(str(urlpath), storage_options=(so or None) if remote else None,
                      chunks=None, consolidated=consolidated)
    window = era5_window(grid, region, lat, lon) if window is None else window
    ds = _arco_request(ds, variables, start, end, window, method)
    return era5_dataset(ds, str(urlpath), variables=variables, start=start, end=end, grid=grid,
                        region=region, lat=lat, lon=lon, daily=daily, min_count=min_count,
                        method=method, window=window)
