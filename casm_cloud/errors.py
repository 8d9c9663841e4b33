"""The one family of user errors.

Anything the user can fix by changing their input (a recipe key, a catalog
entry, a store, a provider file, a station folder, a checkpoint that does not
fit the features) raises a subclass of :class:`UserError`.  The command line
prints such an error as one line and exits with code 2; every other exception
is a bug and keeps its traceback (exit code 1).  See ``docs/architecture.md``.

Each concrete error also derives from :class:`ValueError`, so callers that
caught ``ValueError`` before keep working.
"""

from __future__ import annotations

__all__ = ["UserError", "InputError"]


class UserError(Exception):
    """Bad input the user can fix; its message names the key, file or variable."""


class InputError(UserError, ValueError):
    """Generic bad input (a value, a file, a folder) where no narrower class fits."""
