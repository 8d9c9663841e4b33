"""ERA5's fields, whichever files they come from: canonical short names, checked units,
``q`` derived, on the window, hourly -> daily (:mod:`casm_cloud.sources.era5`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import schema
from casm_cloud.grid import LATLON_GRIDS, LatLonGrid
from casm_cloud.regrid import regrid_to_window
from casm_cloud.sources._common import check_units, finish, target_window, time_slice

__all__ = ["ACCUMULATED", "ARCO_NAMES", "CANONICAL", "daily_from_hourly", "era5_dataset",
           "era5_window", "select_window", "specific_humidity"]

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


def era5_window(grid, region, lat, lon):
    """The target window: of an EASE2 grid, or of ERA5's own lat/lon grid."""
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



def era5_dataset(ds: xr.Dataset, where: str, *, variables, start, end, grid, region, lat, lon,
                 daily, min_count, method, window=None) -> xr.Dataset:
    """An opened ERA5 dataset as the canonical ``era5`` dataset: short names, checked units,
    ``q``, the period, on the window, daily (the package docstring); lazy."""
    variables = list(variables) if variables is not None else None
    if variables is None:
        present = set(ds.data_vars) | {ARCO_NAMES.get(v, v) for v in ds.data_vars}
        variables = [v for v in CANONICAL if v in present]
        if {"d2m", "sp"} <= present and "q" not in variables:
            variables.append("q")
        if not variables:
            raise schema.SchemaError(f"{where}: none of the ERA5 variables {list(CANONICAL)} is "
                                     f"present (have {sorted(map(str, ds.data_vars))[:20]})")
    window = era5_window(grid, region, lat, lon) if window is None else window
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
