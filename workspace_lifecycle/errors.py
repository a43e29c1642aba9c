"""The library's exceptions, split by what the caller should do about them.

Every error a caller can see derives from :class:`WorkspaceLifecycleError`, which cannot be
instantiated itself. Below it, three families, as h11 splits its errors by who is at fault:

* :class:`CallerError`: the call itself was wrong (an unknown chat or build, another owner's
  chat, finishing a build that is not in progress). Retrying the same call fails the same way.
* :class:`StoreError`: the store could not do what was asked. A :class:`TransientStoreError`
  (busy, unavailable, connection lost) may succeed when retried; the others will not (the
  store is closed, the backend is unsupported, the log was pruned past a cursor).
* :class:`CorruptStateError`: a stored row holds a value the library does not know. Neither a
  retry nor another call helps; the message names the row to repair.

Each class also subclasses the stdlib exception it resembles, so code that catches
``ValueError``, ``LookupError`` or ``TimeoutError`` keeps working. Driver exceptions (sqlite3,
psycopg) are mapped to these in one place per adapter and never leak raw.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BuildConflictError",
    "CallerError",
    "CorruptStateError",
    "CursorExpiredError",
    "InvalidEventError",
    "LeaseLostError",
    "NotFoundError",
    "OwnershipError",
    "QuotaExceededError",
    "SchemaMissingError",
    "StoreBusyError",
    "StoreClosedError",
    "StoreError",
    "StoreUnavailableError",
    "TransientStoreError",
    "UnsupportedBackendError",
    "WorkspaceLifecycleError",
]


class WorkspaceLifecycleError(Exception):
    """Base of every error this library raises; never raised itself."""

    def __new__(cls, *args: Any, **kwargs: Any) -> WorkspaceLifecycleError:
        if cls in _ABSTRACT:
            raise TypeError(f"{cls.__name__} is abstract; raise a subclass")
        return super().__new__(cls, *args, **kwargs)


# --- the caller is at fault ------------------------------------------------------------------


class CallerError(WorkspaceLifecycleError):
    """The call was wrong; the same call fails again. Never raised itself."""


class NotFoundError(CallerError, LookupError):
    """A chat, workspace or build named by the caller does not exist."""


class OwnershipError(CallerError, PermissionError):
    """A chat was registered again under another owner."""


class BuildConflictError(CallerError, ValueError):
    """A provisioner tried to finish a build that is not in progress (or was never claimed)."""


class LeaseLostError(BuildConflictError):
    """A worker used a lease it no longer holds: the lease expired (and the build was failed,
    or is about to be), or the build was finished or superseded without it. The store changed
    nothing. The worker must stop working on that build: whatever it does now, another worker
    may be doing too. A :class:`BuildConflictError`, so a provisioner that already stops on
    those stops on this."""


class QuotaExceededError(CallerError):
    """A create or start would take an owner over one of its limits
    (:class:`~workspace_lifecycle.limits.Limits`): ``limit`` names it (``"running"`` or
    ``"workspaces"``), ``used`` is what the owner has, ``allowed`` what it may have. The store
    changed nothing. The tools answer it as Coder answers a quota failure
    (``"error_code": "INSUFFICIENT_QUOTA"``); the same call passes once a slot is free."""

    def __init__(self, owner: str, limit: str, used: int, allowed: int) -> None:
        self.owner = owner
        self.limit = limit
        self.used = used
        self.allowed = allowed
        what = "running workspaces" if limit == "running" else "workspaces"
        super().__init__(f"owner {owner!r} has {used} {what} of the {allowed} allowed")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.owner, self.limit, self.used, self.allowed))


class HoldLostError(CallerError):
    """A turn renewed a hold it no longer has: the hold lapsed (its holder renewed it too late,
    so an idle stop may already have fired), or the workspace was deleted. The store changed
    nothing; the turn goes on, holding nothing."""


# --- the store could not do it ---------------------------------------------------------------


class StoreError(WorkspaceLifecycleError):
    """A storage adapter could not do what was asked."""


class TransientStoreError(StoreError):
    """A failure that may pass: the store was busy, unreachable, or the connection dropped.

    A write that raised this may or may not have committed; every write of this library is a
    compare-and-set, so re-reading the rows and retrying is safe.
    """


class StoreBusyError(TransientStoreError, TimeoutError):
    """Another writer held the store's lock longer than the configured timeout."""


class StoreUnavailableError(TransientStoreError, ConnectionError):
    """The store's server or file could not be reached (refused, dropped, I/O error)."""


class StoreClosedError(StoreError, RuntimeError):
    """The store (or the :class:`~workspace_lifecycle.runtime.Lifecycle` on it) was closed."""


class UnsupportedBackendError(StoreError, RuntimeError):
    """The store cannot run on the current async backend (SQLite and PostgreSQL need asyncio)."""


class SchemaMissingError(StoreError, LookupError):
    """A store opened without migrating (read-only: ``migrate=False``) found no schema of this
    library where its URL points: an empty database, or a mistyped ``?schema=``."""


class CursorExpiredError(StoreError, LookupError):
    """The event log was pruned past the subscriber's cursor; resynchronise from the rows."""

    def __init__(self, cursor: int, oldest: int) -> None:
        self.cursor = cursor
        self.oldest = oldest
        super().__init__(
            f"events after {cursor} were pruned (oldest kept is {oldest}); resynchronise from the stored rows"
        )


# --- the data is bad -------------------------------------------------------------------------


class CorruptStateError(WorkspaceLifecycleError, ValueError):
    """A stored row holds a value the library does not know; the message names the row."""

    def __init__(self, table: str, key: object, column: str, value: object) -> None:
        self.table = table
        self.key = key
        self.column = column
        self.value = value
        super().__init__(
            f"corrupt row in {table} (key {key!r}): column {column} holds unknown value {value!r}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.table, self.key, self.column, self.value))


class InvalidEventError(WorkspaceLifecycleError, ValueError):
    """An event that no transition accepts in the current state.

    The machine is strict: a fresh (not stale, not repeated) event that the transition table
    does not allow means the event source is inconsistent. The runtime answers it by
    resynchronising from the stored rows.
    """


_ABSTRACT = (WorkspaceLifecycleError, CallerError)
