"""The listener: wake-ups from other processes' writes (LISTEN/NOTIFY as a hint, a poll as the
fallback), the interest that decides which channels to LISTEN to, and the batched notifier.

* **Wake-ups.** Each write statement also calls ``pg_notify`` with the new head (delivered at
  commit). ``notify_after_commit=True`` sends it instead after the commits, from a batched
  notifier (:class:`Notifier`, DBOS's design); measured here, it gains nothing once writes are
  group-committed, so it is off by default. One dedicated ``LISTEN`` connection per store reads
  the notifications; local writes ring the store's doorbell at once. A notification is only a
  hint, never the head: its payload must look like one we send and name a head newer than the
  known one, and then the head is read from the log before anyone is woken (anything else is
  ignored and counted in :attr:`Listener.stray_notifications`). The sleepers are woken as soon
  as a hint arrives (their own reads of the log confirm it: a lie costs them one read), and the
  listener's head read then keeps the doorbell's head true for later sleepers: the wake-up
  does not wait for that round trip. The listener reads the head
  itself every ``poll_interval`` within a timeout, which also proves that its backend still
  answers (TCP keepalives catch a dead peer); one that does not is replaced. The fallback poll
  does not depend on that connection: while someone waits and the listener has not read the
  head for a ``poll_interval``, the pool reads it.
* **Notification shards** (``shards=N``): a write notifies the channels of
  :meth:`~.channels.Channels.of_write`; the runtime says what it waits on
  (:meth:`Listener.take_interest`), and the listener task alone LISTENs and UNLISTENs to match,
  counted per channel. A new interest interrupts its wait: it LISTENs, then reads the head, so
  a commit that landed before the LISTEN took effect still wakes (no lost wake-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time

import anyio
from psycopg import sql

from ...errors import StoreError
from ..base import Doorbell, Topic
from .channels import Channels
from .connection import DRIVER_ERRORS, Conn, Connection, CountedConnection, wire_round_trips
from .rows import read_head
from .schema import prepare

__all__ = ["Listener", "Notifier"]

log = logging.getLogger("workspace_lifecycle.postgres")

_PAYLOAD_RE = re.compile(r"[1-9][0-9]{0,18}")  # what a write sends: the new head, a positive bigint


class Notifier:
    """Sends one ``NOTIFY`` with the newest head this process committed, after the commits
    (DBOS's batched notifier): a ``NOTIFY`` inside a write costs every commit a turn on the
    server's global notification lock. Commits that land while one is being sent are announced
    together by the next. A notification is only a hint: one lost here (a crash between the
    commit and its NOTIFY, a failed send) costs other processes at most a ``poll_interval`` of
    latency, never an event."""

    def __init__(self, connection: Connection, channel: str) -> None:
        self._connection = connection
        self._channel = channel
        self._announce = anyio.Event()
        self._announce_head = 0  # the newest head this process committed
        self._notified = 0  # the newest head the notifier announced

    def announce(self, head: int) -> None:
        if head > self._announce_head:
            self._announce_head = head
            self._announce.set()

    async def notify(self, conn: Conn, *, head: int) -> None:
        # Its own transaction, committed without waiting for the disk: a notification is not
        # durable anyway, and its commit must not cost an fsync per write.
        await conn.execute(
            "SELECT set_config('synchronous_commit', 'off', true), pg_notify(%s, %s)",
            (self._channel, str(head)),
        )
        self._notified = max(self._notified, head)

    async def run(self) -> None:
        while True:
            await self._announce.wait()
            self._announce = anyio.Event()
            head = self._announce_head
            if head <= self._notified:
                continue
            try:
                await self._connection.run(functools.partial(self.notify, head=head))
            except StoreError as exc:
                log.info("PostgreSQL notifier: %s (the poll covers it)", exc)

    async def flush(self) -> None:
        """The last commits' NOTIFY, before the store closes (bounded; a hint at best)."""
        pool = self._connection.pool
        if pool is None or self._announce_head <= self._notified:
            return
        with anyio.move_on_after(1), contextlib.suppress(*DRIVER_ERRORS):
            async with pool.connection(timeout=1) as conn:
                await self.notify(conn, head=self._announce_head)


class Listener:
    """The store's one background task (:meth:`start`): the LISTEN connection, the fallback
    poll and the notifier; and the interest that says which channels to LISTEN to."""

    def __init__(
        self, connection: Connection, channels: Channels, doorbell: Doorbell, notifier: Notifier | None
    ) -> None:
        self._connection = connection
        self._options = connection.options
        self._channels = channels
        self._doorbell = doorbell
        self._notifier = notifier
        # Interest, by channel (shard mode): how many topics of this process need each one.
        # The listener task alone LISTENs and UNLISTENs (_follow_interest), to match it.
        self._wanted: dict[str, int] = {}
        self.listening: set[str] = set()  # the channels the listener connection LISTENs to
        self._interest_changed = False  # _wanted moved since the listener last matched it
        self._hearing: anyio.CancelScope | None = None  # the listener's wait for notifications
        self._conn: Conn | None = None  # the LISTEN connection, kept by the watcher
        self._watcher: asyncio.Task[None] | None = None
        self._read_at = 0.0  # time.monotonic() of the listener's last head read
        #: Notifications ignored: a payload that is not a head we send, or a head the log did
        #: not confirm. Notifications are hints; anyone may send one.
        self.stray_notifications = 0
        #: Every notification read, before any was found stray or stale.
        self.notifications_received = 0
        #: Wake-ups caused by the watcher (notifications that hinted at news, polls, reconnects),
        #: for tests.
        self.listener_wakeups = 0
        self.listener_connects = 0
        #: Reads of the head by the fallback poll (only while someone waits), for tests.
        self.polls = 0
        self._gone_trips = 0  # round trips of LISTEN connections since replaced
        #: The server process of the LISTEN connection (``pg_stat_activity.pid``).
        self.listener_pid: int | None = None

    @property
    def round_trips(self) -> int:
        """Round trips on the wire of the LISTEN connections (head reads, LISTEN/UNLISTEN)."""
        return self._gone_trips + (0 if self._conn is None else wire_round_trips(self._conn))

    # --- interest ----------------------------------------------------------------------------

    def take_interest(self, topic: Topic) -> None:
        """With shards, LISTEN to ``topic``'s channel from now on (counted per channel). The
        listener task applies it: it stops waiting, LISTENs, and then reads the head, so a
        notification sent before the LISTEN took effect is not missed (its commit is in that
        head). Without shards the one channel carries everything: nothing to do."""
        if not self._channels.shards:
            return
        for channel in self._channels.of_topic(topic):
            self._wanted[channel] = self._wanted.get(channel, 0) + 1
            if channel not in self.listening:
                self._interest_changed = True
                if self._hearing is not None:
                    self._hearing.cancel()  # the listener LISTENs to it now, not after its wait

    def drop_interest(self, topic: Topic) -> None:
        """The end of one :meth:`take_interest`: a channel nobody needs any more is UNLISTENed
        by the listener when it next wakes (meanwhile its notifications are merely extra)."""
        if not self._channels.shards:
            return
        for channel in self._channels.of_topic(topic):
            left = self._wanted.get(channel, 0) - 1
            if left > 0:
                self._wanted[channel] = left
            else:
                self._wanted.pop(channel, None)
                self._interest_changed = True

    # --- starting and stopping ---------------------------------------------------------------

    async def connect(self, *, migrate_first: bool = False) -> Conn:
        """A new LISTEN connection (migrating first when opening), its head read after LISTEN."""
        connection = self._connection
        with connection.boundary(connecting=True):
            conn = await CountedConnection.connect(self._options.listen_conninfo, autocommit=True)
        try:
            with connection.boundary():
                await connection.configure(conn)
                if migrate_first:  # or check, for a store opened without migrating
                    options = self._options
                    await prepare(conn, options.schema, migrating=options.migrate, url=options.url)
                self.listening = set()
                await self._follow_interest(conn)
                head = await read_head(conn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self.listener_connects += 1
        self.listener_pid = conn.info.backend_pid
        self._read_at = time.monotonic()
        # After a reconnect, anything may have been missed: wake everyone to re-read.
        if self._doorbell.saw(head, force=self.listener_connects > 1) and self.listener_connects > 1:
            self.listener_wakeups += 1
        return conn

    def start(self, conn: Conn | None) -> None:
        """Run the background task, listening on ``conn`` (``None``: no LISTEN connection)."""
        self._conn = conn
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Send the last NOTIFY, stop the task, close the LISTEN connection (callers shield this)."""
        if self._notifier is not None:
            await self._notifier.flush()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait({watcher})
            if not watcher.cancelled() and watcher.exception() is not None:
                log.error("PostgreSQL watcher failed", exc_info=watcher.exception())
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # --- the background task -----------------------------------------------------------------

    async def _watch(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._poll)
            if self._notifier is not None:
                tg.start_soon(self._notifier.run)
            if self._options.listens:
                await self._listen()

    async def _listen(self) -> None:
        """Keep a LISTEN connection: read hints, prove it answers, replace it when it does not."""
        delay = 0.05
        while True:
            try:
                # Every step bounded, as every store call is (a frozen backend answers nothing
                # and cannot enforce its own statement_timeout): a hang is a reconnect.
                if self._conn is None:
                    with anyio.fail_after(self._options.client_timeout):
                        self._conn = await self.connect()
                    delay = 0.05
                with anyio.fail_after(self._options.poll_interval + self._options.client_timeout):
                    await self._listen_once(self._conn)
            except (StoreError, TimeoutError) as exc:  # TimeoutError: the head read hung
                log.warning("PostgreSQL listener: %s; reconnecting in %.2fs", exc or "no answer", delay)
                if self._conn is not None:
                    self._gone_trips += wire_round_trips(self._conn)
                    await self._conn.close()
                    self._conn = None
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _listen_once(self, conn: Conn) -> None:
        """Wait up to ``poll_interval`` for a notification that hints at news, then read the head
        on the listener within ``listen_timeout``: that confirms the hint, is the poll while the
        listener is healthy, and proves its backend still answers (a hung one raises).

        With shards, a new interest interrupts the wait: its channel is LISTENed to, and the
        head read at once (what committed before the LISTEN took effect is in it)."""
        hinted = 0
        rang = 0  # the head a hint claimed when it rang the doorbell early (0: none did)
        deadline = time.monotonic() + self._options.poll_interval
        with self._connection.boundary():
            listened = await self._follow_interest(conn)
            while (
                not listened
                and hinted <= self._doorbell.head
                and (remaining := deadline - time.monotonic()) > 0
            ):
                # One packet at a time (all of it: a break would drop the rest of the packet;
                # an interrupted wait has read nothing yet: libpq keeps what it has not read).
                payloads: list[str] = []
                with anyio.CancelScope() as self._hearing:
                    if not self._interest_changed:
                        notes = conn.notifies(timeout=remaining, stop_after=1)
                        async with contextlib.aclosing(notes):
                            async for note in notes:
                                payloads.append(note.payload)
                self._hearing = None
                self.notifications_received += len(payloads)
                if payloads:
                    hinted = max(hinted, *map(self._hinted_head, payloads))
                    if hinted > self._doorbell.head and not rang:
                        rang = hinted
                        self._doorbell.ring()  # now, not after the head read below
                        self.listener_wakeups += 1
                elif self._interest_changed:
                    listened = await self._follow_interest(conn)
                else:
                    break  # the poll_interval passed in silence
            with anyio.fail_after(self._options.listen_timeout):
                head = await read_head(conn)
        self._read_at = time.monotonic()
        # The early ring was counted when it rang (a lie too: the stray count says so); this
        # read's ring counts when it found more than the hint (commits that landed meanwhile).
        self.listener_wakeups += self._doorbell.saw(head) and head > rang
        if hinted > head:  # a NOTIFY is delivered after its commit is visible: this one lied
            self.stray_notifications += 1

    async def _follow_interest(self, conn: Conn) -> bool:
        """LISTEN and UNLISTEN on the listener connection ``conn`` until it listens to the
        channels of this process's interest (the one channel, unless shards); say whether it
        LISTENed to a new one. Only the listener task runs this: one statement at a time."""
        listened = False
        while True:
            self._interest_changed = False
            wanted = set(self._wanted) if self._channels.shards else {self._channels.main}
            new, old = sorted(wanted - self.listening), sorted(self.listening - wanted)
            if not new and not old:
                return listened
            await conn.execute(
                sql.SQL("; ").join(
                    [sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in new]
                    + [sql.SQL("UNLISTEN {}").format(sql.Identifier(c)) for c in old]
                )
            )
            self.listening = wanted
            listened = listened or bool(new)

    def _hinted_head(self, payload: str) -> int:
        """The head a notification claims if its payload looks like one we send, else 0 (counted)."""
        if _PAYLOAD_RE.fullmatch(payload):
            return int(payload)
        self.stray_notifications += 1
        return 0

    async def _poll(self) -> None:
        """The fallback poll, on the pool so that it never depends on the connection it backs
        up: while someone waits and the listener has not read the head for a ``poll_interval``."""
        interval = self._options.poll_interval
        while True:
            await anyio.sleep(interval)
            if not self._doorbell.sleepers or time.monotonic() - self._read_at < interval:
                continue
            self.polls += 1
            try:
                head = await self._connection.run(read_head)
            except StoreError as exc:
                log.info("PostgreSQL fallback poll: %s", exc)
                continue
            if self._doorbell.saw(head):
                self.listener_wakeups += 1
