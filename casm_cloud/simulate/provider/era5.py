"""ERA5 hourly 0.25° of a simulated daily ``era5`` dataset: the ARCO Zarr v3 layout and CDS netCDF.

The simulator's ERA5 is daily; the providers distribute hours.  Each day is
spread over its 24 UTC hours so that the reader's daily aggregation
(:func:`casm_cloud.sources.era5.fields.daily_from_hourly`) gives the daily values
back:

* instantaneous fields (``t2m``, ``skt``, ``swvl1..3``) are the daily value
  plus, for the temperatures, a diurnal cycle of zero daily mean (24 samples
  of a cosine peaking at 15:00 local solar time: 5 K for ``t2m``, 8 K for
  ``skt``);
* accumulations (``tp``, ``ssr``, ``ssrd``, ``str``) are hourly amounts over
  the hour *ending* at the time stamp (as ECMWF stamps them); the day's total
  is shared evenly (``tp``, ``str``) or along the daylight hours (the solar
  fluxes, the cosine of the local hour angle);
* specific humidity ``q`` is not an ERA5 single-level field: the files carry
  ``d2m`` and ``sp`` instead, ``sp`` from the elevation (ICAO standard
  atmosphere) and ``d2m`` by inverting the reader's Tetens formula, both
  constant through the day, so the reader's ``q`` is the simulated one.

Grids: a simulation on an EASE2 window is resampled to 0.25° with a 1°
margin (:func:`casm_cloud.simulate.native.to_era5_native`); one on the
``ERA5_0p25`` grid keeps its cells.  Latitude runs north to south and
longitude 0–359.75 (as in both products; a window across the Greenwich
meridian keeps -180–180 so that its longitudes stay increasing).

Layouts:

* ``era5/full_37-1h-0p25deg-chunk-1.zarr-v3``: Google's ARCO-ERA5 (Zarr v3,
  long variable names, ``time`` in hours since 1900-01-01, one hour per
  chunk), window-sized;
* ``era5/ERA5_YYYYMM.nc``: CDS netCDF-4 downloads, one per month (the 2024
  CDS layout: ``valid_time``, short names, ECMWF units); the last file also
  holds the hour closing the last day's accumulations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import schema, storage
from casm_cloud.simulate.native import to_era5_native
from casm_cloud.simulate.provider._files import ecmwf_units, netcdf_bytes, put
from casm_cloud.sources.era5.fields import ACCUMULATED, ARCO_NAMES

__all__ = ["write_era5", "hourly_from_daily", "dewpoint", "surface_pressure", "ARCO_PATH",
           "FORMATS"]

ARCO_PATH = "era5/full_37-1h-0p25deg-chunk-1.zarr-v3"
FORMATS = ("arco", "netcdf")
_LONG = {"t2m": "2 metre temperature", "skt": "Skin temperature", "tp": "Total precipitation",
         "ssr": "Surface net short-wave (solar) radiation",
         "ssrd": "Surface short-wave (solar) radiation downwards",
         "str": "Surface net long-wave (thermal) radiation",
         "swvl1": "Volumetric soil water layer 1", "swvl2": "Volumetric soil water layer 2",
         "swvl3": "Volumetric soil water layer 3", "d2m": "2 metre dewpoint temperature",
         "sp": "Surface pressure"}
_AMPLITUDE_K = {"t2m": 5.0, "skt": 8.0}
_SOLAR = {"ssr", "ssrd"}


def surface_pressure(elevation_m):
    """ICAO standard-atmosphere pressure (Pa) at an elevation (m)."""
    return 101325.0 * (1.0 - 2.25577e-5 * np.asarray(elevation_m, np.float64)) ** 5.25588


def dewpoint(q, sp):
    """The dew point (K) whose Tetens vapour pressure at ``sp`` gives specific humidity ``q``.

    Inverse of :func:`casm_cloud.sources.era5.fields.specific_humidity`:
    ``e = q p / (0.622 + 0.378 q)``, ``a = ln(e / 611.21) / 17.502``,
    ``Td = (273.16 - 32.19 a) / (1 - a)``.
    """
    q = np.asarray(q, np.float64)
    e = q * sp / (0.622 + 0.378 * q)
    a = np.log(e / 611.21) / 17.502
    return (273.16 - 32.19 * a) / (1.0 - a)


def _on_latlon(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` on dims ``latitude`` (decreasing), ``longitude`` (0..360 where increasing)."""
    if "latitude" not in ds.dims:
        if "latlon_grid" in ds.attrs:
            ds = ds.drop_vars(["y", "x", "crs"], errors="ignore").rename(
                {"y": "latitude", "x": "longitude"}).rename_vars(
                {"lat": "latitude", "lon": "longitude"})
        else:
            ds = to_era5_native(ds)
    lon = np.mod(ds["longitude"].values, 360.0)
    if np.all(np.diff(lon) > 0):
        ds = ds.assign_coords(longitude=lon)
    return ds.drop_vars([c for c in ds.coords if c not in ("time", "latitude", "longitude")])


def _hour_weights(name: str, lon: np.ndarray) -> np.ndarray:
    """(24, nlon) shares of a daily total per UTC hour (intervals h..h+1)."""
    hours = np.arange(24)[:, None] + 0.5
    if name not in _SOLAR:
        return np.full((24, lon.size), 1.0 / 24.0)
    local = hours + lon[None, :] / 15.0
    w = np.maximum(np.cos(2 * np.pi * (local - 12.0) / 24.0), 0.0)
    return w / w.sum(axis=0, keepdims=True)


def hourly_from_daily(daily: xr.Dataset, sp: np.ndarray, carry: dict | None = None
                      ) -> tuple[xr.Dataset, dict]:
    """The hours 00..23 of each day of ``daily`` (loaded, dims time, latitude, longitude).

    ``carry`` holds the accumulations of the hour before the first stamp (the
    previous block's last hour); the second value returned is this block's.
    """
    days = pd.DatetimeIndex(daily["time"].values)
    stamps = pd.date_range(days[0], days[-1] + pd.Timedelta(hours=23), freq="h")
    lon = daily["longitude"].values
    local = (np.arange(24)[:, None] + lon[None, :] / 15.0)
    out, nxt = {}, {}
    for name in daily.data_vars:
        v = daily[name].values.astype(np.float64)  # (day, lat, lon)
        if name in ACCUMULATED:
            per = v[:, None] * _hour_weights(name, lon)[None, :, None, :]  # (day, h, lat, lon)
            per = per.reshape(-1, *v.shape[1:])  # interval j = stamp j + 1 h
            first = (carry or {}).get(name, per[0])
            out[name] = np.concatenate([first[None], per[:-1]])
            nxt[name] = per[-1]
        elif name == "q":
            d2m = dewpoint(v, sp[None])
            out["d2m"] = np.repeat(d2m, 24, axis=0)
            out["sp"] = np.broadcast_to(sp, (len(stamps), *sp.shape))
        else:
            amp = _AMPLITUDE_K.get(name, 0.0)
            cyc = amp * np.cos(2 * np.pi * (local - 15.0) / 24.0)  # (h, lon)
            out[name] = (v[:, None] + cyc[None, :, None, :]).reshape(-1, *v.shape[1:])
    coords = {"time": stamps, "latitude": daily["latitude"].values, "longitude": lon}
    ds = xr.Dataset({k: (("time", "latitude", "longitude"), a.astype(np.float32))
                     for k, a in out.items()}, coords=coords)
    return _attrs(ds), nxt


def _attrs(ds: xr.Dataset) -> xr.Dataset:
    for name in ds.data_vars:
        units = "Pa" if name == "sp" else "K" if name == "d2m" else \
            schema.spec("era5", name).units
        ds[name].attrs = {"units": ecmwf_units(units), "long_name": _LONG[name],
                          "short_name": name}
    ds["latitude"].attrs = {"units": "degrees_north", "long_name": "latitude"}
    ds["longitude"].attrs = {"units": "degrees_east", "long_name": "longitude"}
    return ds


def _closing_hour(daily_last: xr.Dataset, hourly_last: xr.Dataset, carry: dict) -> xr.Dataset:
    """The stamp after the last hour: it closes the last day's accumulations."""
    one = hourly_last.isel(time=[-1]).copy(deep=True)
    one = one.assign_coords(time=one["time"].values + np.timedelta64(1, "h"))
    for name, a in carry.items():
        one[name].values[0] = a
    return one


def _write_arco(hours: xr.Dataset, out: str, so, first: bool) -> None:
    arco = hours.rename({k: v for v, k in ARCO_NAMES.items() if k in hours.data_vars})
    url = storage.join(out, ARCO_PATH)
    # consolidated, as the public store is: an open reads one metadata document
    if first:
        enc = {v: {"chunks": (1, arco.sizes["latitude"], arco.sizes["longitude"])}
               for v in arco.data_vars}
        enc["time"] = {"units": "hours since 1900-01-01", "calendar": "proleptic_gregorian",
                       "dtype": "int64"}
        storage.write_plain_zarr(arco, url, so, encoding=enc, consolidated=True)
    else:
        storage.write_plain_zarr(arco, url, so, append_dim="time", consolidated=True)


def _write_cds(hours: xr.Dataset, out: str, so, month: pd.Period) -> None:
    cds = hours.rename(time="valid_time")
    cds["valid_time"].attrs = {"long_name": "time", "standard_name": "time"}
    enc = {v: {"zlib": True, "complevel": 1} for v in cds.data_vars}
    enc["valid_time"] = {"units": "seconds since 1970-01-01", "dtype": "int64"}
    cds.attrs = {"GRIB_centre": "ecmf", "institution": "European Centre for Medium-Range "
                 "Weather Forecasts (simulated)", "Conventions": "CF-1.7"}
    put(out, f"era5/ERA5_{month:%Y%m}.nc", netcdf_bytes(cds, enc), so)


def write_era5(ds: xr.Dataset, out: str, storage_options: Mapping | None = None, *,
               static: xr.Dataset, formats: Sequence[str] = FORMATS,
               window_options: Mapping | None = None) -> dict:
    """Write the hourly ERA5 layouts of a simulated daily ``era5`` dataset under ``out``.

    Parameters
    ----------
    ds, static : xarray.Dataset
        The simulated ERA5 and static maps (same grid; ``elevation`` gives ``sp``).
    formats : sequence of {"arco", "netcdf"}
        Which layouts to write.
    window_options : mapping, optional
        ``grid``/``region`` or ``lat``/``lon`` stored in the catalog entries, the
        window an open without one returns.

    Returns
    -------
    dict
        Catalog entries: ``era5`` (ARCO) and ``era5_cds`` (netCDF).
    """
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise ValueError(f"ERA5 formats {bad}: expected some of {list(FORMATS)}")
    so = dict(storage_options or {})
    daily = _on_latlon(ds)
    elev = _on_latlon(static[["elevation"]])["elevation"].values
    sp = surface_pressure(elev)
    months = pd.DatetimeIndex(daily["time"].values).to_period("M")
    periods = list(dict.fromkeys(months))
    carry = None
    for i, month in enumerate(periods):
        block = daily.isel(time=np.flatnonzero(months == month)).load()
        hours, carry = hourly_from_daily(block, sp, carry)
        if i == len(periods) - 1:
            hours = xr.concat([hours, _closing_hour(block, hours, carry)], dim="time")
        if "arco" in formats:
            _write_arco(hours, out, so, first=i == 0)
        if "netcdf" in formats:
            _write_cds(hours, out, so, month)
    opts = dict(window_options or {})
    entries = {}
    if "arco" in formats:
        entries["era5"] = ("era5_arco", ARCO_PATH, opts,
                           "ERA5 hourly single levels, ARCO Zarr v3 layout (long names, one "
                           "hour per chunk), simulated")
    if "netcdf" in formats:
        entries["era5_cds"] = ("era5_cds", "era5/ERA5_*.nc", opts,
                               "ERA5 CDS netCDF downloads (hourly, one file per month), "
                               "simulated")
    return entries
