"""AMSR-E (NSIDC-0301, EASE-Grid v1) and AMSR2 / CETB (NSIDC-0630, EASE-Grid 2.0) TB.

**AMSR-E, NSIDC-0301** ("AMSR-E/Aqua Daily EASE-Grid Brightness
Temperatures", NSIDC user guide): one flat binary file per day, channel and
half-orbit on the global EASE-Grid v1 25 km "ML" grid (1383 columns × 586
rows, 25 067.525 m cells, EPSG:3410), named
``ID2r<n>-AMSRE-ML<YYYY><DDD><A|D>.v03.<FF><P>`` with ``FF`` in 06, 10, 18,
23, 36, 89 and ``P`` in H, V; little-endian unsigned 2-byte integers, row
major from the north, in tenths of kelvin, 0 meaning no data.  The adapter
also opens a Zarr/netCDF store already on that grid (dims ``time, row, col``,
variables named ``tb_<FF><p>``, units K), which is what the simulator writes
with ``amsre_ease1=True``.  Either way the fields are regridded bilinearly to
the EASE2 window (``casm_cloud.regrid``).

**AMSR2, CETB NSIDC-0630** ("MEaSUREs Calibrated Enhanced-Resolution Passive
Microwave Daily EASE-Grid 2.0 Brightness Temperature ESDR", product user
guide v1-v2): one netCDF-4 file per day, channel, pass and grid, named like
``NSIDC0630_GRD_EASE2_T25km_GCOMW1_AMSR2_<pass>_<channel>_<YYYYMMDD>_v<ver>.nc``
(``GRD`` the 25 km drop-in grid ``T25km`` = EASE2 M25), variable ``TB``
(time, y, x) packed uint16 with ``scale_factor`` 0.01 K and ``_FillValue`` 0,
coordinates ``x``/``y`` in EPSG:6933 metres, plus ``TB_num_samples``.  Cells
are placed by matching ``x``/``y`` to the M25 cell centres.

Channel names are mapped to the canonical ``tb_<FF><p>`` by frequency
(nearest of 6.925, 10.65, 18.7, 23.8, 36.5, 89.0 GHz within 0.3 GHz), so
AMSR2's 7.3 GHz channels are left out.  No real AMSR file was available to
the tests; they write files in these layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import schema
from casm_cloud.grid import EASE2Grid, GridWindow
from casm_cloud.regrid import EASE1_GLOBAL, regrid_to_window
from casm_cloud.schema import AMSR_CHANNELS
from casm_cloud.sources._common import (
    check_units,
    expand_date_template,
    expand_paths,
    filter_paths_by_date,
    finish,
    h5_attr,
    h5_decode,
    local_file,
    source_error,
    stacked_reads,
    target_window,
    time_slice,
)

__all__ = ["open_amsre_nsidc0301", "open_amsr2_cetb", "channel_name"]

_FREQS = {f"{k[3:5]}": ghz for k, (ghz, _) in AMSR_CHANNELS.items()}  # "06" -> 6.925
_NSIDC0301 = re.compile(r"AMSRE-ML(\d{4})(\d{3})([AD])\.v\d+\.(\d{2})([HV])$")
_CETB = re.compile(r"_([ADME])_(\d{1,2}(?:\.\d+)?)([HV])_(\d{8})_")


def channel_name(freq_ghz: float, pol: str) -> str | None:
    """Canonical ``tb_<FF><p>`` of a channel (None if it is not one of the 12)."""
    best = min(_FREQS, key=lambda k: abs(_FREQS[k] - freq_ghz))
    return f"tb_{best}{pol.lower()}" if abs(_FREQS[best] - freq_ghz) <= 0.3 else None


def _wanted(channels: Sequence[str] | None) -> set[str] | None:
    if channels is None:
        return None
    bad = sorted(set(channels) - set(AMSR_CHANNELS))
    if bad:
        raise schema.SchemaError(f"channels {bad} are not AMSR channels; expected some of "
                                 f"{sorted(AMSR_CHANNELS)}")
    return set(channels)


def _read_flat(path: str, storage_options, rows: slice, cols: slice) -> np.ndarray:
    """TB (K) of the ``rows`` x ``cols`` box of one NSIDC-0301 file: only its rows are read."""
    import os

    g = EASE1_GLOBAL
    local = local_file(path, storage_options)
    size = os.path.getsize(local)
    if size != g["nrows"] * g["ncols"] * 2:
        raise schema.SchemaError(f"{path}: {size // 2} values; an NSIDC-0301 ML file has "
                                 f"{g['nrows']} x {g['ncols']}")
    n = rows.stop - rows.start
    raw = np.fromfile(local, dtype="<u2", count=n * g["ncols"],
                      offset=rows.start * g["ncols"] * 2).reshape(n, g["ncols"])[:, cols]
    tb = raw.astype(np.float32) / np.float32(10.0)
    tb[raw == 0] = np.nan
    return tb


def _flat_box(window: GridWindow, method: str) -> tuple[slice, slice]:
    """The EASE-Grid v1 rows and columns regridding to ``window`` needs."""
    from casm_cloud.regrid import source_box

    g = EASE1_GLOBAL
    grid = xr.Dataset(coords={"row": np.arange(g["nrows"]), "col": np.arange(g["ncols"])})
    box = source_box(grid, window, method=method, name="NSIDC-0301 EASE-Grid v1")
    return box["row"], box["col"]


def _from_flat_files(paths: list[str], storage_options, orbit: str, want: set[str] | None,
                     box: tuple[slice, slice]):
    found: dict[str, dict[np.datetime64, str]] = {}
    for p in paths:
        m = _NSIDC0301.search(p.rsplit("/", 1)[-1])
        if not m:
            raise schema.SchemaError(f"{p}: not an NSIDC-0301 file name "
                                     "(ID2r?-AMSRE-ML<YYYY><DDD><A|D>.v03.<FF><P>)")
        year, doy, direction, ff, pol = m.groups()
        if direction != orbit:
            continue
        name = channel_name(_FREQS.get(ff, -1.0), pol)
        if name is None or (want is not None and name not in want):
            continue
        day = np.datetime64(pd.Timestamp(f"{year}-01-01") + pd.Timedelta(days=int(doy) - 1), "ns")
        if day in found.setdefault(name, {}):
            raise schema.SchemaError(f"two files for {name} on {str(day)[:10]}: "
                                     f"{found[name][day]} and {p}")
        found[name][day] = p
    if not found:
        raise source_error(f"no NSIDC-0301 file of orbit {orbit} and the asked channels "
                                f"among {len(paths)} file(s)", missing=True)
    times = np.array(sorted({t for d in found.values() for t in d}), dtype="datetime64[ns]")
    rows, cols = box
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    so = dict(storage_options or {})
    data = {}
    for name, by_day in sorted(found.items()):
        days = sorted(by_day)
        stack = stacked_reads(_read_flat, [(by_day[t], so, rows, cols) for t in days], shape)
        arr = xr.DataArray(stack, dims=("time", "row", "col"),
                           coords={"time": np.array(days, dtype="datetime64[ns]")})
        data[name] = arr.reindex(time=times).assign_attrs(units="K")
    return xr.Dataset(data).assign_coords(row=np.arange(rows.start, rows.stop),
                                          col=np.arange(cols.start, cols.stop))


def _0301_date(path: str) -> np.datetime64 | None:
    m = _NSIDC0301.search(str(path).rsplit("/", 1)[-1])
    if not m:
        return None
    return np.datetime64(pd.Timestamp(f"{m.group(1)}-01-01")
                         + pd.Timedelta(days=int(m.group(2)) - 1), "ns")


def _cetb_date(path: str) -> np.datetime64 | None:
    m = _CETB.search(str(path).rsplit("/", 1)[-1])
    return np.datetime64(pd.Timestamp(m.group(4)).date(), "ns") if m else None


def _is_store(urlpath) -> bool:
    u = str(urlpath).rstrip("/")
    return isinstance(urlpath, str) and (u.endswith(".zarr") or u.endswith(".nc")) and \
        "AMSRE-ML" not in u


def open_amsre_nsidc0301(urlpath, *, storage_options: Mapping | None = None,
                         orbit: Literal["A", "D"] = "D", channels: Sequence[str] | None = None,
                         grid: str = "M25", region: str | None = None,
                         lat: Sequence[float] | None = None, lon: Sequence[float] | None = None,
                         start: str | None = None, end: str | None = None,
                         method: str = "bilinear",
                         window: GridWindow | None = None) -> xr.Dataset:
    """AMSR-E daily TB on EASE-Grid v1 (NSIDC-0301) regridded to an EASE2 window.

    Parameters
    ----------
    urlpath : str or list of str
        NSIDC-0301 flat binary files (or a glob), or one Zarr/netCDF store on
        the EASE-Grid v1 (see the module docstring).
    storage_options : mapping, optional
        fsspec options (Earthdata credentials from ``~/.netrc``/environment).
    orbit : {"A", "D"}
        Ascending (13:30) or descending (01:30) half-orbits (flat files only;
        a store holds one).
    channels : sequence of str, optional
        Canonical names (``tb_10v`` …); default every channel found.
    grid, region, lat, lon
        The target EASE2 window.
    start, end : str, optional
        First and last day kept.
    method : {"bilinear", "nearest"}
        Regridding method.
    window : GridWindow, optional
        The target window itself (instead of ``grid``/``region``/``lat``/``lon``).
        Flat files are chosen by the date in their name before any is read;
        ``{date:…}`` in ``urlpath`` names the folders of the period only.

    Returns
    -------
    xarray.Dataset
        Canonical ``amsre`` dataset (time, y, x), lazy.

    Raises
    ------
    casm_cloud.catalog.MissingFilesError
        (a ``SourceError`` and ``FileNotFoundError``) If nothing matches the orbit and
        channels.
    casm_cloud.schema.SchemaError
        Bad file names or sizes, wrong units, duplicate days.
    """
    want = _wanted(channels)
    if _is_store(urlpath):
        u = str(urlpath)
        if u.rstrip("/").endswith(".zarr"):
            ds = xr.open_zarr(u, storage_options=dict(storage_options or {}) or None, chunks={},
                              consolidated=False)
        else:
            ds = xr.open_dataset(local_file(u, storage_options), chunks={})
        names = [v for v in ds.data_vars if v in AMSR_CHANNELS and (want is None or v in want)]
        if not names:
            raise schema.SchemaError(f"{u}: no AMSR channel variable (have {sorted(ds.data_vars)})")
        for v in names:
            check_units(ds[v], "K", u)
        ds = ds[names]
        where = u
    else:
        if orbit not in ("A", "D"):
            raise ValueError(f"orbit {orbit!r}: expected 'A' or 'D'")
        paths = expand_paths(expand_date_template(urlpath, start, end), storage_options)
        paths = filter_paths_by_date(paths, _0301_date, start, end)
        window = target_window(grid, region, lat, lon, window=window)
        ds = _from_flat_files(paths, storage_options, orbit, want, _flat_box(window, method))
        where = f"NSIDC-0301 ({orbit})"
    window = target_window(grid, region, lat, lon, window=window)
    ds = time_slice(ds, start, end)
    out = regrid_to_window(ds, window, method=method)
    return finish(out, "amsre", window, {"source": f"AMSR-E {where}"})


def _cetb_file(path: str, storage_options, window) -> tuple[str, str, np.datetime64, tuple]:
    """Name fields of one CETB file and the arguments of its read (its metadata checked now)."""
    import h5py

    m = _CETB.search(path.rsplit("/", 1)[-1])
    if not m:
        raise schema.SchemaError(f"{path}: not a CETB file name (…_<pass>_<channel>_<YYYYMMDD>_…)")
    pas, freq, pol, ymd = m.groups()
    with h5py.File(local_file(path, storage_options), "r") as f:
        if "TB" not in f:
            have = sorted(k for k in f if isinstance(f[k], h5py.Dataset))
            raise schema.SchemaError(f"{path}: missing variable 'TB' (have {have})")
        check_units(xr.DataArray(name="TB", attrs={"units": h5_attr(f["TB"], "units")}), "K", path)
        coords = {dim: np.asarray(f[dim][()], dtype=np.float64) for dim in ("y", "x")}
        lead = f["TB"].ndim == 3
    grid = EASE2Grid("M25")
    for dim, centres in (("y", grid.y), ("x", grid.x)):
        v = coords[dim]
        idx = np.rint((v - centres[0]) / (centres[1] - centres[0])).astype(int)
        if np.any(np.abs(centres[np.clip(idx, 0, centres.size - 1)] - v) > 1.0) or \
                idx.min() < 0 or idx.max() >= centres.size:
            raise schema.SchemaError(f"{path}: {dim} values are not EASE2 M25 (T25km) cell centres")
    iy, ix = (_cover_index(coords[d], w, d, window, path) for d, w in (("y", window.y),
                                                                       ("x", window.x)))
    day = np.datetime64(f"{ymd[:4]}-{ymd[4:6]}-{ymd[6:]}", "ns")
    return pas, channel_name(float(freq), pol), day, (path, dict(storage_options or {}), iy,
                                                      ix, lead)


def _cover_index(have: np.ndarray, want: np.ndarray, dim: str, window, path: str) -> np.ndarray:
    """Index into the file's ``dim`` of every window cell (CETB files may be regional cuts)."""
    idx = np.abs(have[None, :] - want[:, None]).argmin(axis=1)
    if np.any(np.abs(have[idx] - want) > 1.0):
        raise source_error(
            f"{path}: the file's {dim} cells ({have.min():.0f}..{have.max():.0f} m) do not "
            f"cover the window {window!r} ({want.min():.0f}..{want.max():.0f} m); expected "
            "a CETB T25km file (global, or a cut holding the window)")
    return idx


def _cetb_read(path: str, storage_options, iy: np.ndarray, ix: np.ndarray, lead: bool
               ) -> np.ndarray:
    """The window's TB (K) of one CETB file: only its rows and columns are read."""
    import h5py

    rows = slice(int(iy.min()), int(iy.max()) + 1)
    cols = slice(int(ix.min()), int(ix.max()) + 1)
    with h5py.File(local_file(path, storage_options), "r") as f:
        tb = h5_decode(f["TB"], (0, rows, cols) if lead else (rows, cols))
    return tb[np.ix_(iy - rows.start, ix - cols.start)].astype(np.float32)


def open_amsr2_cetb(urlpath, *, storage_options: Mapping | None = None,
                    passes: Literal["A", "D", "M", "E"] = "D",
                    channels: Sequence[str] | None = None, region: str | None = None,
                    lat: Sequence[float] | None = None, lon: Sequence[float] | None = None,
                    start: str | None = None, end: str | None = None,
                    window: GridWindow | None = None) -> xr.Dataset:
    """AMSR2 CETB (NSIDC-0630) 25 km GRD files as a canonical ``amsr2`` dataset.

    Parameters
    ----------
    urlpath : str or list of str
        CETB netCDF file(s) or a glob (one per day, channel and pass).
    storage_options : mapping, optional
        fsspec options (Earthdata credentials from ``~/.netrc``/environment).
    passes : {"A", "D", "M", "E"}
        Which pass to keep (ascending/descending, or morning/evening).
    channels : sequence of str, optional
        Canonical names; default every channel found.
    region, lat, lon
        The target window of the M25 grid (the CETB T25km grid).
    start, end : str, optional
        First and last day kept; files are chosen by the date in their name
        before any is opened (``{date:…}`` in ``urlpath``: the period's folders only).
    window : GridWindow, optional
        The target window of the M25 grid itself.

    Returns
    -------
    xarray.Dataset
        Canonical ``amsr2`` dataset (time, y, x) in K, lazy.

    Raises
    ------
    casm_cloud.catalog.SourceError
        If nothing matches the pass and channels (``MissingFilesError``, also a
        ``FileNotFoundError``), or a file does not cover the window.
    casm_cloud.schema.SchemaError
        Bad names, missing ``TB``, wrong units, cells off the grid, duplicates.
    """
    want = _wanted(channels)
    window = target_window("M25", region, lat, lon, window=window)
    if window.name != "M25":
        raise schema.SchemaError(f"{urlpath}: CETB T25km files are on the EASE2 M25 grid; "
                                 f"{window!r} is not")
    by_name: dict[str, dict[np.datetime64, xr.DataArray]] = {}
    paths = expand_paths(expand_date_template(urlpath, start, end), storage_options)
    for p in filter_paths_by_date(paths, _cetb_date, start, end):
        pas, name, day, read = _cetb_file(p, storage_options, window)
        if pas != passes or name is None or (want is not None and name not in want):
            continue
        if day in by_name.setdefault(name, {}):
            raise schema.SchemaError(f"{p}: a second file for {name} on {str(day)[:10]}")
        by_name[name][day] = read
    if not by_name:
        raise source_error(f"no CETB file of pass {passes} and the asked channels in {urlpath}",
                           missing=True)
    times = np.array(sorted({t for d in by_name.values() for t in d}), dtype="datetime64[ns]")
    data = {}
    for name, by_day in sorted(by_name.items()):
        stack = stacked_reads(_cetb_read, [by_day[t] for t in sorted(by_day)], window.shape)
        arr = xr.DataArray(stack, dims=("time", "y", "x"),
                           coords={"time": np.array(sorted(by_day), dtype="datetime64[ns]")})
        data[name] = arr.reindex(time=times).astype(np.float32).assign_attrs(units="K")
    ds = xr.Dataset(data).assign_coords(window.coords())
    ds = time_slice(ds, start, end)
    return finish(ds, "amsr2", window, {"source": f"AMSR2 CETB NSIDC-0630 ({passes})"})
