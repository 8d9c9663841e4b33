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

This module is the only one that calls ``to_zarr``: a whole small dataset
goes through :func:`write_dataset`, a lazy one template-first through
:func:`write_template` and :func:`region_writes` (or :func:`write_region`
per chunk), and the time axis grows only through :func:`grow_time` (used by
:func:`append_time` and by inference's store).  See ``docs/architecture.md``
("Storage").

A store's server failing (a refused or dropped connection, a timeout, a
server error after the client's retries, a full disk) while this module, or
Zarr through a store it opened (:func:`zarr_store`, also in dask workers),
reads or writes raises :class:`~casm_cloud.errors.StoreUnreachableError`
naming the URL; the write it interrupted is not marked complete.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import posixpath
import re
from collections.abc import AsyncIterator, Iterator, Mapping

import dask.delayed
import fsspec
import xarray as xr
import zarr
import zarr.storage

from casm_cloud.credentials import is_login_name
from casm_cloud.errors import StoreError, StoreUnreachableError, UserError

__all__ = [
    "StoreError",
    "StoreUnreachableError",
    "join",
    "url_to_fs",
    "exists",
    "remove",
    "zarr_encoding",
    "open_zarr",
    "write_dataset",
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
]

COMPLETE_ATTR = "casm_complete"
HASH_ATTR = "casm_config_hash"
_RECORD_DIR = "_casm_chunks"


# storage_options keys that hold secrets (gcsfs, s3fs, adlfs, http auth).
_SECRET_KEYS = {
    "token", "key", "secret", "password", "passwd", "client_secret", "session_token",
    "refresh_token", "access_token", "aws_access_key_id", "aws_secret_access_key",
    "aws_session_token", "access_key", "secret_key", "account_key", "sas_token",
    "credentials", "auth", "authorization", "username", "user", "login",
}
# Values of "token" that select a credential *mechanism*, not a secret (gcsfs).
_TOKEN_MODES = {"anon", "google_default", "cloud", "browser", None}


def secret_keys(options: Mapping, prefix: str = "") -> list[str]:
    """Keys of ``storage_options`` (dotted, at any depth, e.g.
    ``client_kwargs.headers.Authorization``) that hold credentials."""
    found = []
    for k, v in options.items():
        if k == "token" and (isinstance(v, bool) or (
                (v is None or isinstance(v, str)) and v in _TOKEN_MODES)):
            continue  # a credential mechanism; a dict token is the key itself
        if k == "login" and is_login_name(v):
            continue  # the name of a login looked up at read time (casm_cloud.credentials)
        if str(k).lower() in _SECRET_KEYS:
            found.append(prefix + str(k))
        elif isinstance(v, Mapping):
            found += secret_keys(v, f"{prefix}{k}.")
    return found


# --------------------------------------------------------------------------- an unreachable store
# A store's server (or disk) failing is the user's to fix, not a bug: every read and write
# here, and every Zarr read and write through the stores this module hands out (also those
# in dask workers' tasks), turns such a failure into StoreUnreachableError naming the URL.
# Everything else (a missing key, a bad value, a bug) passes through unchanged.

#: errno values of a failing connection or device (an OSError with another errno, e.g.
#: ENOENT or EACCES, is an answer, not a failure).
_FAILING_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ECONNREFUSED", "ECONNRESET", "ECONNABORTED", "EHOSTUNREACH", "EHOSTDOWN", "ENETUNREACH",
    "ENETDOWN", "ENETRESET", "ETIMEDOUT", "EPIPE", "EIO", "ENOSPC", "EDQUOT") if hasattr(errno, n))
#: HTTP statuses a server answers while it is unavailable (gcsfs raises them after retries).
_FAILING_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@functools.cache
def _connection_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a failed connection of the fsspec clients that are installed."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:  # gcsfs, s3fs (aiobotocore), http: aiohttp (its response errors: see below)
        import aiohttp

        types.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:  # gcsfs' token refresh
        import requests

        types += [requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                  requests.exceptions.ChunkedEncodingError]
    except ImportError:
        pass
    try:  # s3fs
        import botocore.exceptions

        types += [botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError]
    except ImportError:
        pass
    return tuple(types)


def _is_unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or what it was raised from) is a store failing, not an answer or a bug."""
    for _ in range(8):  # the error and the chain of errors it was raised from
        if err is None or isinstance(err, UserError):
            return False
        if type(err).__name__ == "ClientResponseError":  # aiohttp: an answer, with its status
            return getattr(err, "status", None) in _FAILING_STATUSES
        if isinstance(err, _connection_errors()):
            return True
        if isinstance(err, OSError) and err.errno in _FAILING_ERRNOS:
            return True
        # gcsfs' HttpError: a status the server gave up with
        code = getattr(err, "code", None) if type(err).__name__ == "HttpError" else None
        if str(code) in {str(c) for c in _FAILING_STATUSES}:
            return True
        err = err.__cause__
    return False


def _unreachable_message(url: str, doing: str, err: BaseException) -> str:
    detail = " ".join(f"{type(err).__name__}: {err}".split())  # one line
    # no query strings (signed URLs, tokens) and no user:password@ in what is quoted
    detail = re.sub(r"\?[^\s'\"\]]*", "", detail)
    url, detail = (re.sub(r"//[^/@\s]+@", "//", t) for t in (str(url), detail))
    return (f"the store {url} could not be reached while {doing}: {detail}; run the same "
            "command again once it is back (nothing unfinished is marked complete)")


@contextlib.contextmanager
def _reaching(url: str, doing: str) -> Iterator[None]:
    """Turn a store failing inside the block into :class:`StoreUnreachableError` naming ``url``."""
    try:
        yield
    except Exception as err:
        if not _is_unreachable(err):
            raise
        raise StoreUnreachableError(_unreachable_message(url, doing, err)) from err


class _GuardedStore(zarr.storage.WrapperStore):
    """A Zarr store whose failing server raises :class:`StoreUnreachableError` naming ``url``.

    Every Zarr store this module opens for a URL is one, so the arrays xarray and dask
    hand to workers carry it: a chunk a worker cannot write fails its task with the user
    error, which reaches the client as the same type (it pickles: one message argument).
    """

    def __init__(self, store, url: str | None = None):
        super().__init__(store)
        self.url = url or str(store)

    def _with_store(self, store):
        return type(self)(store, self.url)

    def __repr__(self) -> str:
        return f"_GuardedStore({self.url!r})"

    def __dask_tokenize__(self):
        return ("casm_cloud.storage._GuardedStore", self.url, self.read_only,
                getattr(getattr(self._store, "fs", None), "_fs_token", None))

    def _at(self, doing: str, key: str = ""):
        return _reaching(self.url, f"{doing} {key}".strip() if key else doing)

    async def _guard_iter(self, it: AsyncIterator[str], doing: str) -> AsyncIterator[str]:
        with self._at(doing):
            async for item in it:
                yield item

    async def _open(self) -> None:
        with self._at("opening it"):
            await self._store._open()

    async def _ensure_open(self) -> None:
        with self._at("opening it"):
            await self._store._ensure_open()

    async def is_empty(self, prefix: str) -> bool:
        with self._at("listing", prefix):
            return await self._store.is_empty(prefix)

    async def clear(self) -> None:
        with self._at("clearing it"):
            return await self._store.clear()

    async def get(self, key, prototype, byte_range=None):
        with self._at("reading", key):
            return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        with self._at("reading", key_ranges[0][0] if key_ranges else ""):
            return await self._store.get_partial_values(prototype, key_ranges)

    async def exists(self, key: str) -> bool:
        with self._at("looking for", key):
            return await self._store.exists(key)

    async def set(self, key, value) -> None:
        with self._at("writing", key):
            await self._store.set(key, value)

    async def set_if_not_exists(self, key, value) -> None:
        with self._at("writing", key):
            return await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values) -> None:
        with self._at("writing"):
            await self._store._set_many(values)

    async def delete(self, key: str) -> None:
        with self._at("deleting", key):
            await self._store.delete(key)

    async def delete_dir(self, prefix: str) -> None:
        with self._at("deleting", prefix):
            return await self._store.delete_dir(prefix)

    def list(self) -> AsyncIterator[str]:
        return self._guard_iter(self._store.list(), "listing it")

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        return self._guard_iter(self._store.list_prefix(prefix), f"listing {prefix}")

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        return self._guard_iter(self._store.list_dir(prefix), f"listing {prefix}")

    async def _get_many(self, requests):
        with self._at("reading"):
            async for item in self._store._get_many(requests):
                yield item


def zarr_store(url: str, storage_options: Mapping | None = None, *, read_only: bool = False):
    """What ``to_zarr``/``open_zarr``/``zarr.open_group`` take for ``url``.

    A local path stays a path; an fsspec URL becomes its Zarr store (as Zarr would make
    it from the URL and ``storage_options``), wrapped so that the store failing raises
    :class:`StoreUnreachableError` naming the URL, in this process and in dask workers.
    """
    if "://" not in str(url):
        return str(url)
    store = zarr.storage.FsspecStore.from_url(str(url), storage_options=dict(storage_options or {}),
                                              read_only=read_only)
    return _GuardedStore(store, str(url))


def join(root: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with ``/``."""
    root = str(root)
    out = root.rstrip("/")
    for p in parts:
        out = posixpath.join(out, str(p).strip("/"))
    return out


def url_to_fs(url: str, storage_options: Mapping | None = None):
    """(filesystem, path) for a URL; credentials stay in ``storage_options``."""
    return fsspec.core.url_to_fs(str(url), **dict(storage_options or {}))


def exists(url: str, storage_options: Mapping | None = None) -> bool:
    fs, path = url_to_fs(url, storage_options)
    with _reaching(url, "looking for it"):
        return fs.exists(path)


def remove(url: str, storage_options: Mapping | None = None) -> None:
    """Delete a store (recursively) if it exists."""
    fs, path = url_to_fs(url, storage_options)
    with _reaching(url, "deleting it"):
        if fs.exists(path):
            fs.rm(path, recursive=True)


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


def _so(storage_options: Mapping | None) -> dict | None:
    """``storage_options`` as ``to_zarr``/``open_zarr`` take them (``None`` when empty)."""
    return dict(storage_options or {}) or None


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


def append_time(ds: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
                config_hash: str | None = None) -> int:
    """Write ``ds`` onto the end of a store's time axis (the monthly update).

    Times of ``ds`` up to the store's last one must be the store's last times
    (a killed append that grew the axis): they are written again in place;
    later ones are appended.  Writes are chunked to line up with the store's
    chunks, so dask workers never share a Zarr chunk.  The store reads as
    unfinished until the write is done; its attributes stay.

    Returns
    -------
    int
        Number of time steps the store gained (``ds`` empty: nothing is touched).

    Raises
    ------
    StoreError
        If the store is missing, or ``ds`` starts at a time the store does not
        have or lacks some of the store's times after its start.
    """
    so = dict(storage_options or {})
    stored = open_zarr(url, so)
    if ds.sizes.get("time", 0) == 0:
        return 0
    old, times = stored["time"].values, ds["time"].values
    i0 = int(old.searchsorted(times[0]))
    n_over = old.size - i0
    if n_over > times.size or (old[i0:] != times[:n_over]).any():
        raise StoreError(f"cannot append to {url}: its times end at {old[-1]}, the new ones "
                         f"({times[0]}..{times[-1]}) do not continue them")
    new = _time_part(ds)
    chunks = {}
    for name in new.data_vars:
        chunks.update(zip(stored[name].dims, stored[name].encoding["chunks"], strict=True))
    attrs = {k: v for k, v in stored.attrs.items() if k != COMPLETE_ATTR}
    zarr_group(url, so).attrs[COMPLETE_ATTR] = False
    if n_over:
        over = new.isel(time=slice(0, n_over))
        over = over.chunk({**chunks, "time": _aligned(n_over, i0, chunks["time"])})
        # Starts inside a Zarr chunk when the killed append did: each dask chunk
        # is one Zarr chunk's part (above) and nothing else writes them.
        write_region(over, url, so, region={d: slice(i0, None) if d == "time" else slice(None)
                                            for d in over.dims}, safe_chunks=False)
    rest = new.isel(time=slice(n_over, None))
    if rest.sizes["time"]:
        rest = rest.chunk({**chunks, "time": _aligned(rest.sizes["time"], old.size,
                                                       chunks["time"])})
        grow_time(rest, url, so, attrs=attrs)
    mark_complete(url, so, config_hash=config_hash or attrs.get(HASH_ATTR))
    return int(times.size - n_over)


def _time_part(ds: xr.Dataset) -> xr.Dataset:
    """The time-dependent data variables of ``ds`` with the ``time`` coordinate only."""
    new = ds[[v for v in ds.data_vars if "time" in ds[v].dims]]
    return new.drop_vars([c for c in new.coords if c != "time"])


def grow_time(ds: xr.Dataset, url: str, storage_options: Mapping | None = None, *,
              attrs: Mapping, compute: bool = True) -> None:
    """Append ``ds``'s time steps to the end of a store's time axis (the one way it grows).

    Only ``ds``'s time-dependent data variables and its ``time`` coordinate
    are written; the times must all be after the store's last one (the
    caller checks).  The store's attributes become ``attrs`` with
    ``casm_complete`` false (``to_zarr(append_dim=...)`` replaces a group's
    attributes): the store reads as unfinished until the caller calls
    :func:`mark_complete`.

    ``compute=True`` writes the data; its dask chunks must line up with the
    store's chunks (see :func:`append_time`).  ``compute=False`` grows the
    arrays and writes the new times only, leaving the data to later
    :func:`write_region` calls: ``ds`` is then a template, whose chunks need
    not line up since none of them is written.
    """
    so = _so(storage_options)
    zarr_group(url, so).attrs[COMPLETE_ATTR] = False
    grow = _time_part(ds)
    grow.attrs = {**dict(attrs), COMPLETE_ATTR: False}
    grow.to_zarr(zarr_store(url, so), append_dim="time", compute=compute, consolidated=False,
                 safe_chunks=compute)


def _aligned(n: int, offset: int, step: int) -> tuple[int, ...]:
    """Chunk sizes of ``n`` steps written from ``offset`` on Zarr chunks of ``step``."""
    sizes, pos = [], offset
    while pos < offset + n:
        end = min((pos // step + 1) * step, offset + n)
        sizes.append(end - pos)
        pos = end
    return tuple(sizes)


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


# --------------------------------------------------------------------------- small objects
def check_writable(url: str, storage_options: Mapping | None = None) -> None:
    """Create ``url`` as a folder if needed and prove it writable (a probe written and removed).

    Raises
    ------
    OSError or ValueError
        From the file system, when the folder cannot be created or written
        (:class:`StoreUnreachableError` when its store cannot be reached).
    """
    fs, root = url_to_fs(url, storage_options)
    with _reaching(url, "writing a probe"):
        fs.makedirs(root, exist_ok=True)
        probe = posixpath.join(root, ".casm_write_probe")
        fs.pipe(probe, b"")
        fs.rm(probe)


def write_text(url: str, text: str, storage_options: Mapping | None = None) -> None:
    """Write a small text file (a marker, a recipe) at ``url`` in one put, creating its folder."""
    fs, path = url_to_fs(url, storage_options)
    with _reaching(url, "writing it"):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe(path, text.encode())


def read_text(url: str, storage_options: Mapping | None = None) -> str | None:
    """The text of the small file at ``url``, or None where there is none."""
    fs, path = url_to_fs(url, storage_options)
    with _reaching(url, "reading it"):
        if not fs.exists(path):
            return None
        return fs.cat(path).decode()


def write_marker(url: str, marker: Mapping, storage_options: Mapping | None = None) -> None:
    """Write a small JSON object (a stage marker) at ``url``, creating its folder."""
    write_text(url, json.dumps(dict(marker)), storage_options)


def read_marker(url: str, storage_options: Mapping | None = None) -> dict | None:
    """The JSON object at ``url``, or None where there is none."""
    text = read_text(url, storage_options)
    return None if text is None else json.loads(text)


def copy_tree(src: str, dst: str, storage_options: Mapping | None = None) -> None:
    """Copy the folder (or store) ``src`` to ``dst`` on the same filesystem, replacing it.

    The old ``dst`` goes first, so a copy killed half-way leaves an incomplete store that
    ``open_zarr(require_complete=True)`` refuses and the next run copies again.
    """
    fs, s = url_to_fs(src, storage_options)
    _, d = url_to_fs(dst, storage_options)
    with _reaching(dst, "copying into it"):
        if fs.exists(d):
            fs.rm(d, recursive=True)
        fs.makedirs(posixpath.dirname(d.rstrip("/")), exist_ok=True)
        fs.copy(s.rstrip("/"), d.rstrip("/"), recursive=True)
