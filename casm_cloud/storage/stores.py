"""Zarr stores written by the storage protocol: template, regions, chunk record, completion.

See :mod:`casm_cloud.storage` for the protocol; the time axis grows through
:mod:`casm_cloud.storage.timeaxis`.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping

import dask.delayed
import xarray as xr
import zarr
import zarr.storage

from casm_cloud.errors import StoreError, UserError
from casm_cloud.storage.files import exists, join, remove, url_to_fs
from casm_cloud.storage.guard import _reaching, zarr_store

__all__ = ["COMPLETE_ATTR", "HASH_ATTR", "zarr_encoding", "open_zarr", "write_dataset",
           "write_plain_zarr", "write_template", "write_region", "region_writes", "ChunkRecord", "zarr_group",
           "mark_complete", "consolidate", "store_state"]

COMPLETE_ATTR = "casm_complete"
HASH_ATTR = "casm_config_hash"
_RECORD_DIR = "_casm_chunks"


def zarr_encoding(ds: xr.Dataset, *, level: int = 3) -> dict:
    """Zarr 3 encoding: zstd for every data variable (key ``compressors``)."""
    from zarr.codecs import ZstdCodec

    return {name: {"compressors": [ZstdCodec(level=level)]} for name in ds.data_vars}


def open_zarr(url: str, storage_options: Mapping | None = None, *,
              require_complete: bool = False, **kwargs) -> xr.Dataset:
    """Open a Zarr store lazily (dask-backed, on-disk chunks), variables sorted by name.

    Raises
    ------
    StoreError
        If the store does not exist, or ``require_complete`` and it is unfinished.
    """
    if not exists(url, storage_options):
        raise StoreError(f"no Zarr store at {url}")
    kwargs.setdefault("chunks", {})
    kwargs.setdefault("consolidated", False)
    try:
        ds = xr.open_zarr(zarr_store(url, storage_options, read_only=True), **kwargs)
    except UserError:  # the store unreachable (it names the URL)
        raise
    except (ValueError, KeyError, OSError) as err:  # zarr's errors are ValueErrors
        raise StoreError(f"{url} cannot be opened as a Zarr store: "
                         f"{type(err).__name__}: {err}") from err
    # Variables in name order: a store lists them in its backend's order (a local
    # folder's is the file system's), and models and fits take them in order.
    ds = ds[sorted(ds.data_vars)]
    if require_complete and not ds.attrs.get(COMPLETE_ATTR, False):
        raise StoreError(f"Zarr store {url} is unfinished (no {COMPLETE_ATTR} attribute)")
    return ds


def write_dataset(ds: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
                  config_hash: str | None = None) -> None:
    """Replace whatever is at ``url`` with ``ds``, written whole, then mark it complete.

    ``ds`` may be lazy: it is computed by this write, on the active dask
    scheduler.  Encodings ``ds`` carries from where it was read are dropped;
    every data variable gets :func:`zarr_encoding`.  For stores too large to
    write in one go, use :func:`write_template` and :func:`region_writes`.
    """
    remove(url, storage_options)
    ds = ds.copy()
    for v in ds.variables.values():
        v.encoding = {}
    ds.to_zarr(zarr_store(url, storage_options), mode="w", consolidated=False,
               encoding=zarr_encoding(ds), zarr_format=3)
    mark_complete(url, storage_options, config_hash=config_hash)


def write_plain_zarr(ds: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
                     encoding: Mapping | None = None, append_dim: str | None = None,
                     consolidated: bool = False) -> None:
    """Write ``ds`` as it is to a Zarr v3 store outside the protocol (someone else's layout).

    For stores that imitate a provider's public store (the simulated ARCO-ERA5 of
    :mod:`casm_cloud.simulate.provider.era5`): no completion mark, no config hash and no
    encoding of ours, only ``encoding`` as given.  With ``append_dim`` the data are
    appended along it to the store at ``url``; without, whatever is at ``url`` is
    replaced.  ``consolidated`` writes Zarr's consolidated metadata, as such a store has.
    """
    import warnings

    target = zarr_store(url, storage_options)
    if append_dim is None:
        remove(url, storage_options)
    with warnings.catch_warnings():
        # as in consolidate(): consolidated metadata is zarr-python's, not yet the v3 spec's
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        if append_dim is None:
            ds.to_zarr(target, mode="w", encoding=dict(encoding or {}), zarr_format=3,
                       consolidated=consolidated)
        else:
            ds.to_zarr(target, append_dim=append_dim, zarr_format=3, consolidated=consolidated)


def write_template(template: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
                   config_hash: str | None = None, encoding: dict | None = None) -> None:
    """Write metadata and coordinates of ``template``; no data is computed.

    ``template``'s data variables must be dask-backed with the chunking of
    the output (one Zarr chunk per dask chunk).  An existing store at ``url``
    is replaced.
    """
    ds = template.copy()
    # to_zarr(compute=False) leaves every dask-backed variable unwritten, coordinates
    # too: load them (1-D lat/lon, small) so the template carries them.
    ds = ds.assign_coords({k: c.compute() for k, c in ds.coords.items() if c.chunks is not None})
    ds.attrs = {k: v for k, v in ds.attrs.items() if k != COMPLETE_ATTR}
    if config_hash is not None:
        ds.attrs[HASH_ATTR] = config_hash
    enc = zarr_encoding(ds) if encoding is None else encoding
    remove(url, storage_options)
    ds.to_zarr(zarr_store(url, storage_options), mode="w", compute=False, encoding=enc,
               consolidated=False, zarr_format=3)


def _data_only(part: xr.Dataset) -> xr.Dataset:
    """The data variables of ``part``, without coordinates or attributes (a region write)."""
    part = part.drop_vars([v for v in part.variables if v not in part.data_vars])
    part.attrs = {}
    return part


def write_region(part: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
                 region: Mapping[str, slice] | str = "auto", safe_chunks: bool = True) -> None:
    """Write one region of an existing store (data variables only).

    ``safe_chunks=False`` skips xarray's check that no Zarr chunk is written
    in part: only for a caller that has lined its dask chunks up with the
    store's chunks and is the only writer of the chunks it touches
    (:func:`append_time` rewriting the tail of a killed append).
    """
    _data_only(part).to_zarr(zarr_store(url, storage_options), mode="r+",
                             region=dict(region) if not isinstance(region, str) else region,
                             consolidated=False, safe_chunks=safe_chunks)


def region_writes(ds: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
                  region: Mapping[str, slice] | None = None) -> dask.delayed.Delayed:
    """The lazy write of every data variable of ``ds`` into a store :func:`write_template` made.

    Nothing is written until the returned object is computed, so callers
    compute it together with other results in one pass over the data (the
    sample table's scaler sums, every store of a simulation).  ``region``
    (default: all of each dimension, from 0) places ``ds`` in the store; each
    dask chunk of ``ds`` should be one Zarr chunk of the store.
    """
    data = _data_only(ds)
    if region is None:
        region = {d: slice(0, n) for d, n in data.sizes.items()}
    return data.to_zarr(zarr_store(url, storage_options), mode="r+", region=dict(region),
                        compute=False, consolidated=False)


class ChunkRecord:
    """The record of finished chunks of a store: one small object per chunk.

    Objects live under ``<store>/_casm_chunks/``, which is declared an empty
    Zarr group so that Zarr and xarray see a valid hierarchy (and warn about
    nothing) while ignoring the markers inside.  Marking is idempotent and
    safe from many workers at once: each chunk writes only its own key.
    """

    def __init__(self, url: str, storage_options: Mapping | None = None):
        self.url = url
        self.storage_options = dict(storage_options or {})
        self._fs, self._root = url_to_fs(join(url, _RECORD_DIR), self.storage_options)

    @staticmethod
    def key(index: Mapping[str, int] | tuple) -> str:
        if isinstance(index, Mapping):
            return "_".join(f"{k}{int(v)}" for k, v in sorted(index.items()))
        return "_".join(str(int(i)) for i in index)

    def _ensure_group(self) -> None:
        meta = posixpath.join(self._root, "zarr.json")
        if not self._fs.exists(meta):
            self._fs.makedirs(self._root, exist_ok=True)
            self._fs.pipe(meta, json.dumps(
                {"zarr_format": 3, "node_type": "group", "attributes": {"casm_chunk_record": True}}
            ).encode())

    def mark(self, index, info: Mapping | None = None) -> None:
        with _reaching(self.url, f"recording chunk {self.key(index)} as finished"):
            self._ensure_group()
            self._fs.pipe(posixpath.join(self._root, self.key(index)),
                          json.dumps(dict(info or {})).encode())

    def done(self) -> set[str]:
        with _reaching(self.url, "reading its finished chunks"):
            try:
                names = {posixpath.basename(p.rstrip("/"))
                         for p in self._fs.ls(self._root, detail=False)}
            except FileNotFoundError:
                return set()
        return names - {"zarr.json"}

    def is_done(self, index) -> bool:
        with _reaching(self.url, "reading its finished chunks"):
            return self._fs.exists(posixpath.join(self._root, self.key(index)))


def zarr_group(url: str, storage_options: Mapping | None = None, *,
               mode: str = "r+") -> zarr.Group:
    """The root group of a store named by a local path or fsspec URL (``mode`` "r" or "r+")."""
    read_only = mode == "r"
    store = zarr_store(url, storage_options, read_only=read_only)
    if isinstance(store, str):
        store = zarr.storage.LocalStore(store, read_only=read_only)
    with _reaching(url, "opening it"):
        # The metadata as stored, never a consolidated copy: a write through this group
        # (its attributes) rewrites the root document without one, so a store being
        # changed is never read through stale consolidated metadata.
        return zarr.open_group(store, mode=mode, use_consolidated=False)


def mark_complete(url: str, storage_options: Mapping | None = None, *,
                  config_hash: str | None = None, **attrs) -> None:
    """Set the completion attribute (last step of every write), then consolidate.

    A finished store carries consolidated metadata (Zarr's copy of every array's
    metadata in the root document), so a plain ``xr.open_zarr`` opens it in one read
    and without a warning.  Anything that changes the store afterwards goes through
    :func:`zarr_group` first (its completion mark set false), which drops that copy
    until the store is marked complete again.
    """
    group = zarr_group(url, storage_options)
    new = dict(attrs)
    if config_hash is not None:
        new[HASH_ATTR] = config_hash
    new[COMPLETE_ATTR] = True
    group.attrs.update(new)
    consolidate(url, storage_options)


def consolidate(url: str, storage_options: Mapping | None = None) -> None:
    """Write the consolidated metadata of a store (Zarr's, in its root ``zarr.json``)."""
    import warnings

    with _reaching(url, "consolidating its metadata"), warnings.catch_warnings():
        # Zarr 3 notes that consolidated metadata is not (yet) in the v3 specification;
        # zarr-python and xarray read it, and a store without it reads the same.
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        zarr.consolidate_metadata(zarr_store(url, storage_options))


def store_state(url: str, storage_options: Mapping | None = None) -> dict:
    """``{"exists": bool, "complete": bool, "config_hash": str | None}`` of a store."""
    if not exists(join(url, "zarr.json"), storage_options) and not exists(
        join(url, ".zgroup"), storage_options
    ):
        return {"exists": False, "complete": False, "config_hash": None}
    fs, path = url_to_fs(url, storage_options)
    with _reaching(url, "reading its attributes"):
        try:
            meta = json.loads(fs.cat(posixpath.join(path, "zarr.json")))
            attrs = meta.get("attributes", {})
        except FileNotFoundError:
            attrs = json.loads(fs.cat(posixpath.join(path, ".zattrs"))) if fs.exists(
                posixpath.join(path, ".zattrs")) else {}
    return {"exists": True, "complete": bool(attrs.get(COMPLETE_ATTR, False)),
            "config_hash": attrs.get(HASH_ATTR)}
