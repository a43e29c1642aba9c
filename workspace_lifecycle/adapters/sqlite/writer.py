"""The SQLite store's connection threads: each owns one ``sqlite3`` connection and runs the jobs
submitted to it in order, handing results back to the caller's event loop.

* A write is one transaction body run on the writer's thread as a single synchronous function,
  its result handed back to the caller's loop with ``call_soon_threadsafe``: one thread hop per
  write instead of one per statement. This thread replaced aiosqlite, whose only one-hop route
  was its private ``Connection._execute``; it is the same design (a queue in, one
  ``call_soon_threadsafe`` out) at the same cost.
* **Group commit.** The writes found queued together when the thread takes its next job
  (submitted while it was busy) run as one batch in one ``BEGIN IMMEDIATE ... COMMIT``, each in
  a savepoint of its own when the batch holds more than one: a write whose body raises (a
  missing row, another owner, bad input, a constraint) is rolled back to its savepoint and
  fails alone, the others commit. A refused compare-and-set is an outcome, not a failure. A
  failed COMMIT (busy, disk) fails every write of the batch with the error a write alone gets;
  nothing is delivered as committed unless it committed. The batch's results go back in one
  hop and the doorbell rings once with its head. ``BEGIN IMMEDIATE`` takes the write lock
  before anything is read, so every compare-and-set decided inside a batch is exact across
  tasks and processes, and ``busy_timeout`` makes other writers wait instead of failing. With
  one writing transaction at a time, sequence order is commit order.
* Each write has its own deadline: a write that queued behind another one blocked by a foreign
  lock waits only what is left of its ``busy_timeout``, then raises
  :class:`~workspace_lifecycle.errors.StoreBusyError`, rather than a multiple of it.
* A cancelled caller abandons only its wait: the transaction runs to its own COMMIT or ROLLBACK
  on the connection's thread, and its head still rings the doorbell.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ...errors import StoreBusyError
from .errors import fresh, map_exceptions, translated
from .persist import Tx

__all__ = ["Connection", "Job", "nothing", "resolve_threadsafe", "run_bodies", "settle"]

T = TypeVar("T")

#: A write that waited in the queue less than this keeps the full ``busy_timeout`` (no pragma).
QUEUE_SLACK = 0.05
#: The most writes one transaction commits together (a bound on one batch's latency).
MAX_BATCH = 256


class Job(Generic[T]):
    """One function for a connection's thread, and where its result goes.

    A ``write`` job is a transaction body ``fn(tx)``, run inside a batch's ``BEGIN IMMEDIATE ...
    COMMIT``; any other job is ``fn(connection)``, run alone (it manages its own transaction).
    """

    __slots__ = ("fn", "future", "queued", "then", "write")

    def __init__(
        self,
        fn: Callable[[Any], T],
        future: asyncio.Future[T],
        *,
        write: bool,
        then: Callable[[T], object] | None,
    ) -> None:
        self.fn = fn
        self.future = future
        self.write = write
        self.then = then
        self.queued = time.monotonic()


#: What a batch hands back for one write: the job, its value, and its error (None if it committed).
Done = tuple[Job[Any], Any, BaseException | None]


class Connection:
    """A thread that owns one ``sqlite3`` connection and runs jobs on it in the order they were
    submitted, handing each result (or mapped error) back to its caller's loop (what aiosqlite
    does, without reaching into its private API).

    **Group commit**: the write jobs found queued together (submitted while the thread was busy)
    run as one batch, one ``BEGIN IMMEDIATE ... COMMIT``; each write in a batch of several runs
    inside its own savepoint, so a write whose body raises is rolled back alone and the others
    commit. A failed COMMIT fails every write of its batch with the error one write would get.
    The batch's results go back in one ``call_soon_threadsafe``, and ``committed(count, head)``
    runs once per committed batch on that loop, after the callers were resumed.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        path: str,
        busy_timeout: float,
        name: str = "wl-sqlite",
        committed: Callable[[int, int | None], object] | None = None,
        order: threading.Lock | None = None,
    ) -> None:
        self._connect = connect
        self._path = path
        self._busy_timeout = busy_timeout
        self._busy_ms = int(busy_timeout * 1000)
        self._busy_now = self._busy_ms  # the connection's busy_timeout (ms), as last set
        self._committed = committed
        # Shared by the store's threads: the writer holds it from COMMIT until the batch's results
        # are handed to the loop; the others take it to hand over anything read. Whatever saw a
        # commit reaches the loop after the commit's own results (the writers run before the
        # waiters they wake); no read waits for more than a COMMIT.
        self._order = order if order is not None else threading.Lock()
        self._holding = False
        self.commits = 0  # transactions of writes committed (a batch is one)
        # Jobs submitted and not yet settled (on the loop): while the writer's thread has any,
        # the inline path sends its writes here too, behind them (see :mod:`.inline`).
        self.in_flight = 0
        self._jobs: queue.SimpleQueue[Job[Any] | None] = queue.SimpleQueue()
        self._stopped: asyncio.Future[None] | None = None
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._run, name=f"{name}:{path}", daemon=True)
        self._thread.start()

    def submit(
        self,
        fn: Callable[[Any], T],
        *,
        write: bool = False,
        then: Callable[[T], object] | None = None,
    ) -> asyncio.Future[T]:
        """Queue ``fn``; the future resolves on the running loop. ``then(result)`` runs on that
        loop first, even if the caller stopped waiting (only for jobs that are not writes)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.put(Job(fn, future, write=write, then=then))
        return future

    def put(self, job: Job[Any]) -> None:
        """Queue ``job`` (made on the loop its future belongs to)."""
        self.in_flight += 1
        self._jobs.put(job)

    async def stop(self) -> None:
        """Run what is queued, close the connection, end the thread; call it shielded."""
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
            self._jobs.put(None)
        if self._thread.is_alive():
            await self._stopped
        self._thread.join()

    def _run(self) -> None:
        pending: collections.deque[Job[Any]] = collections.deque()
        stopping = False
        try:
            while pending or not stopping:
                if not pending:
                    job = self._jobs.get()
                    if job is None:
                        break
                    pending.append(job)
                # Everything queued meanwhile joins: the writes among it commit together.
                while not stopping:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True
                    else:
                        pending.append(job)
                if not pending[0].write:
                    self._run_alone(pending.popleft())
                    continue
                batch: list[Job[Any]] = []
                while pending and pending[0].write and len(batch) < MAX_BATCH:
                    batch.append(pending.popleft())
                pending.extendleft(reversed(self._run_batch(batch)))
        finally:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            if self._stopped is not None:
                resolve_threadsafe(self._stopped)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _run_alone(self, job: Job[Any]) -> None:
        try:
            with map_exceptions(self._path, self._busy_timeout):
                value, error = job.fn(self._connection()), None
        except BaseException as exc:  # delivered to the caller, raised there
            value, error = None, exc
        with self._order:
            deliver([(job, value, error)], owner=self)

    def _run_batch(self, batch: list[Job[Any]]) -> list[Job[Any]]:
        """Run ``batch`` in one transaction and deliver every result; return the writes that
        never ran (a statement ended the transaction before their turn): they go in the next."""
        done: list[Done] = []
        head: int | None = None
        try:
            try:
                with map_exceptions(self._path, self._busy_timeout):
                    conn = self._connection()
                self._begin(conn, batch, done)
            except BaseException as exc:
                done += [(job, None, fresh(exc)) for job in batch]
                return []
            if not batch:
                return []
            unrun, head, committed = run_bodies(
                conn, batch, done, self._path, self._busy_timeout, before_commit=self._hold
            )
            self.commits += committed
            return unrun
        finally:
            deliver(done, self._committed, head, owner=self)
            if self._holding:
                self._holding = False
                self._order.release()

    def _begin(self, conn: sqlite3.Connection, batch: list[Job[Any]], done: list[Done]) -> None:
        """``BEGIN IMMEDIATE``, waiting for a foreign lock only what is left of the oldest write's
        own ``busy_timeout`` after its time in the queue: behind a write stuck on a foreign lock,
        a write fails when its caller's timeout is up, not after a multiple of it. When the lock
        outlasts it, the writes whose time is up fail (nothing of theirs was written) and the
        others try again with what they have left; ``batch`` keeps the writes that are in."""
        while batch:
            try:
                with map_exceptions(self._path, self._busy_timeout):
                    wanted = self._remaining_ms(batch[0], time.monotonic())
                    if wanted != self._busy_now:
                        conn.execute(f"PRAGMA busy_timeout = {wanted}")
                        self._busy_now = wanted
                    conn.execute("BEGIN IMMEDIATE")
                return
            except StoreBusyError as exc:
                now = time.monotonic()
                left = [j for j in batch[1:] if self._remaining_ms(j, now) > QUEUE_SLACK * 1000]
                done += [(j, None, fresh(exc)) for j in batch if j not in left]
                batch[:] = left

    def _remaining_ms(self, job: Job[Any], now: float) -> int:
        waited = now - job.queued
        return self._busy_ms if waited < QUEUE_SLACK else max(0, self._busy_ms - int(waited * 1000))

    def _hold(self) -> None:
        self._order.acquire()
        self._holding = True


def run_bodies(
    conn: sqlite3.Connection,
    batch: list[Job[Any]],
    done: list[Done],
    path: str,
    busy_timeout: float,
    *,
    before_commit: Callable[[], object] | None = None,
) -> tuple[list[Job[Any]], int | None, bool]:
    """Inside the open transaction: each body, then COMMIT. Nothing is delivered as committed
    unless COMMIT succeeded. Returns the writes that never ran, the log's head after the batch's
    events and whether it committed. Shared by the writer's thread and the inline path
    (:mod:`.inline`): no await in here.

    A body that fails fails alone. Most failures are refusals decided before anything was
    written (a lease lost, a row missing): nothing to undo. So a batch of several runs without
    a savepoint per write (two statements each, a sixth of a write's cost) but inside one
    savepoint of its own; if a body fails after it wrote something (a constraint: rare), the
    batch is rolled back to that savepoint and run again with a savepoint per write."""
    several = len(batch) > 1
    if several:
        conn.execute("SAVEPOINT batch")
    first_done = len(done)
    try:
        try:
            ran, i = _run_each(conn, batch, done, path, busy_timeout, savepoints=False)
        except _PartialWrite:
            conn.execute("ROLLBACK TO batch")
            del done[first_done:]
            ran, i = _run_each(conn, batch, done, path, busy_timeout, savepoints=True)
        if several:
            conn.execute("RELEASE batch")
        committed = False
        if conn.in_transaction:
            if before_commit is not None:
                before_commit()
            with map_exceptions(path, busy_timeout):
                conn.execute("COMMIT")
            committed = True
    except _Lost as lost:  # the transaction is lost: every write that ran fails with it
        ran, i, exc = lost.ran, lost.next, lost.error
        return _lose(conn, batch, done, ran, i, exc, path, busy_timeout)
    except BaseException as exc:
        return _lose(conn, batch, done, [], len(batch), exc, path, busy_timeout, first_done)
    head: int | None = None
    for job, value, appended in ran:
        done.append((job, value, None))
        if appended is not None:
            head = appended  # sequence numbers grow in commit order
    return [], head, committed


class _PartialWrite(Exception):
    """A body failed after it wrote: the batch must run again with a savepoint per write."""


class _Lost(Exception):
    """The transaction ended under a body (SQLite rolled it back)."""

    def __init__(self, ran: list[tuple[Job[Any], Any, int | None]], next: int, error: BaseException) -> None:
        self.ran, self.next, self.error = ran, next, error


def _run_each(
    conn: sqlite3.Connection,
    batch: list[Job[Any]],
    done: list[Done],
    path: str,
    busy_timeout: float,
    *,
    savepoints: bool,
) -> tuple[list[tuple[Job[Any], Any, int | None]], int]:
    """Run each body of ``batch`` in order; the ones that returned, and how many ran."""
    several = len(batch) > 1
    ran: list[tuple[Job[Any], Any, int | None]] = []  # bodies that returned, in order
    i = 0
    while i < len(batch):
        job = batch[i]
        i += 1
        tx = Tx(conn)
        changes = conn.total_changes
        try:
            if savepoints:
                conn.execute("SAVEPOINT w")
            value = job.fn(tx)
            if savepoints:
                conn.execute("RELEASE w")
        except BaseException as exc:  # this write fails alone
            if not conn.in_transaction:
                # The error ended the whole transaction (SQLite rolled it back): the
                # writes before this one are lost too; the ones after it run next.
                done.append((job, None, translated(exc, path, busy_timeout)))
                raise _Lost(ran, i, exc) from exc
            if several and not savepoints and conn.total_changes != changes:
                raise _PartialWrite from exc
            # (Alone in its transaction, a write is undone by rolling the transaction back.)
            done.append((job, None, translated(exc, path, busy_timeout)))
            with map_exceptions(path, busy_timeout):
                if savepoints:
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                elif not several:
                    conn.execute("ROLLBACK")
            continue
        ran.append((job, value, tx.appended_head))
    return ran, i


def _lose(
    conn: sqlite3.Connection,
    batch: list[Job[Any]],
    done: list[Done],
    ran: list[tuple[Job[Any], Any, int | None]],
    i: int,
    exc: BaseException,
    path: str,
    busy_timeout: float,
    first_done: int | None = None,
) -> tuple[list[Job[Any]], int | None, bool]:
    """The transaction is lost: roll back what remains of it; every write that ran fails with
    it (with ``first_done``: every write of the batch that has no answer yet); the writes after
    ``i`` never ran."""
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
    failure = translated(exc, path, busy_timeout)
    if first_done is not None:  # lost outside a body (RELEASE, COMMIT): all of it fails
        answered = {id(job) for job, _, _ in done[first_done:]}
        done += [(job, None, fresh(failure)) for job in batch if id(job) not in answered]
        return [], None, False
    done += [(job, None, fresh(failure)) for job, _, _ in ran]
    return batch[i:], None, False


def deliver(
    done: list[Done],
    committed: Callable[[int, int | None], object] | None = None,
    head: int | None = None,
    owner: Connection | None = None,
) -> None:
    """Hand results back, one ``call_soon_threadsafe`` per loop (a batch has one in practice)."""
    if not done:
        return
    loops: dict[asyncio.AbstractEventLoop, list[Done]] = {}
    for item in done:
        loops.setdefault(item[0].future.get_loop(), []).append(item)
    for loop, items in loops.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, items, committed, head, owner)


def settle(
    done: list[Done],
    committed: Callable[[int, int | None], object] | None,
    head: int | None,
    owner: Connection | None = None,
) -> None:
    # The callers are resumed before the doorbell rings, as if each had rung it itself on
    # return: the writers' tasks run before the sleepers they wake (the order aiosqlite gave).
    if owner is not None:
        owner.in_flight -= len(done)
    count = 0
    for job, value, error in done:
        if not job.future.done():  # else the caller was cancelled
            if error is None:
                job.future.set_result(value)
            else:
                job.future.set_exception(error)
        if error is None:
            if job.write:
                count += 1
            elif job.then is not None:
                job.then(value)
    if count and committed is not None:
        committed(count, head)


def nothing(conn: sqlite3.Connection) -> None:
    pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def resolve_threadsafe(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(_resolve, future)
