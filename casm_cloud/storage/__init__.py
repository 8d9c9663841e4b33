"""Storage: fsspec URLs + ``storage_options`` → Zarr stores, written safely.

One small concept (after pangeo-forge-recipes' ``FSSpecTarget``): a store is
named by a URL (a local path, ``gs://…``, ``s3://…``, ``memory://…``) plus the
``storage_options`` fsspec needs to reach it.  Credentials live only in
``storage_options`` or the environment; they are never written into stores,
attributes or messages.

Writes follow one protocol (after xarray-beam):

1. ``write_template(template, url)`` writes metadata and coordinates once;
   the data variables are lazily backed by dask and are not computed.
2. ``write_region(part, url, region)`` writes one region per chunk; any
   chunk may be written twice with the same bits.
3. ``ChunkRecord`` records which chunks are finished, one small object per
   chunk, so a killed run resumes where it stopped.
4. ``mark_complete(url, config_hash)`` sets the ``casm_complete`` attribute
   last and consolidates the metadata (a plain ``xr.open_zarr`` opens a
   finished store without a warning); a store without it is unfinished and is
   never taken as a result.

This package is the only code that calls ``to_zarr``: a whole small dataset
goes through :func:`write_dataset`, a lazy one template-first through
:func:`write_template` and :func:`region_writes` (or :func:`write_region`
per chunk), and the time axis grows only through :func:`grow_time` (used by
:func:`append_time` and by inference's store); a store in a provider's
layout, outside this protocol (the simulator's ARCO-ERA5), is written as
given by :func:`write_plain_zarr`.  See ``docs/architecture.md`` ("Storage").

A store's server failing (a refused or dropped connection, a timeout, a
server error after the client's retries, a full disk) while this package, or
Zarr through a store it opened (:func:`zarr_store`, also in dask workers),
reads or writes raises :class:`~casm_cloud.errors.StoreUnreachableError`
naming the URL; the write it interrupted is not marked complete.

Its modules, one concept each: :mod:`~casm_cloud.storage.files` (URLs, file
systems, small objects: markers, recipes, a provider's files' bytes),
:mod:`~casm_cloud.storage.stores` (the Zarr write protocol above, and a store
written as given in a provider's layout), :mod:`~casm_cloud.storage.timeaxis` (a
store's time axis growing), :mod:`~casm_cloud.storage.guard` (a store that cannot
be reached) and :mod:`~casm_cloud.storage.secrets` (which options hold
credentials).  Callers use the names here (``storage.write_dataset``), looked up
on this package.
"""

from __future__ import annotations

from casm_cloud.errors import StoreError, StoreUnreachableError
from casm_cloud.storage.files import (
    check_writable,
    copy_tree,
    exists,
    join,
    read_marker,
    read_text,
    remove,
    url_to_fs,
    write_bytes,
    write_marker,
    write_text,
)
from casm_cloud.storage.guard import (  # noqa: F401  (private names tests and errors use)
    _GuardedStore,
    _is_unreachable,
    _unreachable_message,
    zarr_store,
)
from casm_cloud.storage.secrets import secret_keys
from casm_cloud.storage.stores import (
    COMPLETE_ATTR,
    HASH_ATTR,
    ChunkRecord,
    consolidate,
    mark_complete,
    open_zarr,
    region_writes,
    store_state,
    write_dataset,
    write_plain_zarr,
    write_region,
    write_template,
    zarr_encoding,
    zarr_group,
)
from casm_cloud.storage.timeaxis import append_time, grow_time

__all__ = [
    "StoreError",
    "StoreUnreachableError",
    "join",
    "url_to_fs",
    "exists",
    "remove",
    "copy_tree",
    "zarr_encoding",
    "open_zarr",
    "write_dataset",
    "write_plain_zarr",
    "write_template",
    "write_region",
    "region_writes",
    "ChunkRecord",
    "mark_complete",
    "consolidate",
    "append_time",
    "grow_time",
    "zarr_group",
    "zarr_store",
    "store_state",
    "secret_keys",
    "check_writable",
    "write_bytes",
    "write_text",
    "read_text",
    "write_marker",
    "read_marker",
    "COMPLETE_ATTR",
    "HASH_ATTR",
]
