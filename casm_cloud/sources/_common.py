"""Shared pieces of the adapters: the target window, units, opening files by URL."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import schema
from casm_cloud.grid import EASE2Grid, GridWindow


def target_window(grid: str = "M25", region: str | None = None,
                  lat: Sequence[float] | None = None,
                  lon: Sequence[float] | None = None) -> GridWindow:
    """The EASE2 window an adapter returns: a named region or a lat/lon box.

    Raises
    ------
    ValueError
        If both or neither of ``region`` and ``lat``/``lon`` are given.
    """
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
           ) -> xr.Dataset:
    """Canonical attributes, grid identity, float32, ``crs``; then validate."""
    out = ds.copy()
    for name in list(out.data_vars):
        if np.issubdtype(out[name].dtype, np.floating) and out[name].dtype != np.float32:
            out[name] = out[name].astype(np.float32)
    out = schema.apply_attrs(out, kind)
    if "crs" not in out.coords:
        out = out.assign_coords(crs=xr.DataArray(np.int32(0), attrs=window.crs_attrs()))
    out.attrs = {**dict(attrs or {}), **window.identity()}
    return schema.validate(out, kind, grid=window)


def local_file(urlpath: str, storage_options: Mapping | None = None) -> str:
    """A local path for readers that need one (HDF5 via h5py, GRIB via eccodes).

    Local paths are returned unchanged; remote URLs are fetched once into
    fsspec's ``simplecache`` (credentials stay in ``storage_options``).
    """
    import fsspec

    u = str(urlpath)
    if "://" not in u or u.startswith("file://"):
        return u[len("file://"):] if u.startswith("file://") else u
    proto = u.split("://", 1)[0]
    return fsspec.open_local(f"simplecache::{u}", **{proto: dict(storage_options or {})})


def expand_paths(urlpath, storage_options: Mapping | None = None) -> list[str]:
    """A list of files from a path, a glob or a list of them (sorted)."""
    import fsspec

    paths = [urlpath] if isinstance(urlpath, str) else list(urlpath)
    out: list[str] = []
    for p in paths:
        if any(c in str(p) for c in "*?["):
            fs, _, found = fsspec.get_fs_token_paths(str(p), storage_options=dict(storage_options or {}))
            if not found:
                raise FileNotFoundError(f"no file matches {p}")
            proto = str(p).split("://", 1)[0] + "://" if "://" in str(p) else ""
            out += [proto + f if proto and not f.startswith(proto) else f for f in sorted(found)]
        else:
            out.append(str(p))
    return out
