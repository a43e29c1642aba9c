""":class:`SQLiteDriver`: the SQLite store's rows and I/O under
:class:`~workspace_lifecycle.adapters.store.DriverStore`, composed of its parts.

* Writes run on the event loop when they cannot block (:class:`~.inline.Inline`: the loop's own
  connection, ``busy_timeout`` 0, the writes of one tick in one transaction) and otherwise on
  one connection on a thread of its own (:class:`~.writer.Connection`, group commit, the real
  ``busy_timeout``). Either way a plan runs whole inside ``BEGIN IMMEDIATE``: read its rows
  (:func:`~.reads.plan_rows`), decide (the plan's pure decision), persist
  (:class:`~.persist.Tx`). The write lock is held from the read to the COMMIT, so the guard
  always holds: this driver never returns :data:`~..driver.RETRY`.
* Reads run on the loop's connection too, and on a second connection and thread when that
  could wait: under WAL a reader never waits for a writer, so a read never queues behind a
  long batch either. It sees everything committed before it was submitted (every write its
  caller awaited). Whatever a read or the watcher learns of a commit reaches the loop after
  that commit's own results (a lock held from COMMIT to their hand-over), so a writer still
  runs before the waiters its commit wakes.
* Wake-ups go through the driver's :class:`~..base.Doorbell`, rung with the log's **head**:
  writes through this store ring it at once; other processes' commits through inotify
  (:class:`~.wakeups.FileWatch`) or, where that cannot work, the polling
  :class:`~.watcher.Watcher` (``wakeups``, chosen at open).
* Closing is shielded from cancellation and joins the threads (they are daemon threads, so a
  store left open never holds the interpreter at exit); an ``open`` cancelled midway closes what
  it started.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Generic, TypeVar

import anyio

from ...errors import StoreClosedError, StoreUnavailableError, UnsupportedBackendError
from ...limits import Usage
from ...values import Build, Chat, Lease, StoreEvent, WorkspaceFacts
from ..base import ArmedDeadlines, ChatRow, Doorbell
from ..driver import Driver, LogRead, Plan, Retry
from . import reads, rows, schema
from .inline import MISS, Inline, in_read_transaction
from .persist import Tx
from .url import check_options
from .wakeups import FileWatch, choose
from .watcher import Watcher
from .writer import Connection, nothing

__all__ = ["SQLiteDriver", "transaction_body"]

T = TypeVar("T")

log = logging.getLogger("workspace_lifecycle.sqlite")


def transaction_body(plan: Plan[T]) -> Callable[[Tx], T]:
    """``plan`` as one write's transaction body, for the writer's thread: read its rows, decide,
    persist the decided write; the decision's answer given the head after this write."""
    return _Body(plan)


class _Body(Generic[T]):
    """:func:`transaction_body`'s body: one object per write rather than a closure and its cells
    (with 64 writers in flight, every object a write keeps alive until its batch commits is 64
    more for the cyclic collector's youngest generation, which then runs and promotes them)."""

    __slots__ = ("plan",)

    def __init__(self, plan: Plan[T]) -> None:
        self.plan = plan

    def __call__(self, tx: Tx) -> T:
        plan = self.plan
        write = plan.decide(reads.plan_rows(tx.conn, plan.read))
        if write is None:
            return plan.answer(0)
        tx.persist(write)
        head = tx.appended_head
        return plan.answer(rows.head(tx.conn) if head is None else head)


class SQLiteDriver(Driver):
    """Rows in one SQLite file, shared safely by any number of processes; see the module."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.004,
        retention: float | None = None,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        wakeups: str = "auto",
        inline: bool = True,
    ) -> None:
        self._synchronous = check_options(
            busy_timeout=busy_timeout,
            poll_interval=poll_interval,
            retention=retention,
            synchronous=synchronous,
            wakeups=wakeups,
        )
        self.path = os.fspath(path)
        self.url = f"sqlite:///{self.path}"
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self.retention = retention
        self.clock = clock
        self.transactions = 0  # writes committed through this driver (see also ``commits``)
        self._connection: Connection | None = None  # the writer's thread
        self._reader: Connection | None = None  # the readers' thread
        self._inline: Inline | None = None  # the loop's own connection
        self._inline_wanted = inline
        self._wakeups_wanted = wakeups
        #: How other processes' commits are noticed, chosen at open: "inotify" or "poll".
        self.wakeups = "poll"
        self.wakeups_reason = "not open"
        self._order = threading.Lock()  # see Connection: what saw a commit follows its results
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._doorbell = Doorbell()
        self.watcher: Watcher | FileWatch = self._poller()
        self._last_prune = 0.0

    def _poller(self) -> Watcher:
        return Watcher(
            self._connect,
            path=self.path,
            busy_timeout=self.busy_timeout,
            poll_interval=self.poll_interval,
            doorbell=self._doorbell,
            order=self._order,
        )

    # --- opening and closing -----------------------------------------------------------------------

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
        schema.check_path(self.path)
        self._loop = loop
        self._connection = Connection(
            self._connect,
            path=self.path,
            busy_timeout=self.busy_timeout,
            committed=self._committed,
            order=self._order,
        )
        try:
            head = await self._connection.submit(
                lambda conn: schema.setup(conn, self.path, self._synchronous)
            )
            # Reads get a connection and a thread of their own: under WAL they never wait for a
            # writer, so they must not queue behind a long batch of writes either.
            self._reader = Connection(
                self._connect_reader,
                path=self.path,
                busy_timeout=self.busy_timeout,
                name="wl-sqlite-read",
                order=self._order,
            )
            await self._reader.submit(nothing)  # connects now: a file it cannot open fails the open
            if self._inline_wanted:
                self._inline = Inline(
                    self._connect_inline(),
                    path=self.path,
                    busy_timeout=self.busy_timeout,
                    thread=self._connection,
                    reader=self._reader,
                    committed=self._committed,
                    order=self._order,
                )
            self._choose_wakeups()
        except BaseException:
            # Cancelled or failed midway: the thread and its connection go with it.
            self._closed = True
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            raise
        self._doorbell.saw(head)

    def _connect_inline(self) -> sqlite3.Connection:
        """The loop's connection: it never waits for a lock (``SQLITE_BUSY`` at once: the work
        goes to the thread, which waits); ``synchronous`` is per connection."""
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        try:
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _choose_wakeups(self) -> None:
        mode, why = choose(self.path, self._wakeups_wanted)
        if mode == "inotify" and self._inline is None:
            mode, why = "poll", "inotify needs the inline connection (inline=False)"
        if mode == "poll" and self._wakeups_wanted == "inotify":
            raise StoreUnavailableError(f"cannot watch {self.path!r} with inotify: {why}")
        if mode == "inotify":
            assert self._inline is not None
            inline = self._inline
            try:
                self.watcher = FileWatch(
                    self.path,
                    version=inline.version,
                    head=self._inline_head,
                    doorbell=self._doorbell,
                    lost=self._watch_lost,
                )
            except OSError as exc:  # the inotify limits reached, a file that cannot be watched
                if self._wakeups_wanted == "inotify":
                    raise StoreUnavailableError(f"cannot watch {self.path!r} with inotify: {exc}") from None
                mode, why = "poll", f"inotify failed: {exc}"
        self.wakeups, self.wakeups_reason = mode, why
        log.debug("SQLite store %r: wake-ups by %s (%s)", self.path, mode, why)

    def _inline_head(self) -> int | None:
        assert self._inline is not None
        found = self._inline.read(rows.head)
        return None if found is MISS else found  # type: ignore[return-value]

    def _watch_lost(self, why: str) -> None:
        """The files can no longer be watched: poll from now on (at once if somebody waits)."""
        self.watcher = self._poller()
        self.wakeups, self.wakeups_reason = "poll", why
        if self._doorbell.sleepers and self._loop is not None:
            self.watcher.want(self._loop)
        self._doorbell.ring()  # the sleepers look at the head again

    async def aclose(self) -> None:
        # Shielded: a close cancelled halfway (``async with`` left by a timeout) would leave the
        # connection's thread and files open for good, since later calls find the store closed.
        with anyio.CancelScope(shield=True):
            if (
                self._closed
                and self._connection is None
                and self._reader is None
                and not self.watcher.running
            ):
                return
            self._closed = True
            self._doorbell.ring()
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Commit what this tick queued, stop the watcher, then the connections' threads (after
        what is queued); join them; close the loop's connection."""
        if self._inline is not None:
            self._inline.flush()
        await self.watcher.stop()
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.stop()
        conn, self._connection = self._connection, None
        if conn is not None:
            await conn.stop()
        inline, self._inline = self._inline, None
        if inline is not None:
            inline.close()

    # --- running transactions ----------------------------------------------------------------------

    def _check(self) -> Connection:
        if self._closed or self._connection is None:
            raise StoreClosedError("the SQLite store is closed")
        return self._connection

    async def transact(self, plan: Plan[T]) -> T | Retry:
        # What _write does, inlined: this is every store write's path (one coroutine less).
        thread = self._check()
        inline = self._inline
        body = _Body(plan)
        result: T = await (thread.submit(body, write=True) if inline is None else inline.write(body))
        if self.retention is not None:
            await self._prune_if_due()
        return result

    async def _write(self, body: Callable[[Tx], T]) -> T:
        """Run ``body`` inside ``BEGIN IMMEDIATE ... COMMIT``, inline or on the writer's thread
        (possibly committed together with other writes: group commit); its events share the
        commit."""
        thread = self._check()
        inline = self._inline
        result: T = await (thread.submit(body, write=True) if inline is None else inline.write(body))
        if self.retention is not None:
            await self._prune_if_due()
        return result

    async def _prune_if_due(self) -> None:
        assert self.retention is not None
        now = self.clock()
        if now - self._last_prune > min(self.retention / 10, 60.0):
            self._last_prune = now
            await self.prune_events(now - self.retention)

    @property
    def commits(self) -> int:
        """Write transactions committed so far: with group commit, fewer than the writes."""
        thread = 0 if self._connection is None else self._connection.commits
        return thread + (0 if self._inline is None else self._inline.commits)

    def _committed(self, count: int, head: int | None) -> None:
        """On the loop, once per committed batch of ``count`` writes (their callers may have
        stopped waiting): ring the doorbell once with the batch's head."""
        self.transactions += count
        if head is not None:
            self._doorbell.saw(head)

    async def _read(
        self, fn: Callable[[sqlite3.Connection], T], then: Callable[[T], object] | None = None
    ) -> T:
        """Run ``fn`` in one read transaction (a consistent snapshot under WAL): on the loop's
        connection in a callback of the next tick, or on the readers' thread (which never waits
        for the writer's) when that could wait. Either way the answer comes back through a
        future, after the results of any commit the read saw (see :mod:`.inline`)."""
        self._check()
        inline = self._inline
        if inline is not None:
            return await inline.read_soon(fn, then)
        reader = self._reader
        assert reader is not None
        return await reader.submit(in_read_transaction(fn), then=then)

    # --- plain reads -------------------------------------------------------------------------------

    async def get_chat(self, chat_id: str) -> Chat | None:
        return await self._read(lambda conn: rows.chat(conn, chat_id))

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        return await self._read(lambda conn: rows.facts(conn, workspace_id))

    async def get_build(self, build_id: str) -> Build:
        return await self._read(lambda conn: rows.build_by_id(conn, build_id))

    async def armed_deadlines(self) -> ArmedDeadlines:
        return await self._read(reads.armed_deadlines)

    async def list_chats(self) -> Sequence[ChatRow]:
        return await self._read(reads.list_chats)

    async def next_lease_expiry(self, *, skip: Collection[str] = ()) -> Lease | None:
        passed = list(skip)
        return await self._read(lambda conn: reads.next_lease(conn, passed))

    # --- the event log -----------------------------------------------------------------------------

    async def read_log(self, workspace_id: str, number: int | None = None) -> LogRead | None:
        return await self._read(lambda conn: reads.read_log(conn, workspace_id, number))

    async def read_usage(self, owner: str) -> Usage:
        return await self._read(lambda conn: reads.usage(conn, owner))

    async def head(self) -> int:
        return await self._read(rows.head, then=self._doorbell.saw)

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        limit = min(limit, reads.MAX_INT)
        if after >= reads.MAX_INT or limit <= 0:
            self._check()
            return []  # no sequence number is beyond SQLite's largest integer
        return await self._read(lambda conn: reads.events_after(conn, after, limit), then=self._saw_events)

    def _saw_events(self, events: list[StoreEvent]) -> None:
        if events:
            self._doorbell.saw(events[-1].seq)

    async def wait_for_change(self, after: int) -> None:
        self._check()
        watcher = self.watcher
        watcher.check()
        assert self._loop is not None
        watcher.want(self._loop)
        try:
            # The recheck reads the head afresh once this task sleeps: another process's commit
            # since our last read shows there (one cheap query; not repeated while we sleep).
            await self._doorbell.sleep(after, recheck=self.head)
        finally:
            if not self._doorbell.sleepers:
                watcher.unwanted()
        self._check()
        watcher.check()

    async def prune_events(self, older_than: float) -> int:
        return await self._write(lambda tx: reads.prune(tx.conn, older_than))
