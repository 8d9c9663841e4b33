"""A store that cannot be reached: the user's to fix, raised as one error naming the URL.

A store's server (or disk) failing is not a bug: every read and write of this package,
and every Zarr read and write through the stores :func:`zarr_store` hands out (also those
in dask workers' tasks), turns such a failure into
:class:`~casm_cloud.errors.StoreUnreachableError` naming the URL.  Everything else (a
missing key, a bad value, a bug) passes through unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import re
from collections.abc import AsyncIterator, Iterator, Mapping

import zarr.storage

from casm_cloud.errors import StoreUnreachableError, UserError

__all__ = ["zarr_store"]

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
