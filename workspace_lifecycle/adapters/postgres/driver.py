""":class:`PostgresDriver`: the PostgreSQL driver under :class:`~..store.DriverStore`, composed of
the connection (:mod:`.connection`), the committer (:mod:`.committer`) and the listener
(:mod:`.listener`). It reads the rows a plan names, hands them to the plan's decision and
persists what was decided; it decides nothing.

Two ways to run a plan, by what it reads:

* **Guarded, in autocommit** (WORKSPACE, BUILD, PENDING reads: the hot writes): one read, the
  decision, then one statement whose only condition is that the rows are still as read; when
  it fails, :data:`~..driver.RETRY` (the store reads and decides again). A write may decide on
  the rows this process last read or wrote instead of reading them (only a decision to write:
  the guard proves them current; a decision to write nothing, or an error, is made again on
  rows read now). It is not tried on a connection that may be dead: the read is also the
  probe that lets a write be retried on a fresh connection. The known rows come from this
  process's writes and reads (a claim reads the claimed build's whole workspace, a plain read
  of a workspace's facts its chat and versions too), so a worker's renewals and finish and a
  caller's request after reading the facts are one round trip each. A write decided on known
  rows whose guard fails reads the rows as they are now in the same round trip
  (:mod:`.committer`), and its retry decides on them: a lost guard costs one round trip more,
  not two.
* **By owner, in a transaction** (reads that ask for the owner's usage: a create, a start,
  setting limits): the owner's row is locked first (made if missing, its version bumped), so
  every write that may take one of the owner's slots runs alone for that owner, across
  replicas; then the chat or workspace rows are locked as below, the owner's usage is counted
  (READ COMMITTED: a statement after the lock sees every write that held it before), and the
  decision is persisted under those locks. Writes that only lower a count (a stop, a failed
  start) take no owner lock: read late, they can only make a check refuse, never pass.
* **Locked, in a transaction** (CHAT reads: registering a chat, creating a workspace; POOL
  reads: claiming a pooled workspace, filling a pool, which lock the pool's members first): the
  workspace the chat is bound to and then the chat row are locked ``FOR UPDATE``, read,
  decided on, and persisted unguarded under those locks. A new chat row that another replica
  inserted meanwhile rolls the transaction back: :data:`~..driver.RETRY`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

import anyio
import attrs

from ...errors import NotFoundError, StoreClosedError, UnsupportedBackendError
from ...limits import Usage
from ...values import Build, Chat, Lease, StoreEvent, WorkspaceFacts
from ...writes import Write
from ..base import ArmedDeadlines, ChatRow, Doorbell, Topic
from ..driver import RETRY, Driver, LogRead, Plan, Read, ReadKind, Retry, Rows
from . import rows as sql
from .channels import Channels
from .committer import CACHE_KNOWN_ROWS, Committer
from .connection import Attempt, Conn, Connection, idle_and_alive
from .guards import Known, Seen
from .listener import Listener, Notifier
from .url import Options

__all__ = ["PostgresDriver"]

T = TypeVar("T")

#: What a guarded plan decided: the decision, its guard, and the rows it was decided on when
#: the read returned all of a workspace's (kept as known rows once it is persisted).
_Decided = tuple[Write | None, Seen | None, Known | None]


class _Conflict(Exception):
    """A locked plan's new chat row was inserted by another writer: roll back and retry."""


def _current_async_library() -> str:
    """``"asyncio"`` when running on an asyncio loop, else the library's name if known."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    try:
        import sniffio

        return sniffio.current_async_library()
    except Exception:
        return "another async library"


def _rows_of(read: Read, known: Known) -> Rows:
    """``read``'s rows, from a workspace's known rows."""
    facts = known.facts
    if read.kind is ReadKind.BUILD:
        return Rows(known.chat, facts, facts.latest_build, facts.workspace)
    return Rows.of_facts(facts, known.chat if read.related else None)


class PostgresDriver(Driver):
    """Rows, SQL and I/O of the PostgreSQL store (see the module docstring)."""

    def __init__(self, options: Options, *, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.url = options.url
        self.clock = clock
        #: The NOTIFY channels of the schema.
        self.channel_names = Channels.of(options.schema, options.shards)
        self.connection = Connection(options)
        self.committer = Committer(
            schema=options.schema,
            channels=self.channel_names,
            batch_writes=options.batch_writes,
            notify_after_commit=options.notify_after_commit,
        )
        self.doorbell = Doorbell()
        self.notifier = (
            Notifier(self.connection, self.channel_names.main) if options.notify_after_commit else None
        )
        self.listener = Listener(self.connection, self.channel_names, self.doorbell, self.notifier)
        self._opened = False

    # --- opening and closing -----------------------------------------------------------------

    async def open(self) -> None:
        """One direct connection first: it fails fast and clearly (the pool would retry in the
        background until pool_timeout), migrates, and then listens. A listen_url of its own may
        reach another database (refused at configure): the store's URL migrates. Opening and
        closing are shielded from cancellation, so a cancelled open leaves no connection behind."""
        library = _current_async_library()
        if library != "asyncio":
            raise UnsupportedBackendError(
                f"the PostgreSQL store needs the asyncio backend (psycopg's AsyncConnection is "
                f"asyncio-only), but it is running under {library}; run it with asyncio"
            )
        if self.connection.closed:
            raise StoreClosedError("the PostgreSQL store is closed")
        if self._opened:
            return
        self._opened = True
        options = self.options
        listener: Conn | None = None
        try:
            listen_here = options.listens and not options.listen_elsewhere
            if not listen_here:
                await self.connection.migrate_alone()
            if options.listens:
                listener = await self.listener.connect(migrate_first=listen_here)
            await self.connection.open_pool()
        except BaseException:
            # Also on cancellation: whatever was opened is closed before the error propagates.
            self.connection.closed = True
            with anyio.CancelScope(shield=True):
                if listener is not None:
                    await listener.close()
                await self._shutdown()
            raise
        self.listener.start(listener)

    async def aclose(self) -> None:
        if self.connection.closed:
            return
        self.connection.closed = True
        self.doorbell.ring()
        with anyio.CancelScope(shield=True):  # a cancelled caller still closes everything
            await self._shutdown()

    async def _shutdown(self) -> None:
        await self.listener.stop()
        await self.connection.close()

    # --- writes ------------------------------------------------------------------------------

    async def transact(self, plan: Plan[T]) -> T | Retry:
        read = plan.read
        locked = read.kind is ReadKind.CHAT or read.kind is ReadKind.POOL
        if locked or (read.usage and (read.limited or read.kind is not ReadKind.WORKSPACE)):
            return await self._transact_locked(plan)
        return await self.connection.try_(functools.partial(self._guarded, plan), kind=plan.op)

    async def _guarded(self, plan: Plan[T], conn: Conn, attempt: Attempt) -> T | Retry:
        """One try of a guarded plan (see the module docstring) on ``conn``."""
        # Only a decision on known rows (which may be old) pipelines the re-read of a lost
        # guard: rows read in this try, or just re-read, are rarely changed one round trip later;
        # and only while that operation's guards are lost often enough for it to pay.
        decided = self._on_fresh(plan, conn)
        on_known = decided is None and (decided := self._on_known(plan, conn)) is not None
        reread = on_known and self.committer.reread_pays(plan.op)
        write, seen, known = decided or await self._on_read(plan, conn)
        if write is None:
            return plan.answer(0)
        assert seen is not None, "a decision on no rows writes nothing"
        if plan.read.usage:  # decided without counting: holds only while the owner has no limits
            assert known is not None
            seen = attrs.evolve(seen, unlimited_owner=known.facts.workspace.owner)
        attempt.committing = True  # from here a lost connection leaves the outcome unknown
        committer = self.committer
        try:
            head = await committer.commit(conn, write, seen, reread=reread)
        except BaseException:
            committer.forget(seen)
            raise
        committer.remember(known, seen, write, head)
        if on_known:
            committer.guard_lost(plan.op, head is None)
        if head is None:
            if seen.unlimited_owner is not None and not committer.changed_since(seen):
                # Not the rows (they are as read, or unknown): limits stored for the owner may
                # have failed it. Decide again counting its usage, under its lock.
                plan.read = plan.read._replace(limited=True)
            return RETRY
        if plan.read.kind is ReadKind.PENDING and write.build is not None:
            committer.claimed_build(write.build)
        self._wrote(head)
        return plan.answer(head)

    def _on_fresh(self, plan: Plan[T], conn: Conn) -> _Decided | None:
        """``plan`` decided on the rows its last try's lost guard re-read, if there are any:
        rows as current as a read's, so the decision stands whatever it is (see the module
        docstring)."""
        read = plan.read
        committer = self.committer
        if not committer.fresh or read.kind is ReadKind.PENDING:
            return None
        known = committer.take_fresh(committer.workspace_of(read.kind is ReadKind.BUILD, read.key))
        if known is None or not idle_and_alive(conn):
            return None
        if read.kind is ReadKind.BUILD:
            latest = known.facts.latest_build
            if latest is None or latest.build_id != read.key:
                return None  # no longer the workspace's latest build: read it
        write = plan.decide(_rows_of(read, known))
        if write is None:
            self._read_head(known.facts.seq)
        return write, known.seen(chat=read.related), known

    def _on_known(self, plan: Plan[T], conn: Conn) -> _Decided | None:
        """``plan`` decided on the rows this process knows, if it knows them and the decision
        writes (see the module docstring)."""
        read = plan.read
        if read.kind is ReadKind.WORKSPACE:
            known = self.committer.known.get(read.key)
        elif read.kind is ReadKind.BUILD:
            known = self.committer.known_of_build(read.key)
        else:
            return None
        if known is None or not idle_and_alive(conn):
            return None
        try:
            write = plan.decide(_rows_of(read, known))
        except Exception:
            return None  # made again on rows read now
        if write is None:
            return None
        return write, known.seen(chat=read.related), known

    async def _on_read(self, plan: Plan[T], conn: Conn) -> _Decided:
        """``plan`` decided on rows read now, with the guard of the rows read."""
        read = plan.read
        known: Known | None = None
        seen: Seen | None = None
        if read.kind is ReadKind.PENDING:
            rows, pending = await sql.read_pending(conn)
            seen = None if pending is None else pending.seen(chat=False)
            if pending is not None and CACHE_KNOWN_ROWS:
                self.committer.learned(pending)  # what the claim's remember() builds on
        elif read.kind is ReadKind.BUILD and (known := await self._read_claimed(conn, read.key)):
            rows = _rows_of(read, known)
        elif read.kind is ReadKind.BUILD:
            rows, seen = await sql.read_build(conn, read.key, related=read.related)
        elif read.kind is ReadKind.LOG:  # a build's log: not among the known rows
            rows, seen = await sql.read_build(conn, read.key)
            rows.log = await sql.read_log_row(conn, read.key)
        else:
            known = await sql.read_known(conn, read.key)
            rows = Rows() if known is None else _rows_of(read, known)
        if known is not None:
            seen = known.seen(chat=read.related)
        write = plan.decide(rows)
        if write is None and rows.facts is not None:
            self._read_head(rows.facts.seq)
        return write, seen, known

    async def _read_claimed(self, conn: Conn, build_id: str) -> Known | None:
        """The rows of a build this process claimed, read with its workspace's (so that they are
        known afterwards), if it is still the workspace's latest build."""
        workspace_id = self.committer.claimed.get(build_id)
        if workspace_id is None:
            return None
        known = await sql.read_known(conn, workspace_id)
        latest = None if known is None else known.facts.latest_build
        return known if latest is not None and latest.build_id == build_id else None

    async def _transact_locked(self, plan: Plan[T]) -> T | Retry:
        """A plan in a transaction that holds the row locks: a CHAT or POOL read, or one that
        reads its owner's usage, under the owner's lock first (see the module docstring)."""
        read = plan.read

        async def body(conn: Conn) -> int | Retry:
            versions: dict[str, int] = {}
            owner = await sql.owner_of(conn, read) if read.usage else None
            # Counted only where a limit may refuse: the caller's, or one stored for the owner.
            counted = owner is not None and (await sql.lock_owner(conn, owner) or read.limited)
            rows: Rows | None
            if read.kind is ReadKind.POOL:
                rows, versions = await sql.lock_pool(conn, read.key, read.claimant)
            elif read.kind is ReadKind.CHAT:
                rows = await sql.lock_chat(conn, read.key, related=read.related)
            elif read.kind is ReadKind.WORKSPACE:
                rows = await sql.lock_workspace(conn, read.key, related=read.related)
            elif read.kind is ReadKind.BUILD or read.kind is ReadKind.LOG:
                rows = await sql.lock_build(conn, read.key, log=read.kind is ReadKind.LOG)
            else:
                rows = Rows()
            if rows is None:
                return RETRY  # bound to another workspace between the locks
            if counted and owner is not None:
                rows.usage = await sql.read_usage(conn, owner)
            write = plan.decide(rows)
            if write is None:
                if rows.facts is not None:
                    self._read_head(rows.facts.seq)
                return 0
            if write.owner is not None:
                await sql.write_owner(conn, write.owner)
            if not write.events and write.workspace is None and write.chat is None and write.build is None:
                return 0  # the owner's row was all it changed
            # A write on a pool member (a claim) is guarded by the member's version as read:
            # the members are read unlocked, and another claim may have taken it meanwhile.
            changed = write.workspace.workspace_id if write.workspace is not None else None
            seen = Seen(changed, versions[changed]) if changed in versions else None
            head = await self.committer.execute(conn, write, seen, new_chat=rows.chat is None)
            if head is None:
                raise _Conflict
            return head

        try:
            done = await self.connection.run(body, write=True, kind=plan.op)
        except _Conflict:
            return RETRY
        if isinstance(done, Retry):
            return done
        self._wrote(done)
        return plan.answer(done)

    def _read_head(self, head: int) -> None:
        """A read returned the log's ``head`` with its rows. By shard, it may be ahead of every
        notification this replica will get (other shards' commits): a caller that then waits
        for the pump to reach it (a lost compare-and-set catching up) must not be left to the
        poll, so the doorbell hears of it. On one channel a notification follows every commit
        anyway, and nothing changes."""
        if self.options.shards:
            self.doorbell.saw(head)

    def _wrote(self, head: int) -> None:
        """A write of this process committed up to ``head``: wake local waiters now, and other
        processes through the notifier (when the NOTIFY is not sent in the write itself)."""
        if not head:
            return
        self.doorbell.saw(head)
        if self.notifier is not None:
            self.notifier.announce(head)

    # --- plain reads -------------------------------------------------------------------------

    async def get_chat(self, chat_id: str) -> Chat | None:
        return await self.connection.run(lambda conn: sql.read_chat(conn, chat_id), kind="get_chat")

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        """The facts, read with their chat and versions: the known rows of this process's next
        write on the workspace (one round trip then, not two)."""
        facts, known = await self.connection.run(
            lambda conn: sql.read_facts_known(conn, workspace_id), kind="workspace_facts"
        )
        if facts is None:
            raise NotFoundError(f"no workspace {workspace_id!r}")
        if known is not None:
            self.committer.learned(known)
        self._read_head(facts.seq)
        return facts

    async def get_build(self, build_id: str) -> Build:
        build = await self.connection.run(lambda conn: sql.read_one_build(conn, build_id), kind="get_build")
        if build is None:
            raise NotFoundError(f"no build {build_id!r}")
        return build

    async def server_time(self) -> float:
        """PostgreSQL's ``clock_timestamp()`` (the moment the statement reads it, not the
        transaction's start as ``now()``) as seconds since the epoch."""

        async def read(conn: Conn) -> float:
            cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
            row = await cur.fetchone()
            assert row is not None
            return float(row[0])

        return await self.connection.run(read, kind="server_time")

    async def armed_deadlines(self) -> ArmedDeadlines:
        return await self.connection.run(sql.read_armed_deadlines, kind="armed_deadlines")

    async def list_chats(self) -> Sequence[ChatRow]:
        return await self.connection.run(sql.read_chat_rows, kind="list_chats")

    async def next_lease_expiry(self, *, skip: Collection[str] = ()) -> Lease | None:
        passed = list(skip)
        return await self.connection.run(
            lambda conn: sql.read_next_lease(conn, passed), kind="next_lease_expiry"
        )

    async def read_log(self, workspace_id: str, number: int | None = None) -> LogRead | None:
        return await self.connection.run(lambda conn: sql.read_log(conn, workspace_id, number))

    async def read_usage(self, owner: str) -> Usage:
        return await self.connection.run(lambda conn: sql.read_usage(conn, owner), kind="read_usage")

    # --- the event log -----------------------------------------------------------------------

    async def head(self) -> int:
        head = await self.connection.run(sql.read_head, kind="head")
        self.doorbell.saw(head)
        return head

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        events = await self.connection.run(
            lambda conn: sql.read_events(conn, after, limit), kind="read_events"
        )
        if events:
            self.doorbell.saw(events[-1].seq)
        return events

    async def wait_for_change(self, after: int) -> None:
        self.connection.check()
        await self.doorbell.sleep(after)
        self.connection.check()

    async def prune_events(self, older_than: float) -> int:
        return await self.connection.run(
            lambda conn: sql.prune_events(conn, older_than), write=True, kind="prune_events"
        )

    def take_interest(self, topic: Topic) -> None:
        self.listener.take_interest(topic)

    def drop_interest(self, topic: Topic) -> None:
        self.listener.drop_interest(topic)
