"""What ``python -m monai.bundle run`` prints when one of our bundles fails.

A known error (a :class:`~prato_components.errors.UserError` anywhere in the exception chain, which MONAI wraps in
``RuntimeError: Failed to evaluate ConfigExpression``) prints as ``error: <message>`` and ``fix: <fix>`` on stderr,
and the process exits with status 1. Other errors keep their traceback, and so does every error with the bundle key
``--debug True`` or the environment variable ``PRATO_DEBUG=1`` (docs/design.md §9).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TypeVar

from prato_components.errors import UserError

__all__ = ["DEBUG_ENV", "find_in_chain", "user_error", "error_lines", "debug_requested", "excepthook", "install"]

DEBUG_ENV = "PRATO_DEBUG"
_TRUE = ("1", "true", "yes", "on")
E = TypeVar("E", bound=BaseException)


def find_in_chain(error: BaseException | None, kind: type[E]) -> E | None:
    """The first exception of type ``kind`` in ``error``'s chain (``__cause__``, else ``__context__``), or ``None``."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def user_error(error: BaseException | None) -> UserError | None:
    """The first ``UserError`` in ``error``'s chain, or ``None``."""
    return find_in_chain(error, UserError)


def error_lines(error: UserError) -> list[str]:
    """What the command line prints for a known error: its message, then its fix where there is one."""
    return [f"error: {error.message}"] + ([f"fix: {error.fix}"] if error.fix else [])


def _argument(argv: Sequence[str], key: str) -> str | None:
    """The value of ``--key value`` or ``--key=value`` in ``argv`` (the last one given), or ``None``."""
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{key}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value


def debug_requested(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the full traceback is wanted: ``--debug True`` on the command line or ``PRATO_DEBUG=1``."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    value = _argument(argv, "debug")
    return str(environ.get(DEBUG_ENV, "")).strip().lower() in _TRUE or str(value).strip().lower() in _TRUE


def excepthook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    """``sys.excepthook`` of a bundle run: known errors as one or two lines, anything else as Python prints it."""
    known = user_error(error)
    if known is None or debug_requested():
        sys.__excepthook__(kind, error, traceback)
        return
    print("\n".join(error_lines(known)), file=sys.stderr)


def install() -> bool:
    """Install :func:`excepthook` when this process is ``python -m monai.bundle`` (the configs import
    ``prato_components.bundle``, which calls this); other programs keep their own hook. Returns whether it did."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) != "monai.bundle.__main__":
        return False
    sys.excepthook = excepthook
    return True
