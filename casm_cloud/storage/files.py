"""Files named by URL: paths, file systems, and the small objects (markers, recipes) of a run."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping

import fsspec

from casm_cloud.storage.guard import _reaching

__all__ = ["join", "url_to_fs", "exists", "remove", "copy_tree", "check_writable", "write_bytes",
           "write_text", "read_text", "write_marker", "read_marker"]

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


def write_bytes(url: str, data: bytes, storage_options: Mapping | None = None) -> None:
    """Write a file (a provider's netCDF, HDF5 or binary file) at ``url`` in one put,
    creating its folder."""
    fs, path = url_to_fs(url, storage_options)
    with _reaching(url, "writing it"):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fs.pipe(path, bytes(data))


def write_text(url: str, text: str, storage_options: Mapping | None = None) -> None:
    """Write a small text file (a marker, a recipe) at ``url`` in one put, creating its folder."""
    write_bytes(url, text.encode(), storage_options)


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
