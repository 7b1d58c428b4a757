"""Errors a user can act on.

The command line prints a ``UserError`` as its message and, where there is one, the fix, without a traceback
(docs/design.md §9); every other exception keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, settings or files, with how to fix it where that is known."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message if fix is None else f"{message}\n{fix}")
        self.message = message
        self.fix = fix


class InputError(UserError, ValueError):
    """A bad value (a box, a setting, a request parameter); still a ``ValueError`` for callers that catch those."""
