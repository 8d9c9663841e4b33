"""Adapter for TU Wien time-series cell files (pynetcf / QA4SM layout).

TU Wien's ``pynetcf`` stores satellite and reanalysis products as time series
per location, one netCDF file per 5°×5° cell (``0165.nc``, ``0166.nc`` …,
next to a ``grid.nc``), CF ``featureType = timeSeries``, in one of two
layouts:

* **orthogonal** (``OrthoMultiTs``): variables ``(locations, time)`` on one
  shared time axis (SMOS L3, SMOS-IC, ERA5, ERA5-Land in the QA4SM data);
* **indexed ragged** (``IndexedRaggedTs``): one observation dimension (named
  ``time``) with a ``locationIndex`` variable naming the location of every
  observation (SMAP L3 AM+PM), times unsorted.

:func:`open_tuw_ts` reads a folder of cell files into one dataset with
dimensions ``(location, time)`` and per-location coordinates ``lat``,
``lon``, ``location_id`` (the provider's grid point index) and ``cell``.
Time-series products are not on an EASE2 window, so they skip the gridded
schema check; the validation code matches them to stations by distance.

Why not ``pynetcf``/``pygeobase``: they are not in the stack, read one
location at a time, and the layouts above are plain CF (CF-1.6 §H.2.1 and
§H.2.5), so xarray reads them directly.  Orthogonal files stay lazy (dask);
ragged files are scattered onto their (location, time) axis when opened,
reading only the requested variables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import storage
from casm_cloud.errors import UserError
from casm_cloud.sources._common import source_error

__all__ = ["open_tuw_ts", "TUWFormatError"]

_CELL_FILE = re.compile(r"^\d{4}\.nc$")
# per-location bookkeeping variables of the pynetcf layout (not data)
_LOCATION_VARS = ("location_id", "location_description", "lat", "lon", "alt", "locationIndex",
                  "row_size")


class TUWFormatError(UserError, ValueError):
    """A file that is not a TU Wien time-series cell file, or lacks a variable."""


def open_tuw_ts(urlpath: str, *, storage_options: Mapping | None = None,
                variables: Sequence[str] | None = None, cells: Sequence[int] | None = None,
                bbox: tuple[float, float, float, float] | None = None) -> xr.Dataset:
    """Open a folder (or one file) of TU Wien time-series cell files.

    Parameters
    ----------
    urlpath : str
        Folder holding ``NNNN.nc`` cell files (``grid.nc`` and other files
        are ignored), or the path of one cell file; local or fsspec URL.
    storage_options : mapping, optional
        fsspec options for remote folders.
    variables : sequence of str, optional
        Data variables to keep (default: all time-varying ones).
    cells : sequence of int, optional
        Read only these cell numbers (file names), e.g. ``[165]``.
    bbox : (south, north, west, east), optional
        Keep only locations inside this box (degrees).

    Returns
    -------
    xarray.Dataset
        Dimensions ``(location, time)`` (time sorted, the union of all
        files' times), coordinates ``lat``, ``lon``, ``location_id``,
        ``cell`` per location; each variable keeps its attributes, with
        ``_FillValue`` and ``valid_min``/``valid_max`` turned into NaN.
        ``attrs["timeSeries_format"]`` says which layout was read.

    Raises
    ------
    casm_cloud.catalog.MissingFilesError
        (a ``SourceError`` and ``FileNotFoundError``) If there is no such file or
        folder, or it holds no cell file (of the requested ``cells``).
    TUWFormatError
        If a file lacks the location variables, or a requested variable.
    ValueError
        If no location is left inside ``bbox``.
    """
    fs, root = storage.url_to_fs(urlpath, storage_options)
    if fs.isdir(root):
        files = sorted(p for p in fs.ls(root, detail=False) if _CELL_FILE.match(p.rsplit("/", 1)[-1]))
    elif fs.exists(root):
        files = [root]
    else:
        raise source_error(f"{urlpath}: no such file or folder; expected a folder of TU Wien "
                           "time-series cell files (NNNN.nc) or one of them", missing=True)
    if cells is not None:
        wanted = {f"{int(c):04d}.nc" for c in cells}
        files = [p for p in files if p.rsplit("/", 1)[-1] in wanted]
    if not files:
        raise source_error(
            f"{urlpath}: no TU Wien cell files (NNNN.nc)"
            + (f" for cells {list(cells)}" if cells is not None else ""), missing=True)
    local = getattr(fs, "protocol", "file") in ("file", ("file", "local"), "local") or \
        "file" in np.atleast_1d(fs.protocol)
    parts, formats = [], set()
    for path in files:
        src = path if local else fs.open(path, "rb")
        raw = xr.open_dataset(src, engine="netcdf4" if local else "h5netcdf", chunks={},
                              mask_and_scale=True, decode_times=True)
        ds, fmt = _one_cell(raw, path, variables)
        formats.add(fmt)
        if bbox is not None:
            s, n, w, e = bbox
            keep = ((ds.lat >= s) & (ds.lat <= n) & (ds.lon >= w) & (ds.lon <= e)).compute()
            ds = ds.isel(location=np.flatnonzero(keep.values))
        if ds.sizes["location"]:
            parts.append(ds)
    if not parts:
        raise ValueError(f"{urlpath}: no location inside bbox={bbox} (south, north, west, east)")
    out = xr.concat(parts, dim="location", join="outer", data_vars="all", coords="different",
                    compat="equals", combine_attrs="drop_conflicts") if len(parts) > 1 else parts[0]
    out = out.sortby("time")
    out.attrs["timeSeries_format"] = ",".join(sorted(formats))
    out.attrs["source"] = str(urlpath)
    return out


def _one_cell(raw: xr.Dataset, path: str, variables: Sequence[str] | None
              ) -> tuple[xr.Dataset, str]:
    """One cell file as a ``(location, time)`` dataset, and its layout name."""
    for name in ("lat", "lon", "location_id"):
        if name not in raw.variables:
            raise TUWFormatError(f"{path}: no {name!r} variable; not a TU Wien time-series file")
    if "time" not in raw.variables:
        raise TUWFormatError(f"{path}: no 'time' variable; not a TU Wien time-series file")
    ragged = "locationIndex" in raw.variables
    loc_dim = raw["lat"].dims[0]
    candidates = [v for v in raw.data_vars if v not in _LOCATION_VARS
                  and "time" in raw[v].dims]
    keep = list(candidates if variables is None else variables)
    missing = [v for v in keep if v not in candidates]
    if missing:
        raise TUWFormatError(f"{path}: variables {missing} not found (have {sorted(candidates)})")
    loc_coords = {
        "lat": ("location", raw["lat"].values.astype(np.float64), raw["lat"].attrs),
        "lon": ("location", raw["lon"].values.astype(np.float64), raw["lon"].attrs),
        "location_id": ("location", raw["location_id"].values.astype(np.int64)),
        "cell": ("location", np.full(raw.sizes[loc_dim], _cell_number(path), dtype=np.int32)),
    }
    if ragged:
        index = raw["locationIndex"].values.astype(np.int64)
        times = raw["time"].values
        good = np.isfinite(index.astype(np.float64)) & ~pd.isna(times) & (index >= 0)
        index, times = index[good], times[good]
        utime, t_pos = np.unique(times, return_inverse=True)
        data_vars = {}
        for v in keep:
            vals = raw[v].values[good]
            grid = np.full((raw.sizes[loc_dim], utime.size), np.nan,
                           dtype=np.result_type(vals.dtype, np.float32))
            grid[index, t_pos] = vals
            data_vars[v] = (("location", "time"), _mask_valid(grid, raw[v].attrs), raw[v].attrs)
        ds = xr.Dataset(data_vars, coords={**loc_coords, "time": utime})
        return ds, "IndexedRaggedTs"
    ds = raw[keep].rename({loc_dim: "location"}).drop_vars(
        [c for c in ("lat", "lon", "alt", "location_id") if c in raw[keep].coords])
    ds = ds.assign_coords(loc_coords)
    for v in keep:
        ds[v] = ds[v].transpose("location", "time")
        lo, hi = ds[v].attrs.get("valid_min"), ds[v].attrs.get("valid_max")
        if lo is not None or hi is not None:
            ds[v] = ds[v].where((ds[v] >= (lo if lo is not None else -np.inf))
                                & (ds[v] <= (hi if hi is not None else np.inf)))
    return ds, "OrthoMultiTs"


def _mask_valid(values: np.ndarray, attrs: Mapping) -> np.ndarray:
    """NaN outside ``valid_min``/``valid_max`` (fill values are masked on open)."""
    lo, hi = attrs.get("valid_min"), attrs.get("valid_max")
    if np.issubdtype(values.dtype, np.floating) and (lo is not None or hi is not None):
        bad = np.zeros(values.shape, dtype=bool)
        if lo is not None:
            bad |= values < lo
        if hi is not None:
            bad |= values > hi
        values = np.where(bad, np.nan, values)
    return values


def _cell_number(path: str) -> int:
    return int(path.rsplit("/", 1)[-1].split(".")[0])
