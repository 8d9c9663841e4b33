"""Adapter for Zarr stores already in canonical form.

The simulator and every pipeline stage write canonical stores
(``casm_cloud.storage``); this adapter opens one lazily and checks it
against the schema, so a catalog can point at simulated and real inputs
alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import xarray as xr

from casm_cloud import schema, storage

__all__ = ["open_canonical_zarr"]


def open_canonical_zarr(urlpath: str, *, storage_options: Mapping | None = None,
                        kind: str, variables: Sequence[str] | None = None,
                        require_complete: bool = False) -> xr.Dataset:
    """Open a canonical Zarr store lazily and validate it.

    Parameters
    ----------
    urlpath : str
        Local path or fsspec URL of the store.
    storage_options : mapping, optional
        fsspec options (credentials from here or the environment only).
    kind : str
        Canonical kind (a key of :data:`casm_cloud.schema.KINDS`).
    variables : sequence of str, optional
        Keep only these data variables.
    require_complete : bool
        Refuse stores without the completion attribute (unfinished writes).

    Returns
    -------
    xarray.Dataset
        Dask-backed, on-disk chunks, validated as ``kind``.

    Raises
    ------
    casm_cloud.storage.StoreError
        If there is no store at ``urlpath`` (or it is unfinished and
        ``require_complete``).
    casm_cloud.schema.SchemaError
        If the store is not a canonical ``kind`` dataset, or a requested
        variable is absent.
    """
    ds = storage.open_zarr(urlpath, storage_options, require_complete=require_complete)
    if variables is not None:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise schema.SchemaError(
                f"{urlpath}: variables {missing} are not in the store (have {sorted(ds.data_vars)})"
            )
        ds = ds[list(variables)]
    return schema.validate(ds, kind)
