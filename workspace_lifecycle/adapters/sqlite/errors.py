"""Driver errors become the library's here, in one place: nothing above this package sees a
``sqlite3`` exception (httpcore's ``map_exceptions``)."""

from __future__ import annotations

import contextlib
import copy
import sqlite3
from collections.abc import Iterator

from ...errors import StoreBusyError, StoreClosedError, StoreError, StoreUnavailableError

__all__ = ["fresh", "map_exceptions", "translated"]

_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_PROTOCOL})
_UNAVAILABLE_CODES = frozenset({sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN})


@contextlib.contextmanager
def map_exceptions(path: str, busy_timeout: float) -> Iterator[None]:
    """Turn what ``sqlite3`` (and bad caller input on its way in) raises into this library's
    errors, as httpcore's ``map_exceptions`` does; every call into the driver runs inside it.

    >>> with map_exceptions("x.db", 5):
    ...     raise sqlite3.OperationalError("database is locked")
    Traceback (most recent call last):
    ...
    workspace_lifecycle.errors.StoreBusyError: SQLite database 'x.db' stayed locked by another writer for more than 5s
    """
    try:
        yield
    except (sqlite3.Error, UnicodeEncodeError, OverflowError) as exc:
        raise translated(exc, path, busy_timeout) from None


def translated(exc: BaseException, path: str, busy_timeout: float) -> BaseException:
    """What :func:`map_exceptions` raises for ``exc`` (``exc`` itself if it is not the driver's),
    for the hot loop that cannot afford a context manager per write."""
    if isinstance(exc, sqlite3.Error):
        return _mapped(exc, path, busy_timeout)
    if isinstance(exc, UnicodeEncodeError):
        return ValueError(f"text is not valid UTF-8 (it cannot be stored): {exc.reason}")
    if isinstance(exc, OverflowError):
        return ValueError("a number is too large for SQLite, which stores integers of at most 64 bits")
    return exc


def _mapped(exc: sqlite3.Error, path: str, busy_timeout: float) -> Exception:
    text = str(exc)
    lower = text.lower()
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if isinstance(exc, sqlite3.ProgrammingError):
        if "closed" in lower:
            return StoreClosedError("the SQLite store is closed")
        if "binding" in lower:
            return ValueError(f"a value cannot be stored in SQLite: {text}")
        return StoreError(f"SQLite error on {path!r}: {text}")
    if isinstance(exc, sqlite3.DataError):
        return ValueError(f"a value cannot be stored in SQLite: {text}")
    if primary in _BUSY_CODES or (primary is None and ("locked" in lower or "busy" in lower)):
        return StoreBusyError(
            f"SQLite database {path!r} stayed locked by another writer for more than {busy_timeout:g}s"
        )
    if primary in _UNAVAILABLE_CODES or (
        primary is None and ("disk i/o" in lower or "unable to open" in lower)
    ):
        return StoreUnavailableError(f"SQLite database {path!r} is unavailable: {text}")
    if primary == sqlite3.SQLITE_READONLY or "readonly" in lower or "read-only" in lower:
        return StoreError(f"SQLite database {path!r} is read-only: {text}")
    return StoreError(f"SQLite error on {path!r}: {text}")


def fresh(exc: BaseException) -> BaseException:
    """A copy of ``exc`` to raise in one more caller (one object raised in several tasks would
    collect all their tracebacks)."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc
