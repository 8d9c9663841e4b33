"""The one family of user errors.

Anything the user can fix by changing their input (a recipe key, a catalog
entry, a store, a provider file, a station folder, a checkpoint that does not
fit the features) raises a subclass of :class:`UserError`.  The command line
prints such an error as one line and exits with code 2; every other exception
is a bug and keeps its traceback (exit code 1).  See ``docs/architecture.md``.

Each concrete error also derives from :class:`ValueError`, so callers that
caught ``ValueError`` before keep working.

Every class here takes one argument, its message, so it pickles: an error
raised in a dask worker's task reaches the client as the same type.
"""

from __future__ import annotations

__all__ = ["UserError", "InputError", "StoreError", "StoreUnreachableError", "WorkersLostError",
           "CatalogError", "SourceError", "MissingFilesError"]


class UserError(Exception):
    """Bad input the user can fix; its message names the key, file or variable."""


class InputError(UserError, ValueError):
    """Generic bad input (a value, a file, a folder) where no narrower class fits."""


class StoreError(UserError, ValueError):
    """A store that is missing, unfinished or made by another configuration."""


class StoreUnreachableError(StoreError):
    """The object store (or file system) holding a store failed while it was read or written:
    refused or dropped connections, timeouts, a server error after the client's retries, a
    full disk.  Its message names the store's URL (never its credentials).  Nothing the
    interrupted write made is marked complete, so the same command, run again once the store
    is back, finishes the work."""


class WorkersLostError(UserError, RuntimeError):
    """The cluster's workers died running a stage's tasks, one after another (dask's
    ``KilledWorker``): most often a worker over its memory limit, which the user fixes
    with more memory per worker or smaller chunks.  The message names the stage, the
    task and the workers' memory; the stage is not marked finished, so the same command
    continues once the cluster is sized."""


class CatalogError(UserError, ValueError):
    """A catalog or entry that cannot be written or read as asked."""


class SourceError(CatalogError):
    """A catalog entry that cannot give what was asked: its files are missing, a file has
    the wrong variables or grid, the period or window lies outside what it holds."""


class MissingFilesError(SourceError, FileNotFoundError):
    """A source whose files are not there (a path, glob or template matching nothing); also
    a ``FileNotFoundError``."""
