"""User errors of the validation package (all :class:`casm_cloud.errors.UserError`).

Each also derives from the built-in type the functions raised before
(``ValueError``, ``KeyError``, ``FileNotFoundError``), so callers that caught
those keep working.  See ``docs/architecture.md`` ("Errors").
"""

from __future__ import annotations

from casm_cloud.errors import UserError

__all__ = ["ValidationError", "MissingKeyError", "MissingInputError"]


class ValidationError(UserError, ValueError):
    """A product that cannot be scored against the stations, or a bad validation argument."""


class MissingKeyError(UserError, KeyError):
    """A variable, flag, column or station the data do not have.

    ``str()`` is the message itself (a plain ``KeyError`` shows its repr).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingInputError(UserError, FileNotFoundError):
    """A product or an ISMN download that does not exist."""
