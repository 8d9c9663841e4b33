"""ERA5: the public ARCO Zarr on Google Cloud, and CDS netCDF / GRIB files.

Both adapters return daily fields on a grid window with the canonical
short names (docs/science.md, "Data model"): ``t2m``, ``skt``, ``q``, ``tp``, ``ssr``,
``ssrd``, ``str``, ``swvl1..3``.  The window is one of an EASE2 grid
(regridded) or of ERA5's own grid ``grid="ERA5_0p25"``
(:class:`casm_cloud.grid.LatLonGrid`; cells are selected, not interpolated).

* Variable mapping: ARCO-ERA5 uses long names (``2m_temperature``,
  ``total_precipitation``, ``volumetric_soil_water_layer_1`` …); CDS files use
  the ECMWF short names.  Near-surface specific humidity ``q`` is not a
  single-level ERA5 field; it is derived from 2 m dewpoint and surface
  pressure with the saturation vapour pressure of the IFS (Tetens, over
  water: ``e = 611.21 exp(17.502 (Td - 273.16) / (Td - 32.19))`` Pa; IFS
  Documentation CY41R2 Part IV, eq. 7.5) and ``q = 0.622 e / (p - 0.378 e)``.
* Hourly -> daily (SoMo.ml): instantaneous variables are the mean of at
  least ``min_count`` (default 6) hourly values of the UTC day; the
  accumulated ones (``tp``, ``ssr``, ``ssrd``, ``str``: hourly accumulations over the
  hour *ending* at the stamp) are moved to the hour they accumulate over
  and summed to a daily total, as ``mean × values per day`` so that a day with
  a few missing hours is not biased low (still at least ``min_count``).
  Data already daily (or coarser) is not aggregated.
* Regridding to the window happens on the hourly fields, chunk by chunk,
  before the daily aggregation, so a global one-hour-per-chunk store is
  reduced to the window at once (``casm_cloud.regrid``).
* Units are checked against the ECMWF units (``K``, ``m``, ``J m**-2``,
  ``m**3 m**-3``, ``Pa``): wrong units are an error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import schema
from casm_cloud.grid import LATLON_GRIDS, LatLonGrid
from casm_cloud.regrid import regrid_to_window
from casm_cloud.sources._common import (
    check_units,
    expand_paths,
    finish,
    local_file,
    target_window,
    time_slice,
)

__all__ = ["ARCO_URL", "ARCO_NAMES", "ACCUMULATED", "open_era5_arco", "open_era5_cds",
           "daily_from_hourly", "select_window", "specific_humidity"]

#: The public ARCO-ERA5 store (anonymous access; one hour per chunk).
ARCO_URL = "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3"

#: ARCO-ERA5 long name -> ECMWF short name.
ARCO_NAMES: dict[str, str] = {
    "2m_temperature": "t2m",
    "skin_temperature": "skt",
    "total_precipitation": "tp",
    "surface_net_solar_radiation": "ssr",
    "surface_solar_radiation_downwards": "ssrd",
    "surface_net_thermal_radiation": "str",
    "volumetric_soil_water_layer_1": "swvl1",
    "volumetric_soil_water_layer_2": "swvl2",
    "volumetric_soil_water_layer_3": "swvl3",
    "2m_dewpoint_temperature": "d2m",
    "surface_pressure": "sp",
}
#: Accumulated variables (hourly accumulations, summed to daily totals).
ACCUMULATED = frozenset({"tp", "ssr", "ssrd", "str"})
CANONICAL = tuple(schema.KINDS["era5"][1])
_INPUT_UNITS = {"d2m": "K", "sp": "Pa", **{n: schema.spec("era5", n).units for n in CANONICAL
                                           if n != "q"}}


def specific_humidity(d2m: xr.DataArray, sp: xr.DataArray) -> xr.DataArray:
    """Specific humidity (kg kg-1) from dew point (K) and surface pressure (Pa).

    Saturation vapour pressure over water at the dew point with the IFS
    constants of Tetens' formula (Buck 1981; IFS Documentation CY41R2 Part IV,
    eq. 7.5): ``e = 611.21 exp(17.502 (Td - 273.16) / (Td - 32.19))`` Pa, then
    ``q = 0.622 e / (p - 0.378 e)`` (ε = Rd/Rv = 0.622).
    """
    e = 611.21 * np.exp(17.502 * (d2m - 273.16) / (d2m - 32.19))
    q = 0.622 * e / (sp - 0.378 * e)
    return q.rename("q").assign_attrs(units="kg kg-1")


def _hourly_canonical(ds: xr.Dataset, variables: Sequence[str], where: str) -> xr.Dataset:
    """Short names, checked units, ``q`` derived; dims (time, lat, lon)."""
    ds = ds.rename({k: v for k, v in ARCO_NAMES.items() if k in ds.data_vars})
    if "valid_time" in ds.dims and "time" not in ds.dims:
        ds = ds.drop_vars("time", errors="ignore").rename(valid_time="time")
    if "step" in ds.dims:  # GRIB forecast layout (time, step) -> valid time
        ds = ds.stack(vt=("time", "step")).swap_dims(vt="valid_time").drop_vars(
            ["vt", "time", "step"], errors="ignore").rename(valid_time="time")
    if "time" not in ds.dims:
        if "time" not in ds.coords:
            raise schema.SchemaError(f"{where}: no time coordinate")
        ds = ds.expand_dims("time")
    unknown = sorted(set(variables) - set(CANONICAL))
    if unknown:
        raise schema.SchemaError(f"{where}: {unknown} are not canonical ERA5 variables; expected "
                                 f"some of {list(CANONICAL)}")
    need = {v for v in variables if v != "q"} | ({"d2m", "sp"} if "q" in variables else set())
    missing = sorted(need - set(ds.data_vars))
    if missing:
        raise schema.SchemaError(
            f"{where}: missing variable(s) {missing} (have {sorted(map(str, ds.data_vars))[:20]})")
    for name in need:
        check_units(ds[name], _INPUT_UNITS[name], where)
    out = xr.Dataset({v: ds[v] for v in variables if v != "q"})
    if "q" in variables:
        out["q"] = specific_humidity(ds["d2m"], ds["sp"])
    drop = [c for c in out.coords if c not in out.dims and c not in ("time",)]
    return out.drop_vars(drop)


def daily_from_hourly(ds: xr.Dataset, *, min_count: int = 6,
                      accumulated: frozenset[str] = ACCUMULATED) -> xr.Dataset:
    """UTC-daily values from sub-daily ones (lazy).

    Parameters
    ----------
    ds : xarray.Dataset
        With a regular ``time`` axis.
    min_count : int
        Least number of valid sub-daily values for a daily value.
    accumulated : set of str
        Variables accumulated over the step ending at their time stamp:
        shifted back by one step, then summed (``mean × steps per day``).

    Returns
    -------
    xarray.Dataset
        Daily means (instantaneous) and totals (accumulated); days with
        fewer than ``min_count`` values are NaN.  Sub-daily steps only: data
        with a step of a day or more is returned unchanged.
    """
    if ds.sizes.get("time", 0) < 2:
        return ds
    steps = np.diff(ds["time"].values).astype("timedelta64[s]").astype(np.int64)
    step = int(np.median(steps))
    if step >= 86400:
        return ds
    per_day = 86400 / step
    parts = []
    for name, da in ds.data_vars.items():
        if name in accumulated:
            da = da.assign_coords(time=da["time"] - np.timedelta64(step, "s"))
        if 86400 % step == 0 and da.chunks is not None and np.all(steps == step):
            n, mean = _day_blocks(da, step)
        else:
            r = da.resample(time="1D")
            n, mean = r.count(), r.mean()
        val = mean * per_day if name in accumulated else mean
        parts.append(val.where(n >= min_count).rename(name).assign_attrs(da.attrs))
    out = xr.merge(parts, join="outer", compat="override")
    return out.assign_attrs(ds.attrs)


def _day_blocks(da: xr.DataArray, step: int) -> tuple[xr.DataArray, xr.DataArray]:
    """(count, mean) per UTC day of a regular dask series, blockwise (``resample`` without
    flox builds tasks per day): padded to whole days, chunks on whole days, coarsened."""
    per_day = 86400 // step
    t = da["time"].values.astype("datetime64[s]")
    first = t[0].astype("datetime64[D]")
    last = t[-1].astype("datetime64[D]") + np.timedelta64(1, "D")
    lead = int((t[0] - first) // np.timedelta64(step, "s"))
    tail = int((last - t[-1]) // np.timedelta64(step, "s")) - 1
    full = da.pad(time=(lead, tail))
    full = full.assign_coords(time=np.arange(first, last, np.timedelta64(step, "s"))
                              .astype("datetime64[ns]"))
    chunk = max(1, int(round(max(full.chunks[full.dims.index("time")]) / per_day))) * per_day
    full = full.chunk(time=chunk)
    days = np.arange(first, last, np.timedelta64(1, "D")).astype("datetime64[ns]")
    n = full.notnull().coarsen(time=per_day).sum().assign_coords(time=days)
    total = full.fillna(0).coarsen(time=per_day).sum().assign_coords(time=days)
    return n, total / n.where(n > 0)


def _target_window(grid, region, lat, lon):
    if grid not in LATLON_GRIDS:
        return target_window(grid, region, lat, lon)
    g = LatLonGrid(grid)
    if region is not None and (lat is not None or lon is not None):
        raise ValueError("give either region= or lat=/lon=, not both")
    if region is not None:
        return g.window_by_name(region)
    if lat is None or lon is None:
        return g.subwindow(slice(None), slice(None))
    return g.window(lat=tuple(lat), lon=tuple(lon))


def select_window(ds: xr.Dataset, window) -> xr.Dataset:
    """The cells of a :class:`~casm_cloud.grid.LatLonGrid` window, picked from ERA5's grid.

    Parameters
    ----------
    ds : xarray.Dataset
        On a regular lat/lon grid of the window's spacing: dims ``latitude``,
        ``longitude`` (or ``lat``, ``lon``), longitudes 0..360 or -180..180,
        latitude in either order.
    window : casm_cloud.grid.GridWindow
        A window of a lat/lon grid.

    Returns
    -------
    xarray.Dataset
        Dims ``y``, ``x`` with ``window.coords()``; lazy (one ``isel`` per axis).

    Raises
    ------
    casm_cloud.schema.SchemaError
        If a cell centre of the window is not on the dataset's grid.
    """
    ydim, xdim = ("latitude", "longitude") if "latitude" in ds.dims else ("lat", "lon")
    if ydim not in ds.dims or xdim not in ds.dims:
        raise schema.SchemaError(f"ERA5: no latitude/longitude dimensions (have {dict(ds.sizes)})")
    lat, lon = ds[ydim].values.astype(np.float64), ds[xdim].values.astype(np.float64)
    tol = 1e-3 * window.cell_size
    iy = np.abs(lat[None, :] - window.lat[:, None]).argmin(axis=1)
    dlon = np.mod(lon[None, :] - window.lon[:, None] + 180.0, 360.0) - 180.0
    ix = np.abs(dlon).argmin(axis=1)
    bad = (np.abs(lat[iy] - window.lat) > tol).any() or (
        np.abs(dlon[np.arange(ix.size), ix]) > tol).any()
    if bad:
        raise schema.SchemaError(f"ERA5: the cells of {window!r} are not on the dataset's "
                                 f"{ydim}/{xdim} grid")
    out = ds.isel({ydim: xr.DataArray(iy, dims="y"), xdim: xr.DataArray(ix, dims="x")})
    out = out.drop_vars([ydim, xdim], errors="ignore")
    return out.assign_coords({k: v for k, v in window.coords().items()})


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


def _era5(ds: xr.Dataset, where: str, *, variables, start, end, grid, region, lat, lon, daily,
          min_count, method, window=None) -> xr.Dataset:
    variables = list(variables) if variables is not None else None
    if variables is None:
        present = set(ds.data_vars) | {ARCO_NAMES.get(v, v) for v in ds.data_vars}
        variables = [v for v in CANONICAL if v in present]
        if {"d2m", "sp"} <= present and "q" not in variables:
            variables.append("q")
        if not variables:
            raise schema.SchemaError(f"{where}: none of the ERA5 variables {list(CANONICAL)} is "
                                     f"present (have {sorted(map(str, ds.data_vars))[:20]})")
    window = _target_window(grid, region, lat, lon) if window is None else window
    hourly = _hourly_canonical(ds, variables, where)
    if start is not None or end is not None:
        # keep the hour after ``end`` for accumulations that end at 00 UTC
        hi = None if end is None else pd.Timestamp(end).normalize() + pd.Timedelta(days=1)
        hourly = hourly.sel(time=slice(None if start is None else pd.Timestamp(start), hi))
    if hourly.sizes["time"] == 0:
        raise schema.SchemaError(f"{where}: no time steps between {start} and {end}")
    if window.kind == "latlon":
        on_window = select_window(hourly, window)
    else:
        on_window = regrid_to_window(hourly, window, method=method)
    values = "auto"
    if daily and on_window.sizes["time"] > 1:
        # Ranges checked on the first hour: the first daily chunk would read a day of hours.
        finish(on_window.isel(time=slice(0, 1)), "era5", window)
        values = "none"
    if daily and on_window.chunks and max(on_window.chunks.get("time", (24,))) < 24:
        # Hours (one per chunk on ARCO) gathered into days first: each hour is then read
        # by one task, not once per daily statistic (count, mean) that fuses its read.
        days = on_window["time"].values.astype("datetime64[D]")
        on_window = on_window.chunk(
            {"time": tuple(int(n) for n in np.unique(days, return_counts=True)[1])})
    out = daily_from_hourly(on_window, min_count=min_count) if daily else on_window
    out = time_slice(out, start, end)
    return finish(out, "era5", window, {"source": f"ERA5 ({where})"}, values=values)


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
        Aggregate hourly to daily (see the module docstring).
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
    window = _target_window(grid, region, lat, lon) if window is None else window
    ds = _arco_request(ds, variables, start, end, window, method)
    return _era5(ds, str(urlpath), variables=variables, start=start, end=end, grid=grid,
                 region=region, lat=lat, lon=lon, daily=daily, min_count=min_count,
                 method=method, window=window)


def _open_cds_file(path: str, storage_options: Mapping | None) -> xr.Dataset:
    local = local_file(path, storage_options)
    with open(local, "rb") as f:
        magic = f.read(4)
    if magic == b"GRIB":
        import cfgrib

        # One dataset per parameter: cfgrib cannot put several soil levels
        # (depthBelowLandLayer 0, 7, 28 cm) into one hypercube.
        parts = [d.drop_vars(["depthBelowLandLayer", "surface", "number", "heightAboveGround"],
                             errors="ignore")
                 for d in cfgrib.open_datasets(local, backend_kwargs={"indexpath": ""},
                                               chunks={})]
        return xr.merge(parts, compat="override", join="outer")
    engine = "h5netcdf" if magic[1:4] == b"HDF" else "scipy" if magic[:3] == b"CDF" else None
    return xr.open_dataset(local, engine=engine, chunks={})


def open_era5_cds(urlpath, *, storage_options: Mapping | None = None,
                  variables: Sequence[str] | None = None, start: str | None = None,
                  end: str | None = None, grid: str = "M25", region: str | None = None,
                  lat: Sequence[float] | None = None, lon: Sequence[float] | None = None,
                  daily: bool = True, min_count: int = 6,
                  method: str = "bilinear", window=None) -> xr.Dataset:
    """ERA5 from CDS downloads (netCDF or GRIB), daily on a grid window.

    Parameters
    ----------
    urlpath : str or list of str
        File(s), glob or fsspec URL(s); the format is told by the file's
        magic bytes (GRIB 1/2 via cfgrib with no index file, netCDF-4 via
        h5netcdf, netCDF-3 via scipy).
    storage_options, variables, start, end, grid, region, lat, lon, daily, min_count, method
        As for :func:`open_era5_arco`.

    Returns
    -------
    xarray.Dataset
        Canonical ``era5`` dataset, lazy.

    Raises
    ------
    casm_cloud.catalog.MissingFilesError
        (a ``SourceError`` and ``FileNotFoundError``) If a file or glob matches nothing.
    casm_cloud.schema.SchemaError
        A missing variable, wrong units, or no data in the period.
    """
    paths = expand_paths(urlpath, storage_options)
    parts = [_open_cds_file(p, storage_options) for p in paths]
    for i, p in enumerate(parts):  # old CDS netCDF: one scalar time per file
        if "time" in p.coords and "time" not in p.dims and "valid_time" not in p.dims:
            parts[i] = p.expand_dims("time")
    ds = parts[0] if len(parts) == 1 else xr.combine_by_coords(parts, combine_attrs="override")
    where = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
    return _era5(ds, where, variables=variables, start=start, end=end, grid=grid, region=region,
                 lat=lat, lon=lon, daily=daily, min_count=min_count, method=method,
                 window=window)
