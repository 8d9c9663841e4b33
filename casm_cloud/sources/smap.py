"""SMAP L3 radiometer soil moisture: ``SPL3SMP`` (36 km) and ``SPL3SMP_E`` (9 km) HDF5.

Layout read here (SMAP L3 SM P / SM P E Product Specification Documents,
JPL D-72551 and D-56290, versions 8-9; NSIDC user guides for SPL3SMP and
SPL3SMP_E): one HDF5 granule per UTC day, named
``SMAP_L3_SM_P[_E]_YYYYMMDD_R#####_###.h5``, with the groups

* ``Soil_Moisture_Retrieval_Data_AM`` (06:00 descending): ``soil_moisture``,
  ``retrieval_qual_flag``, ``latitude``, ``longitude``, ``EASE_row_index``,
  ``EASE_column_index``, ``tb_time_seconds`` …
* ``Soil_Moisture_Retrieval_Data_PM`` (18:00 ascending): the same names with
  the suffix ``_pm``.

Arrays are the whole global EASE2 grid (406 × 964 for M36, 1624 × 3856 for
M09) or, for subsets made by NASA's Harmony services, a rectangular block of
it; the block is placed from ``EASE_row_index``/``EASE_column_index`` or, if
those are absent, from the latitude/longitude of its cells (checked against
the grid).  Fill values (``_FillValue``, -9999) and values outside
``valid_min``/``valid_max`` become NaN.  ``retrieval_qual_flag`` bit 0 is
"not recommended quality" and bit 2 "retrieval not successful" (bit = 1
means the condition); ``quality`` selects which values survive.

The only real SPL3SMP file available to the tests is a Harmony subset
without soil moisture (``shared/data/real/smap``); it checks the geometry
and the error for a missing variable.  The soil-moisture path is tested on
files written by the tests in the layout above.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import schema
from casm_cloud.grid import EASE2Grid, GridError, GridWindow
from casm_cloud.sources._common import (
    check_units,
    expand_date_template,
    expand_paths,
    filter_paths_by_date,
    finish,
    local_file,
    source_error,
    stacked_reads,
    target_window,
    time_slice,
)

__all__ = ["open_smap_l3", "smap_granule_window", "GROUPS"]

#: orbit -> (group, variable suffix)
GROUPS = {"am": ("Soil_Moisture_Retrieval_Data_AM", ""),
          "pm": ("Soil_Moisture_Retrieval_Data_PM", "_pm")}
_NATIVE = {(406, 964): "M36", (1624, 3856): "M09"}
_QUALITY_BITS = {"recommended": 0b001, "succeeded": 0b100, "all": 0}
_FILL = -9999.0
_J2000 = np.datetime64("2000-01-01T11:58:55.816")  # SMAP time reference (tb_time_seconds)


def _h5(path: str, storage_options: Mapping | None):
    import h5py

    return h5py.File(local_file(path, storage_options), "r")


def _read(dset) -> np.ndarray:
    """A dataset as float32 with fills and out-of-range values as NaN.

    SMAP's documented fill for floats is -9999.0; subsets made by Harmony
    drop the ``_FillValue`` attribute of latitude/longitude but keep the
    fills, so -9999.0 is taken as fill when the attribute is absent.
    """
    a = dset[()].astype(np.float32)
    attrs = dset.attrs
    fill = np.ravel(attrs["_FillValue"])[0] if "_FillValue" in attrs else _FILL
    bad = a == np.float32(fill)
    if "valid_min" in attrs:
        bad |= a < np.float32(np.ravel(attrs["valid_min"])[0])
    if "valid_max" in attrs:
        bad |= a > np.float32(np.ravel(attrs["valid_max"])[0])
    a[bad] = np.nan
    return a


def _attr_str(dset, key: str) -> str | None:
    v = dset.attrs.get(key)
    if v is None:
        return None
    v = np.ravel(v)[0] if isinstance(v, np.ndarray) else v
    return v.decode() if isinstance(v, bytes) else str(v)


def smap_granule_window(path: str, storage_options: Mapping | None = None,
                        orbit: Literal["am", "pm"] = "am") -> GridWindow:
    """The EASE2 window (M36 or M09) that a SMAP L3 granule's arrays cover.

    Raises
    ------
    casm_cloud.schema.SchemaError
        If the group is missing, or the cells do not form a block of an
        EASE2 grid.
    """
    group, suf = GROUPS[orbit]
    with _h5(path, storage_options) as f:
        if group not in f:
            raise schema.SchemaError(f"{path}: no group {group!r} (not a SMAP L3 granule?)")
        g = f[group]
        shape = g[f"latitude{suf}"].shape
        if shape in _NATIVE:
            name = _NATIVE[shape]
            return EASE2Grid(name).subwindow(slice(0, shape[0]), slice(0, shape[1]))
        if f"EASE_row_index{suf}" in g and f"EASE_column_index{suf}" in g:
            rows = _read(g[f"EASE_row_index{suf}"])
            cols = _read(g[f"EASE_column_index{suf}"])
            # SPL3SMP_E granules are on M09 (a subset's indices may all fit M36)
            enhanced = "_SM_P_E_" in str(path).rsplit("/", 1)[-1]
            names = ["M09" if enhanced or np.nanmax(rows) >= 406 or np.nanmax(cols) >= 964
                     else "M36"]
            loc = None
        else:
            lat, lon = _read(g[f"latitude{suf}"]), _read(g[f"longitude{suf}"])
            names, loc = ["M36", "M09"], (lat, lon)
    for name in names:
        grid = EASE2Grid(name)
        if loc is not None:
            ok = np.isfinite(loc[0]) & np.isfinite(loc[1])
            try:
                rows = np.full(shape, np.nan)
                cols = np.full(shape, np.nan)
                rows[ok], cols[ok] = grid.to_rowcol(loc[0][ok], loc[1][ok])
            except GridError:
                continue
        i, j = np.indices(shape)
        dr, dc = rows - i, cols - j
        ok = np.isfinite(dr) & np.isfinite(dc)
        if ok.any() and np.ptp(dr[ok]) == 0 and np.ptp(dc[ok]) == 0:
            r0, c0 = int(dr[ok][0]), int(dc[ok][0])
            try:
                return GridWindow(name, slice(r0, r0 + shape[0]), slice(c0, c0 + shape[1]))
            except GridError:
                continue
    raise schema.SchemaError(f"{path}: the cells of {group} do not form a block of the EASE2 "
                             "M36 or M09 grid")


def _name_date(path: str) -> np.datetime64 | None:
    m = re.search(r"_(\d{8})_", str(path).rsplit("/", 1)[-1])
    return np.datetime64(pd.Timestamp(m.group(1)).date(), "ns") if m else None


def _granule_date(path: str, f) -> np.datetime64:
    m = re.search(r"_(\d{8})_", path.rsplit("/", 1)[-1])
    if m:
        return np.datetime64(pd.Timestamp(m.group(1)).date(), "ns")
    for group, suf in GROUPS.values():
        key = f"tb_time_seconds{suf}"
        if group in f and key in f[group]:
            s = _read(f[group][key])
            if np.isfinite(s).any():
                t = _J2000 + np.timedelta64(int(np.nanmedian(s) * 1000), "ms")
                return t.astype("datetime64[D]").astype("datetime64[ns]")
    raise schema.SchemaError(f"{path}: no date in the file name (…_YYYYMMDD_…) or tb_time_seconds")


def _load_sm(path: str, storage_options, orbits: tuple[str, ...], quality: str,
             rows: slice, cols: slice) -> np.ndarray:
    """Soil moisture of one granule in a block (mean of the chosen orbits)."""
    mask = _QUALITY_BITS[quality]
    layers = []
    with _h5(path, storage_options) as f:
        for orbit in orbits:
            group, suf = GROUPS[orbit]
            g = f[group]
            sm = _read(g[f"soil_moisture{suf}"])[rows, cols]
            if mask:
                flag = g[f"retrieval_qual_flag{suf}"][()][rows, cols].astype(np.int64)
                sm[(flag & mask) != 0] = np.nan
            layers.append(sm)
    if len(layers) == 1:
        return layers[0]
    stack = np.stack(layers)
    with np.errstate(invalid="ignore"):
        n = np.isfinite(stack).sum(0)
        return np.where(n > 0, np.nansum(stack, 0) / np.maximum(n, 1), np.nan).astype(np.float32)


def open_smap_l3(urlpath, *, storage_options: Mapping | None = None,
                 orbit: Literal["am", "pm", "both"] = "am",
                 quality: Literal["recommended", "succeeded", "all"] = "recommended",
                 grid: str | None = None, region: str | None = None,
                 lat: Sequence[float] | None = None, lon: Sequence[float] | None = None,
                 start: str | None = None, end: str | None = None,
                 window: GridWindow | None = None) -> xr.Dataset:
    """SMAP L3 daily soil moisture granules as a canonical ``smap`` dataset.

    Parameters
    ----------
    urlpath : str or list of str
        Granule file(s), a glob, or fsspec URL(s) (one granule per day).
    storage_options : mapping, optional
        fsspec options (NASA Earthdata credentials come from ``~/.netrc`` or
        the environment, never from a catalog).
    orbit : {"am", "pm", "both"}
        06:00 descending, 18:00 ascending, or the mean of both where valid.
    quality : {"recommended", "succeeded", "all"}
        Keep values with recommended quality (flag bit 0 clear), any
        successful retrieval (bit 2 clear), or every non-fill value.
    grid : str, optional
        Target EASE2 grid; default the granules' own (M36 or M09).  Another
        grid is reached by bilinear regridding.
    region, lat, lon
        Target window: a named region or a lat/lon box; default the whole
        area the granules cover (native grid only).
    start, end : str, optional
        First and last day kept.  Granules are chosen by the date in their
        name before any is opened; ``{date:%Y.%m.%d}`` in ``urlpath`` names
        the per-day folders of the period only (an archive over HTTPS).
    window : GridWindow, optional
        The target window itself (instead of ``grid``/``region``/``lat``/``lon``).

    Returns
    -------
    xarray.Dataset
        ``sm`` (time, y, x) in m3 m-3, granules read 32 to a dask task (``FILES_PER_TASK``).

    Raises
    ------
    casm_cloud.catalog.MissingFilesError
        (a ``SourceError`` and ``FileNotFoundError``) If no granule matches; a
        ``SourceError`` for a ``{date:…}`` template without a period.
    casm_cloud.schema.SchemaError
        A missing group or variable, wrong units, granules on different
        blocks, two granules of one day, or a window outside the granules.
    """
    if orbit not in ("am", "pm", "both"):
        raise ValueError(f"orbit {orbit!r}: expected 'am', 'pm' or 'both'")
    if quality not in _QUALITY_BITS:
        raise ValueError(f"quality {quality!r}: expected one of {sorted(_QUALITY_BITS)}")
    orbits = ("am", "pm") if orbit == "both" else (orbit,)
    paths = expand_paths(expand_date_template(urlpath, start, end), storage_options)
    paths = filter_paths_by_date(paths, _name_date, start, end)
    if not paths:
        raise source_error(f"no SMAP granule of {start}..{end} in {urlpath}", missing=True)
    if window is not None:
        grid, region, lat, lon = window.name, None, None, None
    src = smap_granule_window(paths[0], storage_options, orbits[0])
    dates = []
    for p in paths:
        with _h5(p, storage_options) as f:
            for o in orbits:
                group, suf = GROUPS[o]
                for key in (f"soil_moisture{suf}", f"retrieval_qual_flag{suf}"):
                    if group not in f or key not in f[group]:
                        raise schema.SchemaError(f"{p}: missing variable {group}/{key}")
                    if f[group][key].shape != src.shape:
                        raise schema.SchemaError(
                            f"{p}: {group}/{key} has shape {f[group][key].shape}; the first "
                            f"granule's arrays are {src.shape}")
                check_units(xr.DataArray(name=f"soil_moisture{suf}", attrs={
                    "units": _attr_str(f[group][f"soil_moisture{suf}"], "units")}), "m3 m-3", p)
            dates.append(_granule_date(p, f))
    order = np.argsort(np.array(dates), kind="stable")
    paths = [paths[i] for i in order]
    dates = [dates[i] for i in order]

    if grid is None or grid == src.name:
        if window is not None:
            pass
        elif region is None and lat is None and lon is None:
            window = src
        else:
            window = target_window(src.name, region, lat, lon)
        block = window
    else:
        window = target_window(grid, region, lat, lon, window=window)
        block = src  # regridded below
    r0 = block.row_slice.start - src.row_slice.start
    c0 = block.col_slice.start - src.col_slice.start
    if r0 < 0 or c0 < 0 or r0 + block.shape[0] > src.shape[0] or c0 + block.shape[1] > src.shape[1]:
        raise schema.SchemaError(f"{paths[0]}: the granules cover {src!r}, not {block!r}")
    rows, cols = slice(r0, r0 + block.shape[0]), slice(c0, c0 + block.shape[1])
    so = dict(storage_options or {})
    stack = stacked_reads(_load_sm, [(p, so, orbits, quality, rows, cols) for p in paths],
                          block.shape)
    ds = xr.Dataset({"sm": (("time", "y", "x"), stack)},
                    coords={"time": np.array(dates, dtype="datetime64[ns]"), **block.coords()},
                    attrs=block.identity())
    ds = time_slice(ds, start, end)
    if block != window:
        from casm_cloud.regrid import regrid_to_window

        ds = regrid_to_window(ds, window)
    return finish(ds, "smap", window, {"source": f"SMAP L3 ({orbit}, quality={quality})"})
