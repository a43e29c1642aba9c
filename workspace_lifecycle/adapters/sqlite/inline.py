"""The inline path: the SQLite store's writes and reads run on the event loop when they cannot
block, and go to the connections' threads (:mod:`.writer`) when they could.

Why: handing a write to a thread and back costs ~167 µs with nothing to run, six times a whole
one-row transaction (~26 µs); the same transaction run on the loop costs 0.975x the bare loop
(FACTS.md, "The write path of 0.2"). What can block a SQLite call under WAL is a lock held by
another connection; the loop's own connection has ``busy_timeout`` 0, so SQLite answers
``SQLITE_BUSY`` at once instead of waiting, and then the work goes to the thread, whose
connection waits with the real ``busy_timeout``.

* **Group commit within a tick.** The first write of a loop tick schedules a flush with
  ``call_soon``; every write queued until it runs (the writes of the tasks that ran in the same
  tick) shares one ``BEGIN IMMEDIATE ... COMMIT``, each in its own savepoint when there are
  several (:func:`~.writer.run_bodies`, the writer thread's own code). Each plan decides inside
  that transaction, after ``BEGIN IMMEDIATE`` took the write lock, so compare-and-set stays
  exact across tasks and processes.
* **Nothing half-done.** From ``BEGIN IMMEDIATE`` to ``COMMIT`` the flush is one synchronous
  callback: no await, so no cancellation can land inside a transaction. A cancelled caller
  only loses its answer: its write, once queued, commits with its tick (as on the thread).
* **Busy: to the thread.** When ``BEGIN IMMEDIATE`` is refused (another process, or the
  store's own thread, holds the write lock), the flush's writes go to the writer's thread,
  keeping their order, and while that thread has work in flight later writes queue behind it
  rather than overtake it. Reads go to the readers' thread then too: an inline read must not
  report a thread commit to waiters before that commit's writers were resumed (the order the
  thread path keeps with its lock, taken here without waiting).
* Errors are mapped as on the thread (:mod:`.errors`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

from ...errors import StoreBusyError, StoreClosedError
from .errors import fresh, map_exceptions, translated
from .writer import MAX_BATCH, Connection, Done, Job, run_bodies, settle

__all__ = ["MISS", "Inline", "in_read_transaction"]

T = TypeVar("T")


class _Miss:
    def __repr__(self) -> str:
        return "MISS"


#: What :meth:`Inline.read` returns when the read could not run on the loop without waiting.
MISS: Final = _Miss()


class Inline:
    """The event loop's own connection (``busy_timeout`` 0) and the writes queued in this tick.

    ``committed(count, head)`` runs once per committed transaction, after its callers' futures
    were resolved (as the writer's thread does it).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        path: str,
        busy_timeout: float,
        thread: Connection,
        reader: Connection,
        committed: Callable[[int, int | None], object],
        order: threading.Lock,
    ) -> None:
        self.conn: sqlite3.Connection | None = conn
        self._path = path
        self._busy_timeout = busy_timeout
        self._thread = thread
        self._reader = reader
        self._committed = committed
        self._order = order
        self._queued: list[Job[Any]] = []
        self.commits = 0  # transactions committed on the loop
        self.fallbacks = 0  # flushes sent to the writer's thread because the lock was taken

    # --- writes ------------------------------------------------------------------------------------

    def write(self, fn: Callable[[Any], T]) -> asyncio.Future[T]:
        """Queue the transaction body ``fn(tx)`` for this tick's flush (or behind the writer's
        thread while it has work in flight); the future resolves once it committed."""
        loop = asyncio.get_running_loop()
        job: Job[T] = Job(fn, loop.create_future(), write=True, then=None)
        if self._thread.in_flight:
            self._thread.put(job)
        else:
            self._queued.append(job)
            if len(self._queued) == 1:
                loop.call_soon(self.flush)
        return job.future

    def flush(self) -> None:
        """Commit what this tick queued, in one transaction (at most ``MAX_BATCH`` writes each),
        or hand it to the writer's thread when the write lock is taken."""
        # A caller cancelled since it queued still has its write committed (as on the thread):
        # it may already be counted on, and its commit rings the doorbell for the others.
        batch, self._queued = self._queued, []
        while batch:
            conn = self.conn
            if conn is None:
                _fail(batch, StoreClosedError("the SQLite store is closed"))
                return
            if self._thread.in_flight or not self._begin(conn, batch):
                self.fallbacks += 1
                for job in batch:
                    self._thread.put(job)
                return
            chunk, batch = batch[:MAX_BATCH], batch[MAX_BATCH:]
            done: list[Done] = []
            unrun, head, committed = run_bodies(conn, chunk, done, self._path, self._busy_timeout)
            self.commits += committed
            settle(done, self._committed, head)
            batch = unrun + batch

    def _begin(self, conn: sqlite3.Connection, batch: list[Job[Any]]) -> bool:
        """``BEGIN IMMEDIATE`` without waiting: False when another connection holds the write
        lock. Any other failure fails the batch's first write... and, as on the thread, every
        write of it, with the error each would get alone."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.Error as exc:
            error = translated(exc, self._path, self._busy_timeout)
            if isinstance(error, StoreBusyError):
                return False
            _fail(batch, error)
            batch.clear()
            return True

    # --- reads -------------------------------------------------------------------------------------

    def read_soon(
        self, fn: Callable[[sqlite3.Connection], T], then: Callable[[T], object] | None = None
    ) -> asyncio.Future[T]:
        """``fn`` read in a callback of the next tick (on the readers' thread if that could
        wait), its answer handed back through the future: a task that learns of a commit this
        way resumes after that commit's writers, whose wake-ups were queued at its flush.
        ``then(value)`` runs first, even if the caller stopped waiting; a read whose caller
        was cancelled before it ran is not made."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        loop.call_soon(self._read_now, fn, future, then)
        return future

    def _read_now(
        self,
        fn: Callable[[sqlite3.Connection], T],
        future: asyncio.Future[T],
        then: Callable[[T], object] | None,
    ) -> None:
        if future.done():
            return
        if self.conn is None:  # closed since the read was asked for
            future.set_exception(StoreClosedError("the SQLite store is closed"))
            return
        try:
            value = self.read(fn)
        except BaseException as exc:
            future.set_exception(exc)
            return
        if isinstance(value, _Miss):
            self._reader.put(Job(in_read_transaction(fn), future, write=False, then=then))
            return
        future.set_result(value)
        if then is not None:
            then(value)

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T | _Miss:
        """``fn`` in one read transaction on the loop's connection, or :data:`MISS` when that
        could wait (a lock, or a thread commit whose results are still on their way)."""
        conn = self.conn
        if conn is None or self._thread.in_flight:
            return MISS
        if not self._order.acquire(blocking=False):
            return MISS
        try:
            with map_exceptions(self._path, self._busy_timeout):
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    if conn.in_transaction:
                        conn.execute("COMMIT")
        except StoreBusyError:
            return MISS
        finally:
            self._order.release()

    def version(self) -> int | None:
        """``PRAGMA data_version`` of the loop's connection (it changes when another connection
        commits), or ``None`` when it cannot be read now without risking the order above."""
        conn = self.conn
        if conn is None or self._thread.in_flight or not self._order.acquire(blocking=False):
            return None
        try:
            with map_exceptions(self._path, self._busy_timeout):
                return int(conn.execute("PRAGMA data_version").fetchone()[0])
        finally:
            self._order.release()

    def close(self) -> None:
        """Commit what is queued, then close the connection."""
        self.flush()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()


def in_read_transaction(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """``fn`` inside ``BEGIN ... COMMIT``: one snapshot, for a connection's thread."""

    def tx(conn: sqlite3.Connection) -> T:
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("COMMIT")

    return tx


def _fail(batch: list[Job[Any]], error: BaseException) -> None:
    for job in batch:
        if not job.future.done():
            job.future.set_exception(fresh(error))
