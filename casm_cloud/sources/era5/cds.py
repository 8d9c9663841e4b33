"""ERA5 from CDS downloads: netCDF-3, netCDF-4 or GRIB files, told by their magic bytes
(:mod:`casm_cloud.sources.era5`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import xarray as xr

from casm_cloud.sources._common import expand_paths, local_file
from casm_cloud.sources.era5.fields import era5_dataset

__all__ = ["open_era5_cds"]


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
        As for :func:`casm_cloud.sources.era5.arco.open_era5_arco`.

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
    return era5_dataset(ds, where, variables=variables, start=start, end=end, grid=grid,
                        region=region, lat=lat, lon=lon, daily=daily, min_count=min_count,
                        method=method, window=window)
