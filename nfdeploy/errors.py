"""The error types the CLI turns into a one-line message and a non-zero exit (floor 0: imports nothing
of nfdeploy).

Every module that rejects bad user input raises a subclass of `UserError`; the CLI catches that one
class, so a new error type needs no registration anywhere else.
"""

from __future__ import annotations

import importlib
from typing import Any


class UserError(Exception):
    """Bad input, a missing or mismatched artifact, an unmet requirement: reported on one line, exit 2."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def one_line(what: Any, limit: int = 300, *, with_type: bool | None = None) -> str:
    """`what` (an exception or any text) on one line, at most `limit` characters. Exceptions carry their
    type name unless `with_type` is False."""
    text = " ".join(str(what).split())
    if isinstance(what, BaseException) and with_type is not False:
        text = f"{type(what).__name__}: {text}" if text else type(what).__name__
    return text[:limit]


def require(module: str, extra: str):
    """Import an optional heavy dependency lazily, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{module} is not installed ({e}); install it with: pip install 'nfdeploy[{extra}]'"
        ) from None


__all__ = ["MissingExtraError", "UserError", "one_line", "require"]
