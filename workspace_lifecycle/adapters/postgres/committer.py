"""The committer: persists decided writes under their guards, group-commits the concurrent
writes of one process, and remembers the rows this process last read or wrote.

* **Exactly once, in one statement.** A write decided on rows read outside any transaction
  is persisted by one statement (:func:`~.compiler.compile_write`) whose only condition is
  that the rows are still as read (the workspace's and, when the decision read it, its chat's
  ``version``); when it fails another writer committed first, and the write reads and decides
  again.
* **Known rows.** A write may decide on the rows this process last wrote instead of reading
  them (:class:`~.guards.Known`), since its guard proves them current; builds this process
  claimed are kept with their workspace, so that their renewals find those rows.
* **A lost guard re-reads in the same round trip.** A write alone is pipelined with a read of
  its workspace's rows, parsed only when the guard failed: the rows as they are now, which the
  retry decides on without reading (:meth:`Committer.take_fresh`). When it passed, the read
  is left unparsed (an index lookup on the server, a few hundred bytes on the wire). Only
  while the operation's guards have been lost often enough for the read to pay
  (:meth:`Committer.reread_pays`): a worker renewing its lease, whose rows nobody else
  writes, sends its update alone.
* **Group commit.** Concurrent guarded writes of one process are pipelined on one connection
  in one transaction (:meth:`Committer.commit`): one round trip, one commit, one hold of the
  log's lock for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs
import psycopg
from psycopg.pq import TransactionStatus

from ... import writes
from ...values import Build
from .channels import Channels
from .compiler import compile_write
from .connection import Conn, connection_lost
from .guards import Known, Seen
from .rows import parse_known_row, send_read_known
from .schema import LOG_LOCK, lock_key

__all__ = ["BATCHES_IN_FLIGHT", "Committer"]

#: The fields of a Write that :meth:`Known.after` applies (``owner``, an owner's stored limits,
#: changes no workspace's rows: nothing to apply). A Write with any other field (one added
#: later) turns the cache of known rows off: it could not say what that field changed (and
#: tests/stores/test_postgres_round_trips.py then fails: every write would cost a read more).
_APPLIED_FIELDS = frozenset(
    {"events", "build", "queued", "workspace", "chat", "agent", "log", "owner", "then"}
)
CACHE_KNOWN_ROWS = {f.name for f in attrs.fields(writes.Write)} <= _APPLIED_FIELDS
#: Workspaces whose rows a store remembers (the most recently written).
_KNOWN_MAX = 4096
#: How a write on known rows weighs the re-read of a lost guard (:meth:`Committer.reread_pays`):
#: each write of an operation moves the operation's loss rate this far towards 1 (its guard was
#: lost) or 0; the re-read is pipelined while the rate is at least :data:`REREAD_ABOVE`, and an
#: operation not seen yet starts at 1. The re-read costs about 80 µs of a ~500 µs write on a
#: local server (measured: a lease renewal, 560 against 480 µs), and saves a round trip when
#: the guard is lost: it pays above a loss in four or five writes.
LOSS_WEIGHT, REREAD_ABOVE = 0.1, 0.2
#: Batches of one process in flight at once. Two would put the next batch on the server while
#: one waits for its commit, but measured slower (16 writers: 1,425 against 1,753 events/s,
#: same run): smaller batches, the same one commit at a time under the log lock.
BATCHES_IN_FLIGHT = 1


async def _roll_back(conn: Conn) -> None:
    """End a transaction block a failed batch left open (nothing to do on a dead connection)."""
    if not conn.closed and conn.info.transaction_status in (
        TransactionStatus.INTRANS,
        TransactionStatus.INERROR,
    ):
        with contextlib.suppress(psycopg.Error):
            await conn.execute("ROLLBACK")


def _task() -> object:
    """The running task (the retry of a write runs in the task that wrote)."""
    return asyncio.current_task()


class _Marker:
    """A marker outcome of a queued write."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_PENDING = _Marker("pending")  # not committed yet
_ALONE = _Marker("alone")  # to run alone: its guard missed in a batch, or the batch failed


@attrs.define
class _Queued:
    """A decided write waiting for its batch, and then what became of it: the new head,
    ``None`` (its guard found the rows changed), ``_ALONE``, or the exception it raised."""

    write: writes.Write
    seen: Seen
    reread: bool
    outcome: int | _Marker | BaseException | None = _PENDING


class Committer:
    """Guards, the known rows and the group commit of one store."""

    def __init__(
        self, *, schema: str, channels: Channels, batch_writes: bool, notify_after_commit: bool
    ) -> None:
        self._log_lock = (LOG_LOCK, lock_key(schema))
        self._channels = channels
        #: NOTIFY inside each write (else a notifier sends it after the commits).
        self._notify = not notify_after_commit
        #: Group-commit the guarded writes (see :meth:`commit`).
        self.batch_writes = batch_writes
        #: Workspace id -> its rows as this process last read or wrote them.
        self.known: OrderedDict[str, Known] = OrderedDict()
        #: Builds this process claimed -> their workspace (a renewal may decide on known rows).
        self.claimed: OrderedDict[str, str] = OrderedDict()
        #: Workspace id -> its rows as read right after a write of this process lost its guard
        #: on them, and the task that wrote: that task's retry decides on them once, as on rows
        #: it read (see :meth:`take_fresh`).
        self.fresh: dict[str, tuple[object, Known]] = {}
        #: Operation -> how often its writes on known rows lost their guard, lately (a moving
        #: average, :data:`LOSS_WEIGHT`).
        self._loss_rate: dict[str, float] = {}
        self._queue: list[_Queued] = []
        self._leading = 0  # batches in flight
        self._led = anyio.Event()  # set (and replaced) whenever one of them is done
        #: Batches of more than one write committed, and the writes they held (for benchmarks).
        self.batches = 0
        self.batched_writes = 0
        # Test hook: awaited inside every writing transaction after its events are inserted
        # (holding the log lock), to interleave transactions in the commit-order test.
        self._before_commit: Callable[[], Awaitable[None]] | None = None

    # --- the rows this process knows ---------------------------------------------------------

    def known_of_build(self, build_id: str) -> Known | None:
        """The known rows of a build this process claimed, if it is still their latest build."""
        workspace_id = self.claimed.get(build_id)
        known = None if workspace_id is None else self.known.get(workspace_id)
        latest = None if known is None else known.facts.latest_build
        return known if latest is not None and latest.build_id == build_id else None

    def claimed_build(self, build: Build) -> None:
        """This process claimed ``build``: its renewals may decide on its workspace's known rows."""
        self.claimed[build.build_id] = build.workspace_id
        if len(self.claimed) > _KNOWN_MAX:
            self.claimed.popitem(last=False)

    def workspace_of(self, kind_is_build: bool, key: str) -> str | None:
        """The workspace a plan's read names (a build's only if this process claimed it)."""
        return self.claimed.get(key) if kind_is_build else key

    def take_fresh(self, workspace_id: str | None) -> Known | None:
        """The rows re-read for ``workspace_id`` after a lost guard, once: as current as rows a
        read returns, so any decision on them (even to write nothing, or an error) stands."""
        if workspace_id is None or not self.fresh:
            return None
        task, known = self.fresh.pop(workspace_id, (None, None))
        return known if task is _task() else None  # another task's: not read for this one

    def changed_since(self, seen: Seen) -> bool:
        """Whether the rows a lost guard re-read (:attr:`fresh`) show that ``seen``'s workspace
        changed since it was read (``False`` when there are none to tell)."""
        fresh = self.fresh.get(seen.workspace_id)
        return fresh is not None and fresh[1].version != seen.version

    def learned(self, known: Known) -> None:
        """A plain read of this process returned ``known``: its next write may decide on them.
        Versions only grow: a read that returns after a newer write of this process was
        remembered (it was sent before that write committed) leaves the newer rows."""
        workspace_id = known.facts.workspace_id
        cached = self.known.get(workspace_id)
        if cached is not None and (cached.version, cached.chat_version) > (known.version, known.chat_version):
            return
        if CACHE_KNOWN_ROWS:
            self.known[workspace_id] = known
            self.known.move_to_end(workspace_id)
            if len(self.known) > _KNOWN_MAX:
                self.known.popitem(last=False)

    def forget(self, seen: Seen | None) -> None:
        if seen is not None:
            self.known.pop(seen.workspace_id, None)

    def remember(self, known: Known | None, seen: Seen | None, write: writes.Write, head: int | None) -> None:
        """Keep the rows of a workspace this process just wrote (``head``: ``None`` if its guard
        found them changed), decided on ``known`` (or on rows it did not keep)."""
        if seen is None:
            return
        if head is None and (fresh := self.fresh.get(seen.workspace_id)) is not None:
            self.learned(fresh[1])  # the rows as the write's pipelined read found them
            return
        base = known or self.known.get(seen.workspace_id)
        if head is None or base is None or base.version != seen.version or not CACHE_KNOWN_ROWS:
            self.forget(seen)  # changed by another writer, or rows it does not know
            return
        self.known[seen.workspace_id] = base.after(write, head)
        self.known.move_to_end(seen.workspace_id)
        if len(self.known) > _KNOWN_MAX:
            self.known.popitem(last=False)

    def reread_pays(self, op: str) -> bool:
        """Whether a write of ``op`` on known rows should pipeline the re-read of a lost guard:
        while at least :data:`REREAD_ABOVE` of its writes lose it, as a moving average (see
        :meth:`guard_lost`)."""
        return self._loss_rate.get(op, 1.0) >= REREAD_ABOVE

    def guard_lost(self, op: str, lost: bool) -> None:
        """A write of ``op`` on known rows kept its guard, or ``lost`` it."""
        rate = self._loss_rate.get(op, 1.0)
        self._loss_rate[op] = rate + LOSS_WEIGHT * ((1.0 if lost else 0.0) - rate)

    def _changed(self, seen: Seen) -> bool:
        """Whether the rows re-read after ``seen``'s write missed its guard are not as seen."""
        fresh = self.fresh.get(seen.workspace_id)
        if fresh is None:
            return False
        known = fresh[1]
        return known.version != seen.version or (
            seen.chat_id is not None
            and (known.chat.chat_id, known.chat_version) != (seen.chat_id, seen.chat_version)
        )

    # --- persisting ------------------------------------------------------------------------

    def statement(
        self, write: writes.Write, seen: Seen | None, *, skip_locked: bool = False, new_chat: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """The one statement that persists ``write`` under ``seen`` (see :mod:`.compiler`)."""
        return compile_write(
            write,
            seen,
            log_lock=self._log_lock,
            channels=self._channels.of_write(write) if self._notify and write.events else (),
            skip_locked=skip_locked,
            new_chat=new_chat,
        )

    async def commit(
        self, conn: Conn, write: writes.Write, seen: Seen, *, reread: bool = False
    ) -> int | None:
        """Group commit: persist ``write`` (as :meth:`execute`), batched with the guarded
        writes other tasks of this process decided meanwhile.

        A write that finds no batch in flight leads: it takes everything queued (often just
        itself) and commits it; writes that arrive while a batch is in flight queue for the
        next one. One write alone is its own statement in autocommit; several are pipelined on
        the leader's connection in one transaction. A write that runs alone with ``reread``
        re-reads its rows in the same round trip if its guard fails (see the module docstring).
        In a batch the guards skip rows locked by
        other transactions (a batch that holds the log lock must never wait for a row: the
        writer holding that row may be waiting for the log lock); a write whose guard missed in
        a batch, or whose batch failed on anything but a lost connection, runs alone, so a
        write that fails fails only itself. A connection lost under a batch leaves every write
        of it unknown.
        """
        if not self.batch_writes or self._before_commit is not None:
            return await self.execute(conn, write, seen, reread=reread)
        mine = _Queued(write, seen, reread)
        self._queue.append(mine)
        while mine.outcome is _PENDING:
            if self._leading >= BATCHES_IN_FLIGHT or not self._queue:
                try:
                    await self._led.wait()
                except BaseException:
                    # Its deadline passed while it queued: no later batch may commit it for a
                    # caller that has gone (one already sent has an unknown outcome, as any).
                    if mine in self._queue:
                        self._queue.remove(mine)
                    raise
                continue
            batch, self._queue = self._queue, []
            self._leading += 1
            try:
                await self._run_batch(conn, batch)
            finally:
                for item in batch:
                    if item.outcome is _PENDING:  # interrupted: let each one run alone
                        item.outcome = _ALONE
                self._leading -= 1
                led, self._led = self._led, anyio.Event()
                led.set()
        if mine.outcome is _ALONE:
            return await self.execute(conn, write, seen, reread=reread)
        if isinstance(mine.outcome, BaseException):
            raise mine.outcome
        assert isinstance(mine.outcome, int) or mine.outcome is None
        return mine.outcome

    async def _run_batch(self, conn: Conn, batch: list[_Queued]) -> None:
        """Commit ``batch`` on ``conn`` and set each write's outcome (see :meth:`commit`)."""
        if len(batch) == 1:  # alone, in autocommit; it too may not wait for a row while leading
            (only,) = batch
            try:
                head = await self.execute(conn, only.write, only.seen, skip_locked=True, reread=only.reread)
            except Exception as exc:
                only.outcome = exc
            else:
                # A miss runs again, waiting for the row's lock, unless its re-read shows the
                # rows changed: then the guard is lost whatever the lock.
                only.outcome = head if head is not None or self._changed(only.seen) else _ALONE
            return
        statements = [self.statement(item.write, item.seen, skip_locked=True) for item in batch]
        try:
            # BEGIN, the writes and COMMIT in one pipeline: one round trip (transaction() would
            # sync at its COMMIT, and the pipeline's exit sync again). Explicit, not the
            # pipeline's implicit transaction: a write that fails in the client (a value it
            # cannot send) leaves the block open, rolled back below, never committed at the Sync.
            async with conn.pipeline():
                await conn.execute("BEGIN")
                cursors = [await conn.execute(query, params) for query, params in statements]
                await conn.execute("COMMIT")
            rows = [await cur.fetchone() for cur in cursors]
        except Exception as exc:
            await _roll_back(conn)
            lost = connection_lost(exc) or conn.closed
            for item in batch:
                item.outcome = exc if lost else _ALONE
            return
        self.batches += 1
        self.batched_writes += len(batch)
        for item, row in zip(batch, rows, strict=True):
            item.outcome = _ALONE if row is None else int(row[0])

    async def execute(
        self,
        conn: Conn,
        write: writes.Write,
        seen: Seen | None,
        *,
        skip_locked: bool = False,
        new_chat: bool = False,
        reread: bool = False,
    ) -> int | None:
        """Persist ``write`` as one statement; return the new head, or ``None`` if the guard
        ``seen`` found the rows changed, or the new chat was inserted by another writer (then
        nothing was written). Without a guard, the caller's transaction holds the row locks.
        ``reread`` (with a guard): pipeline the read of the rows that a lost guard keeps in
        :attr:`fresh`."""
        query, params = self.statement(write, seen, skip_locked=skip_locked, new_chat=new_chat)
        if reread and seen is not None and self._before_commit is None:
            # One round trip, one implicit transaction: the read runs after the write (a new
            # snapshot under READ COMMITTED) and sees the write's rows, or the other writer's.
            async with conn.pipeline():
                cur = await conn.execute(query, params)
                reread_cur = await send_read_known(conn, seen.workspace_id)
            row = await cur.fetchone()
            fresh = None if row is not None else await parse_known_row(reread_cur)
            if fresh is None:
                self.fresh.pop(seen.workspace_id, None)
            else:
                self.fresh[seen.workspace_id] = (_task(), fresh)
            return None if row is None else int(row[0])
        if self._before_commit is None:
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
        else:  # test hook: the same statement in a transaction held open after it
            async with conn.transaction():
                cur = await conn.execute(query, params)
                row = await cur.fetchone()
                if row is not None:
                    await self._before_commit()
        return None if row is None else int(row[0])
