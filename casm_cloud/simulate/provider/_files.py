"""What every provider writer shares: where files go, time blocks, packed values."""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
import xarray as xr

from casm_cloud import storage

#: Days loaded into memory at a time while files are written (bounded memory).
BLOCK_DAYS = 92


def put(out: str, rel: str, data: bytes, storage_options: Mapping | None) -> None:
    """Write ``data`` to ``<out>/<rel>`` (folders made; :func:`casm_cloud.storage.write_bytes`)."""
    storage.write_bytes(storage.join(out, rel), data, storage_options)


def is_local(out: str, storage_options: Mapping | None) -> bool:
    fs, _ = storage.url_to_fs(out, storage_options)
    return "file" in np.atleast_1d(fs.protocol)


def local_path(out: str, rel: str, storage_options: Mapping | None) -> str:
    """The local path of ``<out>/<rel>``, its folder made (local outputs only)."""
    fs, path = storage.url_to_fs(storage.join(out, rel), storage_options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    return path


def time_blocks(ds: xr.Dataset, days: int = BLOCK_DAYS) -> Iterator[xr.Dataset]:
    """``ds`` in consecutive loaded blocks of ``days`` time steps."""
    n = ds.sizes["time"]
    for i in range(0, n, days):
        yield ds.isel(time=slice(i, min(i + days, n))).load()


def days_of(block: xr.Dataset) -> list[pd.Timestamp]:
    return [pd.Timestamp(t) for t in block["time"].values]


def pack(values: np.ndarray, scale: float, offset: float, fill: int, dtype) -> np.ndarray:
    """``round((v - offset) / scale)`` as ``dtype``; NaN (and values out of range) -> ``fill``."""
    info = np.iinfo(dtype)
    q = np.round((np.asarray(values, np.float64) - offset) / scale)
    bad = ~np.isfinite(q) | (q < info.min) | (q > info.max) | (q == fill)
    return np.where(bad, fill, q).astype(dtype)


def netcdf_bytes(ds: xr.Dataset, encoding: Mapping | None = None) -> bytes:
    """``ds`` as netCDF-4 (HDF5) bytes (xarray's writer: for the few large files).

    Computed in this process: with a dask-distributed client active (a notebook, a
    test's cluster) xarray would otherwise take a distributed lock named after the
    in-memory target, which the scheduler does not know."""
    import dask

    with dask.config.set(scheduler="synchronous"):
        return bytes(ds.to_netcdf(engine="h5netcdf", encoding=dict(encoding or {})))


def netcdf4_bytes(dims: Mapping[str, tuple], variables: Mapping[str, tuple],
                  attrs: Mapping | None = None) -> bytes:
    """A small netCDF-4 file written with h5py (ten times faster than xarray's writer).

    Parameters
    ----------
    dims : mapping
        Dimension name -> (coordinate values, attributes): HDF5 dimension scales.
    variables : mapping
        Name -> (dims, stored array, attributes); ``_FillValue`` in the
        attributes is also the dataset's fill value.  Values are stored as
        given (pack them first, :func:`pack`).
    attrs : mapping, optional
        Global attributes.
    """
    def build(f):
        scales = {}
        for name, (values, a) in dims.items():
            d = f.create_dataset(name, data=np.asarray(values))
            d.make_scale(name)
            _set_attrs(d, a)
            scales[name] = d
        for name, (vdims, values, a) in variables.items():
            values = np.asarray(values)
            fill = a.get("_FillValue")
            d = f.create_dataset(name, data=values, fillvalue=None if fill is None else
                                 np.asarray(fill, values.dtype))
            _set_attrs(d, a)
            for i, dim in enumerate(vdims):
                d.dims[i].attach_scale(scales[dim])
        _set_attrs(f, attrs or {})

    return h5_bytes(build)


def _set_attrs(obj, attrs: Mapping) -> None:
    for k, v in attrs.items():
        obj.attrs[k] = np.bytes_(v.encode()) if isinstance(v, str) else v


def h5_bytes(build) -> bytes:
    """Bytes of an HDF5 file that ``build(h5py.File)`` fills."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        build(f)
    return buf.getvalue()


def ecmwf_units(units: str) -> str:
    """Canonical units in ECMWF's spelling: ``J m-2`` -> ``J m**-2``."""
    import re

    return re.sub(r"([A-Za-z])(-?\d+)", r"\1**\2", units)
