"""Shared pieces of the adapters: the target window, units, opening files by URL."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import credentials, schema
from casm_cloud.grid import EASE2Grid, GridWindow


def target_window(grid: str = "M25", region: str | None = None,
                  lat: Sequence[float] | None = None,
                  lon: Sequence[float] | None = None,
                  window: GridWindow | None = None) -> GridWindow:
    """The EASE2 window an adapter returns: a named region or a lat/lon box (or ``window``).

    Raises
    ------
    ValueError
        If both or neither of ``region`` and ``lat``/``lon`` are given.
    """
    if window is not None:
        return window
    g = EASE2Grid(grid)
    if region is not None and (lat is not None or lon is not None):
        raise ValueError("give either region= or lat=/lon=, not both")
    if region is not None:
        return g.window_by_name(region)
    if lat is None or lon is None:
        raise ValueError("the target window is missing: give region= (e.g. 'demo') or "
                         "lat=(south, north) and lon=(west, east)")
    return g.window(lat=tuple(lat), lon=tuple(lon))


def time_slice(ds: xr.Dataset, start=None, end=None, dim: str = "time") -> xr.Dataset:
    """Select ``start <= time <= end`` (dates inclusive of their whole day)."""
    if start is None and end is None:
        return ds
    lo = pd.Timestamp(start) if start is not None else None
    hi = pd.Timestamp(end) if end is not None else None
    if hi is not None and hi == hi.normalize():
        hi = hi + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    return ds.sel({dim: slice(lo, hi)})


def norm_units(u) -> str | None:
    """ECMWF/HDF unit spellings to the canonical ones: ``m**3 m**-3`` -> ``m3 m-3``."""
    if u is None:
        return None
    s = str(u).strip().replace("**", "").replace("^", "")
    return {"kelvin": "K", "kelvins": "K", "cm3/cm3": "m3 m-3", "m3/m3": "m3 m-3",
            "cm3 cm-3": "m3 m-3"}.get(s.lower(), s)


def check_units(da: xr.DataArray, expected: str, where: str) -> None:
    """Raise ``SchemaError`` unless ``da``'s units are ``expected`` (after spelling)."""
    got = norm_units(da.attrs.get("units"))
    if got != expected:
        raise schema.SchemaError(
            f"{where}: variable {da.name!r} has units {da.attrs.get('units')!r}; expected "
            f"{expected!r}"
        )


def finish(ds: xr.Dataset, kind: str, window: GridWindow, attrs: Mapping | None = None,
           *, values: str = "auto") -> xr.Dataset:
    """Canonical attributes, grid identity, float32, ``crs``; then validate (``values`` as
    :func:`casm_cloud.schema.validate`'s)."""
    out = ds.copy()
    for name in list(out.data_vars):
        if np.issubdtype(out[name].dtype, np.floating) and out[name].dtype != np.float32:
            out[name] = out[name].astype(np.float32)
    out = schema.apply_attrs(out, kind)
    if "crs" not in out.coords:
        out = out.assign_coords(crs=xr.DataArray(np.int32(0), attrs=window.crs_attrs()))
    out.attrs = {**dict(attrs or {}), **window.identity()}
    return schema.validate(out, kind, grid=window, values=values)


def source_error(message: str, *, missing: bool = False) -> Exception:
    """The error an adapter raises for what a source cannot give: a
    :class:`casm_cloud.catalog.SourceError` (``missing``: a
    :class:`~casm_cloud.catalog.MissingFilesError`, also a ``FileNotFoundError``).

    The message names the file or URL and what was expected; :func:`casm_cloud.catalog.
    open_source` adds the entry.
    """
    from casm_cloud.errors import MissingFilesError, SourceError

    return (MissingFilesError if missing else SourceError)(message)


def h5_attr(dset, key: str, default=None):
    """An HDF5 attribute as a Python scalar or string (netCDF-4 attributes read with h5py)."""
    v = dset.attrs.get(key)
    if v is None:
        return default
    v = np.ravel(v)[0] if isinstance(v, np.ndarray) and v.size == 1 else v
    return v.decode() if isinstance(v, bytes) else v


def h5_dims(dset) -> tuple:
    """The netCDF dimension names of an HDF5 dataset (its attached dimension scales)."""
    names = []
    for d in dset.dims:
        names.append(d[0].name.rsplit("/", 1)[-1] if len(d) else d.label or None)
    return tuple(names)


def h5_decode(dset, index=()) -> np.ndarray:
    """``dset[index]`` decoded as netCDF readers do: ``_FillValue``/``missing_value`` to NaN,
    then ``scale_factor`` and ``add_offset`` applied (float64)."""
    raw = np.asarray(dset[index])
    out = raw.astype(np.float64)
    for key in ("_FillValue", "missing_value"):
        fill = h5_attr(dset, key)
        if fill is not None:
            out[raw == np.asarray(fill, raw.dtype)] = np.nan
    out *= float(h5_attr(dset, "scale_factor", 1.0))
    out += float(h5_attr(dset, "add_offset", 0.0))
    return out


#: Daily files read by one dask task (a task per small file would cost more than the read).
FILES_PER_TASK = 32


def stacked_reads(read_one, args: Sequence[tuple], shape: tuple[int, ...],
                  dtype=np.float32):
    """A dask array stacking ``read_one(*a)`` for every ``a`` of ``args`` along a new first
    axis, :data:`FILES_PER_TASK` files per task (per chunk)."""
    import dask
    import dask.array as da

    parts = []
    for i in range(0, len(args), FILES_PER_TASK):
        group = list(args[i:i + FILES_PER_TASK])
        task = dask.delayed(_read_many, pure=True)(read_one, group)
        parts.append(da.from_delayed(task, (len(group), *shape), dtype))
    return da.concatenate(parts)


def _read_many(read_one, group: list[tuple]) -> np.ndarray:
    return np.stack([read_one(*a) for a in group])


def local_file(urlpath: str, storage_options: Mapping | None = None) -> str:
    """A local path for readers that need one (HDF5 via h5py, GRIB via eccodes).

    Local paths are returned unchanged; remote URLs are fetched once into
    fsspec's ``simplecache``, with the entry's ``login`` looked up here, in the process
    that reads (:mod:`casm_cloud.credentials`).
    """
    import fsspec

    u = str(urlpath)
    if "://" not in u or u.startswith("file://"):
        return u[len("file://"):] if u.startswith("file://") else u
    proto = u.split("://", 1)[0]
    with credentials.refusals(u, storage_options):
        return fsspec.open_local(f"simplecache::{u}",
                                 **{proto: credentials.fsspec_options(u, storage_options)})


def expand_paths(urlpath, storage_options: Mapping | None = None) -> list[str]:
    """A list of files from a path, a glob or a list of them (sorted)."""
    import fsspec

    paths = [urlpath] if isinstance(urlpath, str) else list(urlpath)
    out: list[str] = []
    for p in paths:
        if any(c in str(p) for c in "*?["):
            with credentials.refusals(str(p), storage_options):
                fs, _, found = fsspec.get_fs_token_paths(
                    str(p), storage_options=credentials.fsspec_options(str(p), storage_options))
            if not found:
                if len(paths) > 1:  # one day of a date template: the archive has a gap
                    continue
                raise source_error(f"no file matches {p}", missing=True)
            out += [_as_url(str(p), f) for f in sorted(found)]
        else:
            out.append(str(p))
    if not out:
        raise source_error(f"no file matches {paths[0]} (nor any of {len(paths)} patterns)",
                           missing=True)
    return out


def _as_url(pattern: str, found: str) -> str:
    """A path fsspec's glob found, as a URL like ``pattern`` (FTP paths lose their host)."""
    if "://" not in pattern or "://" in found:
        return found
    proto, rest = pattern.split("://", 1)
    if proto in ("ftp", "sftp"):
        return f"{proto}://{rest.split('/', 1)[0]}/{found.lstrip('/')}"
    return f"{proto}://{found}"


# --------------------------------------------------------------------------- push-down
def period_bounds(start=None, end=None) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """``start`` and the last instant of ``end``'s day (dates are inclusive of their day)."""
    lo = pd.Timestamp(start) if start is not None else None
    hi = pd.Timestamp(end) if end is not None else None
    if hi is not None and hi == hi.normalize():
        hi = hi + pd.Timedelta(days=1) - pd.Timedelta(1, "ns")
    return lo, hi


def time_index(times: np.ndarray, start=None, end=None) -> slice:
    """The integer slice of sorted ``times`` within ``[start, end]`` (see :func:`period_bounds`)."""
    lo, hi = period_bounds(start, end)
    t = np.asarray(times).astype("datetime64[ns]")
    i0 = 0 if lo is None else int(np.searchsorted(t, np.datetime64(lo.as_unit("ns")), "left"))
    i1 = t.size if hi is None else int(np.searchsorted(t, np.datetime64(hi.as_unit("ns")),
                                                       "right"))
    return slice(i0, max(i0, i1))


def _store_chunk(ds: xr.Dataset, dim: str) -> int | None:
    for v in ds.variables.values():
        if dim in v.dims:
            pref = v.encoding.get("preferred_chunks") or {}
            if dim in pref:
                return int(pref[dim])
            ch = v.encoding.get("chunks")
            if ch is not None and len(ch) == v.ndim:
                return int(ch[v.dims.index(dim)])
    return None


def _aligned(start: int, n: int, step: int | None) -> tuple[int, ...] | int:
    """Chunks of ``n`` elements from ``start`` whose edges fall on a store's chunk grid."""
    if not step or n == 0:
        return -1
    first = min(n, step - start % step)
    rest = n - first
    return (first, *([step] * (rest // step)), *([rest % step] if rest % step else []))


def select_stored(ds: xr.Dataset, index: Mapping[str, slice] | None = None) -> xr.Dataset:
    """``ds.isel(index)`` of a store opened without dask (``chunks=None``), then dask chunks
    on the store's own chunk grid.

    Selecting first and chunking after keeps the cost of an open in
    proportion to the request: ``xr.open_zarr(store, chunks={})`` builds a
    task for every chunk of the store before any selection
    (docs/architecture.md, "Known traps").  Variables without a stored
    chunking (coordinates) are loaded.
    """
    index = dict(index or {})
    out = ds.isel(index) if index else ds
    chunks = {}
    for dim, n in out.sizes.items():
        sl = index.get(dim, slice(None))
        start = sl.start or 0 if isinstance(sl, slice) else 0
        chunks[dim] = _aligned(int(start), int(n), _store_chunk(ds, dim))
    data = [n for n in out.data_vars]
    return out.chunk({d: c for d, c in chunks.items()}) if data else out


def filter_paths_by_date(paths: Sequence[str], date_of, start=None, end=None) -> list[str]:
    """The paths whose date (``date_of(path)``: a datetime64 or None) lies in ``[start, end]``.

    Paths without a date in their name are kept (the adapter reads it from
    the file).  Files are chosen before any is opened.
    """
    if start is None and end is None:
        return list(paths)
    lo, hi = period_bounds(start, end)
    keep = []
    for p in paths:
        d = date_of(p)
        if d is None:
            keep.append(p)
            continue
        t = pd.Timestamp(d)
        if (lo is None or t >= lo.normalize()) and (hi is None or t <= hi):
            keep.append(p)
    return keep


_DATE = re.compile(r"\{date(?::([^{}]*))?\}")


def expand_date_template(urlpath, start=None, end=None) -> list[str] | str:
    """``{date:%Y.%m.%d}`` placeholders expanded over the days of ``[start, end]``.

    Cloud archives are folders per day: a template names only the days a
    request needs, so listing them costs what the request does, not what the
    archive holds.  Without placeholders ``urlpath`` is returned unchanged.
    """
    paths = [urlpath] if isinstance(urlpath, str) else list(urlpath)
    if not any("{date" in str(p) for p in paths):
        return urlpath
    if start is None or end is None:
        raise source_error(f"{paths[0]}: a URL with {{date:...}} placeholders names one file "
                           "per day, so it needs a period; expected start= and end= (or "
                           "open_source(..., period=(start, end)))")
    days = pd.date_range(pd.Timestamp(start).normalize(), pd.Timestamp(end).normalize(), freq="D")
    out: list[str] = []
    for p in paths:
        seen = set()
        for d in days:
            u = _DATE.sub(lambda m, d=d: format(d, m.group(1) or "%Y-%m-%d"), str(p))
            if u not in seen:
                seen.add(u)
                out.append(u)
    return out
