"""The SQLite store: the durable embedded default (stdlib ``sqlite3`` on a thread; asyncio only).

Design:

* Writes belong to one connection on a thread of its own (:class:`_Connection`). A write is
  one transaction body run there as a single synchronous function, its result handed back to
  the caller's event loop with ``call_soon_threadsafe``: one thread hop per write instead of
  one per statement. This thread replaced aiosqlite, whose only one-hop route was its private
  ``Connection._execute``; it is the same design (a queue in, one ``call_soon_threadsafe``
  out) at the same cost (a ``SELECT 1`` round trip 50 µs on aiosqlite's route, 52 µs here).
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
* Reads run on a second connection and thread: under WAL a reader never waits for a writer, so
  a read never queues behind a long batch either. It sees everything committed before it was
  submitted (every write its caller awaited), not a write still queued or running (one whose
  caller was cancelled, say). Whatever a read or the watcher learns of a commit reaches the loop
  after that commit's own results (a lock held from COMMIT to their hand-over), so a writer
  still runs before the waiters its commit wakes.
* The log's sequence number is the event's ``INTEGER PRIMARY KEY AUTOINCREMENT`` rowid (never
  reused, even once retention pruned the whole log): appending an event is one INSERT, with no
  head counter to read and rewrite (its ``lastrowid`` is the number it took: what ``RETURNING
  seq`` would give, without fetching a row); the head is SQLite's ``sqlite_sequence`` entry. Schema 3
  migrates older files, keeping their events and numbering.
* Where a write's time goes (``report_agent``, one writer, cProfile of both threads on the
  shared 2-core machine, ~160-185 µs a write): the thread hop about half (waking the loop
  through its self-pipe, then waking the thread for the next write); the statements about 65 µs
  (five: BEGIN IMMEDIATE, one joined read, the agent upsert, the event INSERT, COMMIT; the
  COMMIT of a dirty page is most of it); the decision and its values ~35 µs. Group commit
  spreads BEGIN, COMMIT and the hop over a batch; the statements are prepared once per
  connection (``sqlite3``'s statement cache).
* Adapters decide nothing: each write reads its rows inside the transaction, asks
  :mod:`workspace_lifecycle.writes` what changes, and persists the returned
  :class:`~workspace_lifecycle.writes.Write` generically (its events, then its rows).
* Driver errors become the library's in one place, :func:`map_exceptions`; nothing above this
  module sees a ``sqlite3`` exception.
* Each write has its own deadline: a write that queued behind another one blocked by a foreign
  lock waits only what is left of its ``busy_timeout``, then raises
  :class:`~workspace_lifecycle.errors.StoreBusyError`, rather than a multiple of it.
* Wake-ups go through the store's :class:`~.base.Doorbell`, rung with the log's **head**:
  writes through this store ring it at once. Commits by other processes are seen by one watcher
  thread per store, which checks ``PRAGMA data_version`` (~3 µs; it changes only when another
  connection commits) on its own connection while somebody waits, and never runs a query per
  waiter. The interval adapts: every ``poll_min`` (1 ms) for ``burst`` (0.25 s) after a
  change, since a build's events come in bursts, and every ``poll_interval`` (4 ms) otherwise.
  Measured (``bench/sqlite_wakeup.py``): a fixed 2 ms poll costs ~1.2% of a core while idle;
  the 4 ms idle interval halves that and keeps p99 < 5 ms.
* The watcher outlives failures: on an error (a disk I/O error, a file briefly unavailable) it
  logs once, reconnects with backoff and, once back, rings with the head it finds, so commits
  made meanwhile still wake their waiters. If the reconnect fails too, waiters get
  :class:`~workspace_lifecycle.errors.StoreUnavailableError` instead of sleeping through commits
  nobody would report; once the watcher is back they sleep again.
* A cancelled caller abandons only its wait: the transaction runs to its own COMMIT or ROLLBACK
  on the connection's thread, and its head still rings the doorbell. Closing is shielded from
  cancellation and joins its threads (they are daemon threads, so a store left open never holds
  the interpreter at exit); an ``open`` cancelled midway closes what it started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import functools
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs

import anyio

from .. import writes
from ..errors import (
    CorruptStateError,
    CursorExpiredError,
    NotFoundError,
    StoreBusyError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
    UnsupportedBackendError,
)
from ..values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    Deadline,
    JobStatus,
    Lease,
    Policy,
    Reason,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
    parse_deadline,
    parse_enum,
    parse_lease,
    parse_policy,
)
from .base import DEFAULT_LEASE_SECONDS, ArmedDeadlines, ChatRow, Doorbell, Outcome, Store

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "map_exceptions"]

log = logging.getLogger("workspace_lifecycle.sqlite")

T = TypeVar("T")

SCHEMA_VERSION = 5

_SCHEMA = """
CREATE TABLE chats (
    chat_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    workspace_id TEXT
);
CREATE TABLE workspaces (
    workspace_id TEXT PRIMARY KEY,
    chat_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    latest_build_id TEXT
);
CREATE TABLE builds (
    build_id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    transition TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    has_agent INTEGER,
    worker TEXT,
    queued_seq INTEGER NOT NULL,
    UNIQUE (workspace_id, number)
);
CREATE INDEX builds_by_status ON builds (status, queued_seq);
CREATE TABLE agents (
    workspace_id TEXT PRIMARY KEY,
    build_number INTEGER NOT NULL,
    lifecycle TEXT NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    build_number INTEGER NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX events_by_time ON events (at);
CREATE TABLE log_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    head INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL
);
INSERT INTO log_state (id, head, pruned_through) VALUES (1, 0, 0);
"""

#: Forward migrations: MIGRATIONS[n] takes a database at version n to n + 1.
MIGRATIONS: dict[int, str] = {
    0: _SCHEMA,
    # Build parameters (JSON object of strings) and a failed build's details (JSON object).
    1: "ALTER TABLE builds ADD COLUMN parameters TEXT NOT NULL DEFAULT '{}';"
    " ALTER TABLE builds ADD COLUMN details TEXT",
    # The sequence number is the event's rowid (AUTOINCREMENT: never reused, even once retention
    # pruned the whole log), so a write appends an event in one INSERT instead of reading and
    # rewriting a head counter; the head moves to sqlite_sequence, starting where it was.
    2: """
CREATE TABLE events_v3 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    build_number INTEGER NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL
);
INSERT INTO events_v3 (seq, kind, workspace_id, chat_id, build_number, payload, at)
    SELECT seq, kind, workspace_id, chat_id, build_number, payload, at FROM events ORDER BY seq;
DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;
CREATE INDEX events_by_time ON events (at);
DELETE FROM sqlite_sequence WHERE name = 'events';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'events', max(head, coalesce((SELECT max(seq) FROM events), 0)) FROM log_state;
ALTER TABLE log_state DROP COLUMN head
""",
    # Between turns: a chat's policy, a workspace's armed deadline, why a build was fired.
    3: "ALTER TABLE chats ADD COLUMN idle_stop_after REAL;"
    " ALTER TABLE chats ADD COLUMN delete_after_stopped REAL;"
    " ALTER TABLE workspaces ADD COLUMN deadline_at REAL;"
    " ALTER TABLE workspaces ADD COLUMN deadline_reason TEXT;"
    " ALTER TABLE builds ADD COLUMN reason TEXT NOT NULL DEFAULT 'request';"
    " CREATE INDEX workspaces_by_deadline ON workspaces (deadline_at) WHERE deadline_at IS NOT NULL",
    # Leases: a claimed build's fencing token and when its lease runs out (only while in flight).
    # A build in flight now was claimed without one: it gets a lease of the old reaper's
    # stale_after (900 s, wall clock), so a reaper fails it if its worker never finishes it.
    4: "ALTER TABLE builds ADD COLUMN lease_token TEXT;"
    " ALTER TABLE builds ADD COLUMN lease_expires_at REAL;"
    " CREATE INDEX builds_by_lease ON builds (lease_expires_at) WHERE lease_expires_at IS NOT NULL;"
    " UPDATE builds SET lease_token = lower(hex(randomblob(16))),"
    " lease_expires_at = (julianday('now') - 2440587.5) * 86400.0 + 900"
    " WHERE status IN ('running', 'canceling')",
}

#: The finished statuses as an SQL list: a finished build holds no lease, whatever its row says
#: (one finished by code from before leases keeps the expiry migration 5 gave it).
_FINISHED = "(" + ", ".join(f"'{status.value}'" for status in JobStatus if status.finished) + ")"

_ACCEPTED = "sqlite:///relative/path.db or sqlite:////absolute/path.db"

#: SQLite's integers are signed 64-bit: a sequence number beyond this is beyond every head.
_MAX_INT = 2**63 - 1
#: ``PRAGMA busy_timeout`` takes milliseconds in a C int.
_MAX_BUSY_TIMEOUT = (2**31 - 1) // 1000
#: A write that waited in the queue less than this keeps the full ``busy_timeout`` (no pragma).
_QUEUE_SLACK = 0.05
#: The most writes one transaction commits together (a bound on one batch's latency).
_MAX_BATCH = 256
#: The watcher's longest pause between reconnection attempts.
_MAX_BACKOFF = 1.0


def _parse_url(url: str) -> tuple[str, dict[str, str]]:
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep or not rest.startswith("/"):
        raise ValueError(f"malformed SQLite URL {url!r}; accepted forms: {_ACCEPTED}")
    path, _, query = rest[1:].partition("?")
    if not path or path == ":memory:":
        raise ValueError(
            f"SQLite URL {url!r} names no file; accepted forms: {_ACCEPTED} (use memory:// to keep nothing)"
        )
    options = {k: v[-1] for k, v in parse_qs(query, strict_parsing=False).items()} if query else {}
    return path, options


# --- driver errors, mapped in one place -----------------------------------------------------------

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
        raise _translated(exc, path, busy_timeout) from None


def _translated(exc: BaseException, path: str, busy_timeout: float) -> BaseException:
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


# --- the connection's threads ---------------------------------------------------------------------


class _Job(Generic[T]):
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
_Done = tuple[_Job[Any], Any, BaseException | None]


class _Connection:
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
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
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
        self._jobs.put(_Job(fn, future, write=write, then=then))
        return future

    async def stop(self) -> None:
        """Run what is queued, close the connection, end the thread; call it shielded."""
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
            self._jobs.put(None)
        if self._thread.is_alive():
            await self._stopped
        self._thread.join()

    def _run(self) -> None:
        pending: collections.deque[_Job[Any]] = collections.deque()
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
                batch: list[_Job[Any]] = []
                while pending and pending[0].write and len(batch) < _MAX_BATCH:
                    batch.append(pending.popleft())
                pending.extendleft(reversed(self._run_batch(batch)))
        finally:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            if self._stopped is not None:
                _resolve_threadsafe(self._stopped)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _run_alone(self, job: _Job[Any]) -> None:
        try:
            with map_exceptions(self._path, self._busy_timeout):
                value, error = job.fn(self._connection()), None
        except BaseException as exc:  # delivered to the caller, raised there
            value, error = None, exc
        with self._order:
            _deliver([(job, value, error)])

    def _run_batch(self, batch: list[_Job[Any]]) -> list[_Job[Any]]:
        """Run ``batch`` in one transaction and deliver every result; return the writes that
        never ran (a statement ended the transaction before their turn): they go in the next."""
        done: list[_Done] = []
        head: int | None = None
        try:
            try:
                with map_exceptions(self._path, self._busy_timeout):
                    conn = self._connection()
                self._begin(conn, batch, done)
            except BaseException as exc:
                done += [(job, None, _fresh(exc)) for job in batch]
                return []
            if not batch:
                return []
            unrun, head = self._run_bodies(conn, batch, done)
            return unrun
        finally:
            _deliver(done, self._committed, head)
            if self._holding:
                self._holding = False
                self._order.release()

    def _begin(self, conn: sqlite3.Connection, batch: list[_Job[Any]], done: list[_Done]) -> None:
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
                left = [j for j in batch[1:] if self._remaining_ms(j, now) > _QUEUE_SLACK * 1000]
                done += [(j, None, _fresh(exc)) for j in batch if j not in left]
                batch[:] = left

    def _remaining_ms(self, job: _Job[Any], now: float) -> int:
        waited = now - job.queued
        return self._busy_ms if waited < _QUEUE_SLACK else max(0, self._busy_ms - int(waited * 1000))

    def _run_bodies(
        self, conn: sqlite3.Connection, batch: list[_Job[Any]], done: list[_Done]
    ) -> tuple[list[_Job[Any]], int | None]:
        """Inside the open transaction: each body (in its savepoint when the batch holds more
        than one), then COMMIT. Nothing is delivered as committed unless COMMIT succeeded.
        Returns the writes that never ran and the log's head after the batch's events."""
        several = len(batch) > 1
        ran: list[tuple[_Job[Any], Any, int | None]] = []  # bodies that returned, in order
        i = 0
        try:
            while i < len(batch):
                job = batch[i]
                i += 1
                tx = _Tx(conn)
                try:
                    if several:
                        conn.execute("SAVEPOINT w")
                    value = job.fn(tx)
                    if several:
                        conn.execute("RELEASE w")
                except BaseException as exc:  # this write fails alone
                    done.append((job, None, _translated(exc, self._path, self._busy_timeout)))
                    if not conn.in_transaction:
                        # The error ended the whole transaction (SQLite rolled it back): the
                        # writes before this one are lost too; the ones after it run next.
                        raise
                    with map_exceptions(self._path, self._busy_timeout):
                        if several:
                            conn.execute("ROLLBACK TO w")
                            conn.execute("RELEASE w")
                        else:
                            conn.execute("ROLLBACK")
                    continue
                ran.append((job, value, tx.appended_head))
            if conn.in_transaction:
                self._order.acquire()
                self._holding = True
                with map_exceptions(self._path, self._busy_timeout):
                    conn.execute("COMMIT")
                self.commits += 1
        except BaseException as exc:  # the transaction is lost: every write that ran fails with it
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            failure = _translated(exc, self._path, self._busy_timeout)
            done += [(job, None, _fresh(failure)) for job, _, _ in ran]
            return batch[i:], None
        head: int | None = None
        for job, value, appended in ran:
            done.append((job, value, None))
            if appended is not None:
                head = appended  # sequence numbers grow in commit order
        return [], head


def _fresh(exc: BaseException) -> BaseException:
    """A copy of ``exc`` to raise in one more caller (one object raised in several tasks would
    collect all their tracebacks)."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc


def _deliver(
    done: list[_Done],
    committed: Callable[[int, int | None], object] | None = None,
    head: int | None = None,
) -> None:
    """Hand results back, one ``call_soon_threadsafe`` per loop (a batch has one in practice)."""
    if not done:
        return
    loops: dict[asyncio.AbstractEventLoop, list[_Done]] = {}
    for item in done:
        loops.setdefault(item[0].future.get_loop(), []).append(item)
    for loop, items in loops.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, items, committed, head)


def _settle(
    done: list[_Done], committed: Callable[[int, int | None], object] | None, head: int | None
) -> None:
    # The callers are resumed before the doorbell rings, as if each had rung it itself on
    # return: the writers' tasks run before the sleepers they wake (the order aiosqlite gave).
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


def _nothing(conn: sqlite3.Connection) -> None:
    pass


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_threadsafe(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(RuntimeError):
        future.get_loop().call_soon_threadsafe(_resolve, future)


def _finite_positive(name: str, value: float, most: float = math.inf) -> None:
    if not (isinstance(value, int | float) and 0 < value <= most and math.isfinite(value)):
        bound = f" (at most {most:g})" if math.isfinite(most) else ""
        raise ValueError(f"{name} must be a positive, finite number of seconds{bound}, not {value!r}")


class SQLiteStore(Store):
    """A store in one SQLite file, shared safely by any number of processes.

    ``busy_timeout`` (seconds) bounds how long a write waits for another writer's lock before
    :class:`~workspace_lifecycle.errors.StoreBusyError`; ``poll_interval`` (seconds) is the
    longest pause between the watcher's checks for other processes' commits while somebody
    waits (it checks every millisecond for a quarter second after a change); ``retention``
    (seconds, optional) prunes older events as writes happen.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.004,
        retention: float | None = None,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        _finite_positive("busy_timeout", busy_timeout, _MAX_BUSY_TIMEOUT)
        _finite_positive("poll_interval", poll_interval, 3600)
        if retention is not None:
            _finite_positive("retention", retention)
        if not isinstance(synchronous, str) or synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = os.fspath(path)
        self.url = f"sqlite:///{self.path}"
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self.poll_min = min(0.001, poll_interval)  # right after a change, for ``burst`` seconds
        self.burst = 0.25
        self.watcher_polls = 0  # data_version checks made by the watcher thread
        self.retention = retention
        self._synchronous = synchronous.upper()
        self._clock = clock
        self._connection: _Connection | None = None  # the writer's thread
        self._reader: _Connection | None = None  # the readers' thread
        self._order = threading.Lock()  # see _Connection: what saw a commit follows its results
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._doorbell = Doorbell()
        self._watcher: threading.Thread | None = None
        self._watch_stop = threading.Event()
        self._watch_wanted = threading.Event()
        self._watch_stopped: asyncio.Future[None] | None = None
        self._watch_failure: str | None = None  # why the watcher is down, while it is
        self._last_prune = 0.0
        self.transactions = 0  # writes committed through this store (see also ``commits``)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteStore:
        path, query = _parse_url(url)
        for key, value in query.items():
            if key not in ("busy_timeout", "poll_interval", "retention", "synchronous"):
                raise ValueError(f"unknown SQLite URL option {key!r} in {url!r}")
            try:
                options.setdefault(key, value if key == "synchronous" else float(value))
            except ValueError:
                raise ValueError(f"SQLite URL option {key}={value!r} is not a number") from None
        return cls(path, **options)

    # --- opening and closing ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """A new connection to the file (the writer's and reader's threads and the watcher each
        make one)."""
        return sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)

    def _connect_reader(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA query_only = 1")
        return conn

    async def open(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise UnsupportedBackendError(
                "the SQLite store needs the asyncio backend (its results return through asyncio "
                "futures); use memory:// under trio"
            ) from None
        if self._closed:
            raise StoreClosedError("the SQLite store is closed; open a new one")
        if self._connection is not None:
            return
        self._check_path()
        self._loop = loop
        self._connection = _Connection(
            self._connect,
            path=self.path,
            busy_timeout=self.busy_timeout,
            committed=self._committed,
            order=self._order,
        )
        try:
            head = await self._connection.submit(self._setup)
            # Reads get a connection and a thread of their own: under WAL they never wait for a
            # writer, so they must not queue behind a long batch of writes either.
            self._reader = _Connection(
                self._connect_reader,
                path=self.path,
                busy_timeout=self.busy_timeout,
                name="wl-sqlite-read",
                order=self._order,
            )
            await self._reader.submit(_nothing)  # connects now: a file it cannot open fails the open
        except BaseException:
            # Cancelled or failed midway: the thread and its connection go with it.
            self._closed = True
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            raise
        self._doorbell.saw(head)

    def _check_path(self) -> None:
        """Refuse, in one sentence naming the path, a file SQLite could not use."""
        path = self.path
        parent = os.path.dirname(os.path.abspath(path))
        try:
            if os.path.isdir(path):
                raise ValueError(f"SQLite path {path!r} is a directory, not a database file")
            if not os.path.isdir(parent):
                what = "is not a directory" if os.path.exists(parent) else "does not exist"
                raise ValueError(f"cannot create SQLite database {path!r}: directory {parent!r} {what}")
            if os.path.exists(path):
                # No write bit at all means somebody marked the file read-only: refuse it even for
                # root, whom os.access() (and SQLite) would let write anyway.
                if not os.access(path, os.R_OK | os.W_OK) or not os.stat(path).st_mode & 0o222:
                    raise StoreError(
                        f"SQLite database {path!r} is read-only (the store writes to it); "
                        "make it writable or pass another file"
                    )
            elif not os.access(parent, os.W_OK):
                raise StoreError(
                    f"cannot create SQLite database {path!r}: directory {parent!r} is not writable"
                )
        except OSError as exc:  # a name too long, a NUL, a loop of links...
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ValueError(f"SQLite path {path!r} cannot be used: {reason}") from None
        except TypeError as exc:
            raise ValueError(f"SQLite path {path!r} cannot be used: {exc}") from None

    def _setup(self, conn: sqlite3.Connection) -> int:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"SQLite database {self.path!r} cannot use WAL mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"SQLite database {self.path!r} has schema version {version}, newer than this "
                    f"library knows ({SCHEMA_VERSION}); upgrade workspace-lifecycle"
                )
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                version += 1
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return _head(conn)

    async def aclose(self) -> None:
        # Shielded: a close cancelled halfway (``async with`` left by a timeout) would leave the
        # connection's thread and files open for good, since later calls find the store closed.
        with anyio.CancelScope(shield=True):
            if self._closed and self._connection is None and self._reader is None and self._watcher is None:
                return
            self._closed = True
            self._doorbell.ring()
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop the watcher, then the connection's thread (after what is queued); join both."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            if self._watch_stopped is None:
                self._watch_stopped = asyncio.get_running_loop().create_future()
            self._watch_stop.set()
            self._watch_wanted.set()
            if watcher.is_alive():
                await self._watch_stopped
            watcher.join()
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.stop()
        conn, self._connection = self._connection, None
        if conn is not None:
            await conn.stop()

    # --- running transactions ----------------------------------------------------------------

    def _check(self) -> _Connection:
        if self._closed or self._connection is None:
            raise StoreClosedError("the SQLite store is closed")
        return self._connection

    async def _write(self, body: Callable[[_Tx], T]) -> T:
        """Run ``body`` inside ``BEGIN IMMEDIATE ... COMMIT`` on the writer's thread, in one hop
        (possibly committed together with other writes queued meanwhile: group commit); its
        events share the commit."""
        result: T = await self._check().submit(body, write=True)
        if self.retention is not None:
            now = self._clock()
            if now - self._last_prune > min(self.retention / 10, 60.0):
                self._last_prune = now
                await self.prune_events(now - self.retention)
        return result

    @property
    def commits(self) -> int:
        """Write transactions committed so far: with group commit, fewer than the writes."""
        return 0 if self._connection is None else self._connection.commits

    def _committed(self, count: int, head: int | None) -> None:
        """On the loop, once per committed batch of ``count`` writes (their callers may have
        stopped waiting): ring the doorbell once with the batch's head."""
        self.transactions += count
        if head is not None:
            self._doorbell.saw(head)

    async def _read(
        self, fn: Callable[[sqlite3.Connection], T], then: Callable[[T], object] | None = None
    ) -> T:
        """Run ``fn`` in one read transaction (a consistent snapshot under WAL) on the readers'
        thread, which never waits for the writer's."""
        self._check()
        reader = self._reader
        assert reader is not None

        def tx(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")

        return await reader.submit(tx, then=then)

    # --- chats and workspaces --------------------------------------------------------------

    async def register_chat(
        self,
        chat_id: str,
        owner: str,
        *,
        policy: Policy | None = None,
        default_policy: Policy | None = None,
    ) -> Chat:
        def body(tx: _Tx) -> Chat:
            existing = _chat(tx.conn, chat_id)
            chat = writes.register_chat(
                existing, chat_id, owner, policy=policy, default=default_policy or Policy()
            )
            if chat is None:
                assert existing is not None
                return existing
            tx.persist(writes.Write(events=(), chat=chat))
            return chat

        return await self._write(body)

    async def get_chat(self, chat_id: str) -> Chat | None:
        return await self._read(lambda conn: _chat(conn, chat_id))

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        return await self._read(lambda conn: _facts(conn, workspace_id))

    async def get_build(self, build_id: str) -> Build:
        return await self._read(lambda conn: _build_by_id(conn, build_id))

    async def create_workspace(
        self,
        chat_id: str,
        name: str,
        *,
        expected_workspace_id: str | None,
        parameters: Mapping[str, str] | None = None,
    ) -> Outcome:
        def body(tx: _Tx) -> Outcome:
            chat = _chat(tx.conn, chat_id)
            if chat is None:
                raise NotFoundError(f"no chat {chat_id!r}")
            write = writes.create_workspace(
                chat,
                expected_workspace_id=expected_workspace_id,
                workspace_id=str(uuid.uuid4()),
                build_id=str(uuid.uuid4()),
                name=name,
                at=self._clock(),
                replaced=_facts(tx.conn, expected_workspace_id) if expected_workspace_id else None,
                parameters=parameters,
            )
            if write is None:
                if chat.workspace_id is None:
                    raise NotFoundError(f"chat {chat_id!r} is bound to no workspace")
                return Outcome(fired=False, build=None, facts=_facts(tx.conn, chat.workspace_id))
            tx.persist(write)
            assert write.workspace is not None
            facts = _facts(tx.conn, write.workspace.workspace_id, tx.appended_head)
            return Outcome(fired=True, build=write.build, facts=facts)

        return await self._write(body)

    async def request_build(
        self,
        workspace_id: str,
        transition: Transition,
        *,
        expected_build_number: int,
        parameters: Mapping[str, str] | None = None,
    ) -> Outcome:
        def body(tx: _Tx) -> Outcome:
            facts = _facts(tx.conn, workspace_id)
            chat = _chat(tx.conn, facts.workspace.chat_id)
            write = writes.request_build(
                facts,
                chat=chat,
                transition=transition,
                expected_build_number=expected_build_number,
                build_id=str(uuid.uuid4()),
                at=self._clock(),
                parameters=parameters,
            )
            if write is None:
                return Outcome(fired=False, build=None, facts=facts)
            tx.persist(write)
            return Outcome(
                fired=True, build=write.build, facts=_facts(tx.conn, workspace_id, tx.appended_head)
            )

        return await self._write(body)

    async def touch(self, workspace_id: str) -> Deadline | None:
        def body(tx: _Tx) -> Deadline | None:
            facts = _facts(tx.conn, workspace_id)
            chat = _chat(tx.conn, facts.workspace.chat_id)
            write = writes.touch(facts, chat.policy if chat else Policy(), at=self._clock())
            if write is None:
                return facts.workspace.deadline
            tx.persist(write)
            assert write.workspace is not None
            return write.workspace.deadline

        return await self._write(body)

    async def fire_deadline(self, workspace_id: str, expected: Deadline) -> Outcome:
        def body(tx: _Tx) -> Outcome:
            facts = _facts(tx.conn, workspace_id)
            write = writes.fire_deadline(
                facts,
                chat=_chat(tx.conn, facts.workspace.chat_id),
                expected=expected,
                build_id=str(uuid.uuid4()),
                at=self._clock(),
            )
            if write is None:
                return Outcome(fired=False, build=None, facts=facts)
            tx.persist(write)
            return Outcome(
                fired=write.build is not None, build=write.build, facts=_facts(tx.conn, workspace_id)
            )

        return await self._write(body)

    async def armed_deadlines(self) -> ArmedDeadlines:
        def fn(conn: sqlite3.Connection) -> ArmedDeadlines:
            rows = conn.execute(
                "SELECT workspace_id, deadline_at, deadline_reason FROM workspaces WHERE deadline_at IS NOT NULL"
            ).fetchall()
            return ArmedDeadlines.read(
                _head(conn), [(r[0], functools.partial(parse_deadline, r[1], r[2], key=r[0])) for r in rows]
            )

        return await self._read(fn)

    async def list_chats(self) -> Sequence[ChatRow]:
        def fn(conn: sqlite3.Connection) -> list[ChatRow]:
            head = _head(conn)
            rows = conn.execute(f"SELECT {_CHAT_COLUMNS} FROM chats ORDER BY rowid").fetchall()
            chats = [_chat_row(r) for r in rows]
            return [
                ChatRow.read(c, functools.partial(_facts, conn, c.workspace_id or "", head)) for c in chats
            ]

        return await self._read(fn)

    # --- the provisioner side ---------------------------------------------------------------

    async def claim_build(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Build | None:
        writes.check_lease_seconds(lease_seconds)

        def body(tx: _Tx) -> Build | None:
            row = tx.conn.execute(
                f"SELECT {_BUILD_COLUMNS} FROM builds WHERE status = 'pending' ORDER BY queued_seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            build = _build(row)
            write = writes.claim_build(
                build,
                _workspace(tx.conn, build.workspace_id),
                worker=worker,
                at=self._clock(),
                token=uuid.uuid4().hex,
                lease_seconds=lease_seconds,
            )
            tx.persist(write)
            return write.build

        return await self._write(body)

    async def renew_lease(
        self, build_id: str, token: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> float:
        def body(tx: _Tx) -> float:
            build = _build_by_id(tx.conn, build_id)
            write = writes.renew_lease(
                build,
                _workspace(tx.conn, build.workspace_id),
                token,
                at=self._clock(),
                lease_seconds=lease_seconds,
            )
            tx.persist(write)
            assert write.build is not None and write.build.lease_expires_at is not None
            return write.build.lease_expires_at

        return await self._write(body)

    async def next_lease_expiry(self, *, skip: Collection[str] = ()) -> Lease | None:
        passed = list(skip)

        def fn(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(
                "SELECT build_id, workspace_id, worker, lease_token, lease_expires_at FROM builds"
                f" WHERE lease_expires_at IS NOT NULL AND status NOT IN {_FINISHED}"
                " AND build_id NOT IN (SELECT value FROM json_each(?))"
                " ORDER BY lease_expires_at LIMIT 1",
                (json.dumps(passed),),
            ).fetchone()
            return None if row is None else Lease.read(*row)

        return await self._read(fn)

    async def expire_lease(self, build_id: str, token: str) -> Build | None:
        def body(tx: _Tx) -> Build | None:
            try:
                build = _build_by_id(tx.conn, build_id)
            except NotFoundError:
                return None
            ws = _workspace(tx.conn, build.workspace_id)
            chat = _chat(tx.conn, ws.chat_id)
            write = writes.expire_lease(
                build, ws, token, at=self._clock(), policy=chat.policy if chat else None
            )
            if write is None:
                return None
            tx.persist(write)
            return write.build

        return await self._write(body)

    async def finish_build(
        self,
        build_id: str,
        status: JobStatus | str,
        error: str | None = None,
        *,
        has_agent: bool = True,
        details: Mapping[str, Any] | None = None,
        lease: str | None = None,
    ) -> Build:
        status = writes.parse_status(status)

        def body(tx: _Tx) -> Build:
            build = _build_by_id(tx.conn, build_id)
            ws = _workspace(tx.conn, build.workspace_id)
            chat = _chat(tx.conn, ws.chat_id)
            write = writes.finish_build(
                build,
                ws,
                status,
                error,
                has_agent=has_agent,
                at=self._clock(),
                details=details,
                policy=chat.policy if chat else None,
                lease=lease,
            )
            tx.persist(write)
            assert write.build is not None
            return write.build

        return await self._write(body)

    async def report_agent(
        self, workspace_id: str, lifecycle: AgentLifecycle | str, *, lease: str | None = None
    ) -> None:
        lifecycle = writes.parse_lifecycle(lifecycle)

        await self._write(lambda tx: _report_agent(tx, workspace_id, lifecycle, self._clock, lease))

    # --- the event log ----------------------------------------------------------------------

    async def head(self) -> int:
        return await self._read(_head, then=self._doorbell.saw)

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        limit = min(limit, _MAX_INT)
        if after >= _MAX_INT or limit <= 0:
            self._check()
            return []  # no sequence number is beyond SQLite's largest integer

        def fn(conn: sqlite3.Connection) -> list[StoreEvent]:
            pruned = conn.execute("SELECT pruned_through FROM log_state").fetchone()[0]
            if after < pruned:
                raise CursorExpiredError(after, pruned + 1)
            rows = conn.execute(
                "SELECT seq, kind, workspace_id, chat_id, build_number, payload, at FROM events "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            return [
                StoreEvent.from_row(
                    seq=r[0],
                    kind=r[1],
                    workspace_id=r[2],
                    chat_id=r[3],
                    build_number=r[4],
                    payload=r[5],
                    at=r[6],
                )
                for r in rows
            ]

        return await self._read(fn, then=self._saw_events)

    def _saw_events(self, events: list[StoreEvent]) -> None:
        if events:
            self._doorbell.saw(events[-1].seq)

    async def wait_for_change(self, after: int) -> None:
        self._check()
        self._check_watcher()
        self._watch_wanted.set()
        if self._watcher is None:
            assert self._loop is not None
            self._watcher = threading.Thread(
                target=self._watch, args=(self._loop,), name=f"wl-sqlite-watch:{self.path}", daemon=True
            )
            self._watcher.start()
        try:
            # The recheck reads the head afresh once this task sleeps: another process's commit
            # since our last read shows there (one cheap query; not repeated while we sleep).
            await self._doorbell.sleep(after, recheck=self.head)
        finally:
            if not self._doorbell.sleepers:
                self._watch_wanted.clear()
        self._check()
        self._check_watcher()

    def _check_watcher(self) -> None:
        if self._watch_failure is not None:
            raise StoreUnavailableError(self._watch_failure)

    # --- the cross-process watcher (a thread) -------------------------------------------------

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread: while somebody waits, check ``PRAGMA data_version``; every ``poll_min`` for
        ``burst`` seconds after a change, every ``poll_interval`` otherwise. On an error, log once,
        reconnect with backoff, and ring with the head found on reconnecting; if the reconnect
        fails too, tell the waiters (they raise) until it succeeds."""
        conn: sqlite3.Connection | None = None
        version = 0
        last_change = -math.inf
        outage: float | None = None  # when the current outage began
        failures = 0

        def post(callback: Callable[..., object], *args: Any) -> bool:
            try:
                with self._order:  # after the results of the commits it saw (see _Connection)
                    loop.call_soon_threadsafe(callback, *args)
                return True
            except RuntimeError:  # the loop closed under us
                return False

        try:
            while not self._watch_stop.is_set():
                if outage is not None:
                    if self._watch_stop.wait(min(self.poll_interval * 2**failures, _MAX_BACKOFF)):
                        break
                elif not self._watch_wanted.wait(timeout=1.0):
                    continue
                elif conn is not None:
                    recent = time.monotonic() - last_change < self.burst
                    if self._watch_stop.wait(self.poll_min if recent else self.poll_interval):
                        break
                try:
                    with map_exceptions(self.path, self.busy_timeout):
                        if conn is None:
                            conn = self._connect()
                            version = conn.execute("PRAGMA data_version").fetchone()[0]
                            # Commits made while nobody watched (or while down) ring now.
                            if not post(self._doorbell.saw, _head(conn)):
                                return
                            if outage is not None:
                                log.warning(
                                    "SQLite watcher on %r is back after %.1fs",
                                    self.path,
                                    time.monotonic() - outage,
                                )
                                outage, failures = None, 0
                                if not post(self._watcher_back):
                                    return
                            continue
                        self.watcher_polls += 1
                        now = conn.execute("PRAGMA data_version").fetchone()[0]
                        if now != version:
                            version = now
                            last_change = time.monotonic()
                            # One read per change (never per idle poll): a commit without events,
                            # such as register_chat, must not wake every waiter for nothing.
                            if not post(self._doorbell.saw, _head(conn)):
                                return
                except Exception as exc:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                    failures += 1
                    if outage is None:
                        outage = time.monotonic()
                        log.warning(
                            "SQLite watcher on %r failed (%s); reconnecting, other processes' "
                            "commits are noticed again once it is back",
                            self.path,
                            exc,
                        )
                    elif failures == 2:  # the reconnect failed too: waiters must not sleep on
                        failure = StoreUnavailableError(
                            f"cannot watch SQLite database {self.path!r} for other processes' commits: {exc}"
                        )
                        if not post(self._watcher_down, failure):
                            return
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            if self._watch_stopped is not None:
                _resolve_threadsafe(self._watch_stopped)

    def _watcher_down(self, failure: str) -> None:
        self._watch_failure = failure
        self._doorbell.ring()

    def _watcher_back(self) -> None:
        self._watch_failure = None

    async def prune_events(self, older_than: float) -> int:
        def body(tx: _Tx) -> int:
            conn = tx.conn
            # Prune a prefix of the log: everything before the first event at or after the cut.
            first_kept = conn.execute("SELECT min(seq) FROM events WHERE at >= ?", (older_than,)).fetchone()[
                0
            ]
            if first_kept is None:
                through = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
            else:
                through = first_kept - 1
            if through is None:
                return 0
            count = conn.execute("DELETE FROM events WHERE seq <= ?", (through,)).rowcount
            conn.execute("UPDATE log_state SET pruned_through = max(pruned_through, ?)", (through,))
            return int(count)

        return await self._write(body)


# --- persisting a decided write ---------------------------------------------------------------------


class _Tx:
    """One write's part of a transaction: its connection, and :meth:`persist` for what
    ``writes`` decided."""

    __slots__ = ("appended_head", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.appended_head: int | None = None  # the log's head after this write's events

    def persist(self, write: writes.Write) -> None:
        """Apply one decided write, generically: its events (each numbered by its INSERT, in
        commit order), then its rows."""
        conn = self.conn
        last = self.appended_head
        for e in write.events:
            last = conn.execute(
                _INSERT_EVENT,
                (e.kind.value, e.workspace_id, e.chat_id, e.build_number, json.dumps(e.payload()), e.at),
            ).lastrowid
        self.appended_head = last
        if write.workspace is not None:
            ws = write.workspace
            deadline = ws.deadline
            conn.execute(
                "INSERT INTO workspaces (workspace_id, chat_id, owner, name, deleted, deadline_at, "
                "deadline_reason) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (workspace_id) DO UPDATE SET chat_id = excluded.chat_id, "
                "owner = excluded.owner, name = excluded.name, deleted = excluded.deleted, "
                "deadline_at = excluded.deadline_at, deadline_reason = excluded.deadline_reason",
                (
                    ws.workspace_id,
                    ws.chat_id,
                    ws.owner,
                    ws.name,
                    ws.deleted,
                    deadline.at if deadline else None,
                    deadline.reason.value if deadline else None,
                ),
            )
        if write.chat is not None:
            chat = write.chat
            conn.execute(
                "INSERT INTO chats (chat_id, owner, workspace_id, idle_stop_after, delete_after_stopped) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (chat_id) DO UPDATE SET owner = excluded.owner, "
                "workspace_id = excluded.workspace_id, idle_stop_after = excluded.idle_stop_after, "
                "delete_after_stopped = excluded.delete_after_stopped",
                (
                    chat.chat_id,
                    chat.owner,
                    chat.workspace_id,
                    chat.policy.idle_stop_after,
                    chat.policy.delete_after_stopped,
                ),
            )
        build = write.build
        if build is not None:
            details = None if build.details is None else json.dumps(build.details)
            if not write.queued:
                conn.execute(
                    "UPDATE builds SET status = ?, error = ?, has_agent = ?, worker = ?, details = ?,"
                    " lease_token = ?, lease_expires_at = ? WHERE build_id = ?",
                    (
                        build.status.value,
                        build.error,
                        build.has_agent,
                        build.worker,
                        details,
                        build.lease_token,
                        build.lease_expires_at,
                        build.build_id,
                    ),
                )
            else:  # a new build: the latest, claimed in the order it was queued
                conn.execute(
                    "INSERT INTO builds (build_id, workspace_id, number, transition, status, error, "
                    "has_agent, worker, queued_seq, parameters, details, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        build.build_id,
                        build.workspace_id,
                        build.number,
                        build.transition.value,
                        build.status.value,
                        build.error,
                        build.has_agent,
                        build.worker,
                        _head(conn) if last is None else last,
                        json.dumps(dict(build.parameters)),
                        details,
                        build.reason.value,
                    ),
                )
                conn.execute(
                    "UPDATE workspaces SET latest_build_id = ? WHERE workspace_id = ?",
                    (build.build_id, build.workspace_id),
                )
        if write.agent is not None:
            agent = write.agent
            conn.execute(
                "INSERT INTO agents (workspace_id, build_number, lifecycle) VALUES (?, ?, ?) "
                "ON CONFLICT (workspace_id) DO UPDATE SET build_number = excluded.build_number, "
                "lifecycle = excluded.lifecycle",
                (agent.workspace_id, agent.build_number, agent.lifecycle.value),
            )


_INSERT_EVENT = (
    "INSERT INTO events (kind, workspace_id, chat_id, build_number, payload, at) VALUES (?, ?, ?, ?, ?, ?)"
)


# --- row helpers (run on the connection's thread) ---------------------------------------------------


def _report_agent(
    tx: _Tx,
    workspace_id: str,
    lifecycle: AgentLifecycle,
    clock: Callable[[], float],
    lease: str | None = None,
) -> None:
    """The body of ``report_agent`` (the agent is read with its workspace, in one statement;
    the latest build too when the report is fenced by a lease)."""
    row = tx.conn.execute(
        "SELECT w.chat_id, w.owner, w.name, w.deleted, a.build_number, a.lifecycle "
        "FROM workspaces w LEFT JOIN agents a USING (workspace_id) WHERE w.workspace_id = ?",
        (workspace_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"workspace {workspace_id!r} has no agent")
    ws = Workspace(workspace_id, row[0], row[1], row[2], deleted=bool(row[3]))
    agent = None if row[5] is None else _agent_row(workspace_id, row[4], row[5])
    latest = None
    if lease is not None:
        latest_row = tx.conn.execute(
            f"SELECT {_BUILD_COLUMNS} FROM builds WHERE workspace_id = ? ORDER BY number DESC LIMIT 1",
            (workspace_id,),
        ).fetchone()
        latest = None if latest_row is None else _build(latest_row)
    tx.persist(writes.report_agent(agent, ws, lifecycle, at=clock(), latest=latest, lease=lease))


def _build_by_id(conn: sqlite3.Connection, build_id: str) -> Build:
    row = conn.execute(f"SELECT {_BUILD_COLUMNS} FROM builds WHERE build_id = ?", (build_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no build {build_id!r}")
    return _build(row)


_BUILD_COLUMNS = (
    "build_id, workspace_id, number, transition, status, error, has_agent, worker, parameters,"
    " details, reason, lease_token, lease_expires_at"
)
_CHAT_COLUMNS = "chat_id, owner, workspace_id, idle_stop_after, delete_after_stopped"


def _head(conn: sqlite3.Connection) -> int:
    """The log's head: the last sequence number ever given (pruning does not lower it)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    return 0 if row is None else int(row[0])


def _chat(conn: sqlite3.Connection, chat_id: str) -> Chat | None:
    row = conn.execute(f"SELECT {_CHAT_COLUMNS} FROM chats WHERE chat_id = ?", (chat_id,)).fetchone()
    return None if row is None else _chat_row(row)


def _chat_row(row: Sequence[Any]) -> Chat:
    return Chat(row[0], row[1], row[2], policy=parse_policy(row[3], row[4], key=row[0]))


def _build(row: Sequence[Any]) -> Build:
    build_id = row[0]
    token, expires_at = parse_lease(row[11], row[12], key=build_id)
    return Build(
        build_id=build_id,
        workspace_id=row[1],
        number=row[2],
        transition=parse_enum(Transition, row[3], table="builds", key=build_id, column="transition"),
        status=parse_enum(JobStatus, row[4], table="builds", key=build_id, column="status"),
        error=row[5],
        has_agent=None if row[6] is None else bool(row[6]),
        worker=row[7],
        parameters=_json_object(row[8], build_id, "parameters") or {},
        details=_json_object(row[9], build_id, "details"),
        reason=parse_enum(Reason, row[10], table="builds", key=build_id, column="reason"),
        lease_token=token,
        lease_expires_at=expires_at,
    )


def _json_object(text: str | None, build_id: str, column: str) -> dict[str, Any] | None:
    """A JSON object column of ``builds``; anything else names the row."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise CorruptStateError("builds", build_id, column, text) from None
    if not isinstance(value, dict):
        raise CorruptStateError("builds", build_id, column, text)
    return value


def _workspace(conn: sqlite3.Connection, workspace_id: str, *, missing: str | None = None) -> Workspace:
    row = conn.execute(
        "SELECT chat_id, owner, name, deleted, deadline_at, deadline_reason FROM workspaces WHERE workspace_id = ?",
        (workspace_id,),
    ).fetchone()
    if row is None:
        raise NotFoundError(missing or f"no workspace {workspace_id!r}")
    deadline = parse_deadline(row[4], row[5], key=workspace_id)
    return Workspace(workspace_id, row[0], row[1], row[2], deleted=bool(row[3]), deadline=deadline)


def _agent(conn: sqlite3.Connection, workspace_id: str) -> Agent | None:
    row = conn.execute(
        "SELECT build_number, lifecycle FROM agents WHERE workspace_id = ?", (workspace_id,)
    ).fetchone()
    return None if row is None else _agent_row(workspace_id, row[0], row[1])


def _agent_row(workspace_id: str, build_number: int, lifecycle: str) -> Agent:
    state = parse_enum(AgentLifecycle, lifecycle, table="agents", key=workspace_id, column="lifecycle")
    return Agent(workspace_id, build_number, state)


def _facts(conn: sqlite3.Connection, workspace_id: str, head: int | None = None) -> WorkspaceFacts:
    ws = _workspace(conn, workspace_id)
    row = conn.execute(
        f"SELECT {_BUILD_COLUMNS} FROM builds WHERE workspace_id = ? ORDER BY number DESC LIMIT 1",
        (workspace_id,),
    ).fetchone()
    return WorkspaceFacts(
        workspace=ws,
        latest_build=_build(row) if row is not None else None,
        agent=_agent(conn, workspace_id),
        seq=_head(conn) if head is None else head,
    )
