"""The library's exceptions, split by who is at fault.

Every error a caller can see derives from :class:`WorkspaceLifecycleError`, which cannot be
instantiated itself. Each also subclasses the stdlib exception it resembles, so code that
catches ``ValueError`` or ``LookupError`` keeps working. Driver exceptions (aiosqlite,
psycopg) are mapped to these at the adapter boundary and never leak raw.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BuildConflictError",
    "CorruptStateError",
    "CursorExpiredError",
    "InvalidEventError",
    "NotFoundError",
    "OwnershipError",
    "StoreBusyError",
    "StoreClosedError",
    "StoreError",
    "UnsupportedBackendError",
    "WorkspaceLifecycleError",
]


class WorkspaceLifecycleError(Exception):
    """Base of every error this library raises; never raised itself."""

    def __new__(cls, *args: Any, **kwargs: Any) -> WorkspaceLifecycleError:
        if cls is WorkspaceLifecycleError:
            raise TypeError("WorkspaceLifecycleError is abstract; raise a subclass")
        return super().__new__(cls, *args, **kwargs)


class InvalidEventError(WorkspaceLifecycleError, ValueError):
    """An event that no transition accepts in the current state.

    The machine is strict: a fresh (not stale, not repeated) event that the transition table
    does not allow means the event source is inconsistent. The runtime answers it by
    resynchronising from the stored rows.
    """


class StoreError(WorkspaceLifecycleError):
    """A storage adapter could not do what was asked."""


class StoreClosedError(StoreError, RuntimeError):
    """The store was used after it was closed."""


class UnsupportedBackendError(StoreError, RuntimeError):
    """The store cannot run on the current async backend (SQLite and PostgreSQL need asyncio)."""


class StoreBusyError(StoreError, TimeoutError):
    """Another writer held the store's lock longer than the configured timeout."""


class NotFoundError(StoreError, LookupError):
    """A chat, workspace or build named by the caller does not exist."""


class CorruptStateError(StoreError, ValueError):
    """A stored row holds a value the library does not know; the message names the row."""

    def __init__(self, table: str, key: object, column: str, value: object) -> None:
        self.table = table
        self.key = key
        self.column = column
        self.value = value
        super().__init__(
            f"corrupt row in {table} (key {key!r}): column {column} holds unknown value {value!r}"
        )


class CursorExpiredError(StoreError, LookupError):
    """The event log was pruned past the subscriber's cursor; resynchronise from the rows."""

    def __init__(self, cursor: int, oldest: int) -> None:
        self.cursor = cursor
        self.oldest = oldest
        super().__init__(
            f"events after {cursor} were pruned (oldest kept is {oldest}); resynchronise from the stored rows"
        )


class OwnershipError(WorkspaceLifecycleError, PermissionError):
    """A chat was registered again under another owner."""


class BuildConflictError(StoreError, ValueError):
    """A provisioner tried to finish a build that is not in progress (or was never claimed)."""
