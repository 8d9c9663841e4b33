"""SMOS L3 brightness temperatures: CATDS-PDC L3TB daily netCDF on EASE2 25 km.

Layout read here (CATDS-PDC L3TB product description, CATDS "MIR_CDF3TA" /
"MIR_CDF3TD" products; Al Bitar et al. 2017, ESSD 9, 293-315): one file per
UTC day and half-orbit (``SM_RE07_MIR_CDF3TA_YYYYMMDDT000000_YYYYMMDDT235959_
…_.DBL.nc``; ``TA`` ascending 06:00, ``TD`` descending), dimensions
``inc`` (14 incidence-angle classes: 2.5° to 62.5° by 5°, plus 40°), ``lat``
(584, increasing south to north) and ``lon`` (1388) of the EASE2 25 km grid,
and per angle class the packed int16 variables ``BT_H``, ``BT_V``, ``BT_3``,
``BT_4`` (K, ``scale_factor``/``add_offset``, ``_FillValue`` -32768),
``Pixel_Radiometric_Accuracy_H``/``_V`` (K), ``Nviews`` (views averaged) and
``Nb_RFI_Flags`` (views flagged as RFI-contaminated), among others.

The adapter picks the angle class nearest ``angle`` (42.5° for CASM),
removes values whose RFI-flagged share of views exceeds ``max_rfi_fraction``
or whose radiometric accuracy is worse than ``max_accuracy``, flips latitude
to the canonical north-to-south order and cuts the window.  Cells are placed
by matching the file's latitudes/longitudes to the M25 cell centres (checked
against CATDS's own grid file in ``shared/data/real/smos``), so regional
cuts of the global files work too.

No real L3TB file was available to the tests; they write files in this
layout on the real CATDS grid coordinates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import xarray as xr

from casm_cloud import schema
from casm_cloud.grid import EASE2Grid, GridWindow
from casm_cloud.sources._common import (
    check_units,
    expand_date_template,
    expand_paths,
    filter_paths_by_date,
    finish,
    h5_attr,
    h5_decode,
    h5_dims,
    local_file,
    source_error,
    stacked_reads,
    target_window,
    time_slice,
)

__all__ = ["open_smos_l3tb", "ANGLE_CLASSES"]

#: The 14 incidence-angle classes of the L3TB product (degrees).
ANGLE_CLASSES = (2.5, 7.5, 12.5, 17.5, 22.5, 27.5, 32.5, 37.5, 40.0, 42.5, 47.5, 52.5, 57.5, 62.5)
_NAME = re.compile(r"MIR_CDF3T([AD])_(\d{8})T\d{6}_")
_TOL_DEG = 1e-3  # file lat/lon vs EASE2 cell centres (float32 storage ~1e-5 deg)


def _name_date(path: str) -> np.datetime64 | None:
    m = _NAME.search(str(path).rsplit("/", 1)[-1])
    d = m.group(2) if m else None
    return np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}", "ns") if d else None


def _index_of(values: np.ndarray, centres: np.ndarray, what: str, path: str) -> np.ndarray:
    """Index into ``centres`` of each of ``values`` (must match within tolerance)."""
    order = np.argsort(centres)
    pos = np.clip(np.searchsorted(centres[order], values), 1, len(centres) - 1)
    lo, hi = order[pos - 1], order[pos]
    idx = np.where(np.abs(centres[lo] - values) <= np.abs(centres[hi] - values), lo, hi)
    off = np.abs(centres[idx] - values)
    if np.any(off > _TOL_DEG):
        raise schema.SchemaError(
            f"{path}: {what} values are not EASE2 M25 cell centres (off by up to "
            f"{off.max():.3g} deg); expected a CATDS L3 file on the 25 km EASE2 grid")
    return idx


def _open_day(path: str, storage_options, angle: float, max_rfi_fraction: float | None,
              max_accuracy: float | None) -> tuple[tuple, GridWindow, str, np.datetime64]:
    """One file's metadata checked: (the arguments of its read, its block, orbit, day)."""
    m = _NAME.search(path.rsplit("/", 1)[-1])
    if not m:
        raise schema.SchemaError(
            f"{path}: file name does not follow SM_*_MIR_CDF3T[A|D]_YYYYMMDDThhmmss_… (CATDS L3TB)")
    orbit, day = m.group(1), np.datetime64(f"{m.group(2)[:4]}-{m.group(2)[4:6]}-{m.group(2)[6:]}",
                                           "ns")
    import h5py

    with h5py.File(local_file(path, storage_options), "r") as f:
        have = sorted(k for k in f if isinstance(f[k], h5py.Dataset))
        for v in ("BT_H", "BT_V"):
            if v not in f:
                raise schema.SchemaError(f"{path}: missing variable {v!r} (have {have})")
            check_units(xr.DataArray(name=v, attrs={"units": h5_attr(f[v], "units")}), "K", path)
            if h5_dims(f[v]) != ("inc", "lat", "lon"):
                raise schema.SchemaError(f"{path}: {v} has dimensions {h5_dims(f[v])}; expected "
                                         "('inc', 'lat', 'lon')")
        needed = [*(("Nviews", "Nb_RFI_Flags") if max_rfi_fraction is not None else ()),
                  *((f"Pixel_Radiometric_Accuracy_{p}" for p in "HV")
                    if max_accuracy is not None else ())]
        for v in needed:
            if v not in f:
                why = "the RFI filter (pass max_rfi_fraction=None to skip it)" \
                    if v.startswith("N") else "max_accuracy"
                raise schema.SchemaError(f"{path}: missing variable {v!r} needed for {why}")
        inc = np.asarray(f["inc"][()], dtype=np.float64)
        lat, lon = (np.asarray(f[n][()], np.float64) for n in ("lat", "lon"))
    k = int(np.argmin(np.abs(inc - angle)))
    if abs(inc[k] - angle) > 0.01:
        raise schema.SchemaError(f"{path}: no incidence-angle class {angle}° (classes {inc.tolist()})")
    grid = EASE2Grid("M25")
    rows = _index_of(lat, grid.lat, "lat", path)
    cols = _index_of(lon, grid.lon, "lon", path)
    if np.any(np.diff(np.sort(rows)) != 1) or np.any(np.diff(np.sort(cols)) != 1):
        raise schema.SchemaError(f"{path}: lat/lon do not form a block of the EASE2 M25 grid")
    block = GridWindow("M25", slice(int(rows.min()), int(rows.max()) + 1),
                       slice(int(cols.min()), int(cols.max()) + 1))
    # file order -> canonical order (rows north to south, columns west to east)
    read = (path, dict(storage_options or {}), k, max_rfi_fraction, max_accuracy,
            np.argsort(rows), np.argsort(cols))
    return read, block, orbit, day


def _read_day(path: str, storage_options, k: int, max_rfi_fraction, max_accuracy,
              row_order: np.ndarray, col_order: np.ndarray) -> np.ndarray:
    """(tb_h, tb_v) of angle class ``k`` of one file, filtered, in canonical cell order."""
    import h5py

    with h5py.File(local_file(path, storage_options), "r") as f:
        keep = None
        if max_rfi_fraction is not None:
            views = np.nan_to_num(h5_decode(f["Nviews"], k))
            keep = np.nan_to_num(h5_decode(f["Nb_RFI_Flags"], k)) <= max_rfi_fraction * views
        out = []
        for pol in ("H", "V"):
            tb = h5_decode(f[f"BT_{pol}"], k)
            ok = keep
            if max_accuracy is not None:
                good = h5_decode(f[f"Pixel_Radiometric_Accuracy_{pol}"], k) <= max_accuracy
                ok = good if ok is None else ok & good
            if ok is not None:
                tb = np.where(ok, tb, np.nan)
            out.append(tb[np.ix_(row_order, col_order)])
    return np.stack(out).astype(np.float32)


def open_smos_l3tb(urlpath, *, storage_options: Mapping | None = None, angle: float = 42.5,
                   orbit: Literal["A", "D"] | None = None,
                   max_rfi_fraction: float | None = 0.0, max_accuracy: float | None = None,
                   grid: str = "M25", region: str | None = None,
                   lat: Sequence[float] | None = None, lon: Sequence[float] | None = None,
                   start: str | None = None, end: str | None = None,
                   window: GridWindow | None = None) -> xr.Dataset:
    """CATDS L3TB daily files as a canonical ``smos`` dataset (``tb_h``, ``tb_v``).

    Parameters
    ----------
    urlpath : str or list of str
        ``.DBL.nc`` file(s), glob, or fsspec URL(s), one per day and orbit.
    storage_options : mapping, optional
        fsspec options (CATDS FTP/HTTPS credentials from the environment).
    angle : float
        Incidence-angle class in degrees (42.5 for CASM).
    orbit : {"A", "D"}, optional
        Keep only ascending or descending files; default: all, but one orbit
        per day is required (the names say which).
    max_rfi_fraction : float or None
        Largest share of RFI-flagged views (``Nb_RFI_Flags / Nviews``)
        accepted; 0 keeps only values with no flagged view; None: no filter.
    max_accuracy : float or None
        Largest ``Pixel_Radiometric_Accuracy`` (K) accepted; None: no filter.
    grid, region, lat, lon
        Target window; default the whole block the files cover.  A grid
        other than M25 is reached by bilinear regridding.
    start, end : str, optional
        First and last day kept.  Files are chosen by the date in their name
        before any is opened; ``{date:%Y/%j}`` (or any ``{date:…}`` format) in
        ``urlpath`` names the folders of the period only.
    window : GridWindow, optional
        The target window itself (instead of ``grid``/``region``/``lat``/``lon``).

    Returns
    -------
    xarray.Dataset
        ``tb_h``, ``tb_v`` (time, y, x) in K, files read 32 to a dask task (``FILES_PER_TASK``).

    Raises
    ------
    casm_cloud.catalog.MissingFilesError
        (a ``SourceError`` and ``FileNotFoundError``) If no file matches.
    casm_cloud.schema.SchemaError
        A name that is not an L3TB file name, a missing variable or angle
        class, wrong units, cells off the EASE2 grid, files on different
        blocks, or two files for one day.
    """
    paths = expand_paths(expand_date_template(urlpath, start, end), storage_options)
    paths = filter_paths_by_date(paths, _name_date, start, end)
    if not paths:
        raise source_error(f"no L3TB file of {start}..{end} in {urlpath}", missing=True)
    if window is not None:
        grid, region, lat, lon = window.name, None, None, None
    if orbit is not None:
        paths = [p for p in paths if (_NAME.search(p.rsplit("/", 1)[-1]) or [None, None])[1] == orbit]
        if not paths:
            raise source_error(f"no {orbit} (orbit) file among {urlpath}; expected "
                               f"SM_*_MIR_CDF3T{orbit}_*.DBL.nc files", missing=True)
    days = [_open_day(p, storage_options, angle, max_rfi_fraction, max_accuracy) for p in paths]
    blocks = {b for _, b, _, _ in days}
    if len(blocks) > 1:
        raise schema.SchemaError(f"{urlpath}: files cover different blocks of the grid {blocks}")
    block = blocks.pop()
    days.sort(key=lambda d: d[3])
    both = stacked_reads(_read_day, [d[0] for d in days], (2, *block.shape))
    ds = xr.Dataset({"tb_h": (("time", "y", "x"), both[:, 0]),
                     "tb_v": (("time", "y", "x"), both[:, 1])})
    ds = ds.assign_coords(time=np.array([d[3] for d in days], dtype="datetime64[ns]"),
                          **block.coords()).assign_attrs(block.identity())
    ds = time_slice(ds, start, end)
    if window is not None:
        pass
    elif region is None and lat is None and lon is None and grid == "M25":
        window = block
    else:
        window = target_window(grid, region, lat, lon)
    if grid == "M25":
        r0, c0 = window.row_slice.start - block.row_slice.start, window.col_slice.start - block.col_slice.start
        if r0 < 0 or c0 < 0 or r0 + window.shape[0] > block.shape[0] or \
                c0 + window.shape[1] > block.shape[1]:
            raise schema.SchemaError(f"{paths[0]}: the files cover {block!r}, not {window!r}")
        ds = ds.isel(y=slice(r0, r0 + window.shape[0]), x=slice(c0, c0 + window.shape[1]))
    else:
        from casm_cloud.regrid import regrid_to_window

        ds = regrid_to_window(ds, window)
    orbits = "".join(sorted({d[2] for d in days}))
    return finish(ds, "smos", window, {"source": f"SMOS CATDS L3TB ({orbits}, {angle} deg)"})
