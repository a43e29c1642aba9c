"""The event pump: one task per :class:`~workspace_lifecycle.runtime.Lifecycle` that reads the
store's log from a cursor and hands each event to the registry of tracked workspaces.

It sleeps in the store's ``wait_for_change`` while the log has nothing new (no polling), backs
off on transient store errors, resynchronises when the log was pruned past its cursor, and
skips an unreadable log entry after saying which. Requests wait on it with :meth:`caught_up`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import Protocol

import anyio

from .adapters.base import Store
from .backoff import Backoff
from .errors import CorruptStateError, CursorExpiredError, StoreClosedError, StoreError
from .values import StoreEvent

__all__ = ["EventPump", "PumpSink"]

log = logging.getLogger("workspace_lifecycle.runtime")

#: How long a request waits for the pump to reach a sequence number it knows was committed
#: before it kicks the pump to read again (a lost wake-up; never happens in the normal path).
KICK_AFTER = 5.0

#: Events read at once; a batch shorter than this reached the log's end.
_BATCH = 1000

#: The pauses before reading again after a transient store error.
_BACKOFF = Backoff(first=0.05, factor=2, cap=2.0)


class PumpSink(Protocol):
    """Where the pump delivers: the registry of tracked workspaces."""

    def dispatch(self, event: StoreEvent) -> None: ...

    async def resync_all(self) -> None: ...

    def fail(self) -> None: ...


class EventPump:
    """Reads the log after ``cursor`` and delivers every event to ``sink``, in order."""

    def __init__(self, store: Store, sink: PumpSink, *, kick_after: float | None) -> None:
        self.store = store
        self.sink = sink
        self.cursor = 0
        self.kick_after = kick_after or KICK_AFTER
        self.failure: BaseException | None = None
        self.closed = False
        self.kicks = 0  # reads forced after a lost wake-up
        # Requests waiting for the cursor to reach a seq, earliest first: each delivery wakes
        # only those it satisfies, not every waiter (10,000 waiting callers woken per batch
        # were most of a large run's work).
        self._waiters: list[tuple[int, int, anyio.Event]] = []
        self._order = itertools.count()
        self._sleep: anyio.CancelScope | None = None  # the wait for the store's next change

    async def start(self) -> None:
        """Begin at the log's head: what is tracked later is loaded from the rows."""
        self.cursor = await self.store.head()

    async def run(self) -> None:
        """Deliver events until cancelled; a bug (not a store fault) wakes every waiter first."""
        try:
            await self._forever()
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            log.exception("event pump failed")
            self._fail(exc)
            raise

    async def _forever(self) -> None:
        delay = _BACKOFF.first
        read = True  # whether to read before sleeping (not after a batch that ended the log)
        while True:
            try:
                events = await self.store.read_events(self.cursor, _BATCH) if read else ()
                read = True
                if not events:
                    # Requests waiting on a seq the log does not show yet: if no wake-up comes
                    # within kick_after, read again anyway (a wake-up is a hint, never a promise).
                    kick = anyio.current_time() + self.kick_after if self._waiters else math.inf
                    with anyio.CancelScope(deadline=kick) as self._sleep:
                        await self.store.wait_for_change(self.cursor)
                    self._sleep = None
                    if self._waiters and anyio.current_time() >= kick:
                        self.kicks += 1
                    continue
                for event in events:
                    self.sink.dispatch(event)
                    self.cursor = event.seq
                self._advance()
                delay = _BACKOFF.first
                # A short batch was the log's end when it was read: one read per wake-up. What
                # committed since rang the doorbell, so wait_for_change returns at once for it.
                read = len(events) >= _BATCH
            except CursorExpiredError:
                await self._resync_all(await self.store.head())
            except CorruptStateError as exc:
                if exc.table != "events" or not isinstance(exc.key, int) or exc.key <= self.cursor:
                    raise
                # An unreadable log entry: say which, re-derive what we track from the rows,
                # and go on after it rather than stop answering everyone.
                log.error("event pump: skipping %s", exc)
                await self._resync_all(exc.key)
            except StoreClosedError as exc:
                self._fail(exc)
                return
            except StoreError as exc:
                # Transient (a restarted database, a dropped connection): retry with backoff;
                # the store's own reconnect and resync bring the log back.
                log.warning("event pump: %s; retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
                delay = _BACKOFF.after(delay)

    async def _resync_all(self, resume: int) -> None:
        """Re-derive every tracked workspace from the rows, then read on after ``resume`` (the
        rows already hold everything up to it)."""
        await self.sink.resync_all()
        self.cursor = max(self.cursor, resume)
        self._advance()

    def _advance(self) -> None:
        """Wake the requests waiting for a seq the cursor has reached."""
        waiters, cursor = self._waiters, self.cursor
        while waiters and waiters[0][0] <= cursor:
            heapq.heappop(waiters)[2].set()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for _, _, event in waiters:
            event.set()

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        self.sink.fail()
        self._wake_all()

    def close(self) -> None:
        """The runtime is shutting down: wake everyone who waits on the pump (they raise)."""
        self.closed = True
        self.sink.fail()
        self._wake_all()

    def raise_if_failed(self) -> None:
        if self.closed:
            raise StoreClosedError("the Lifecycle was closed while this request waited")
        if self.failure is not None:
            raise StoreClosedError(f"the event pump stopped: {self.failure}")

    async def caught_up(self, seq: int) -> None:
        """Wait until every event up to ``seq`` was delivered.

        If the store's wake-up for it is lost, the pump reads again ``kick_after`` seconds
        after it went to sleep with requests waiting: one timer for all of them, not one each.
        """
        while self.cursor < seq:
            self.raise_if_failed()
            reached = anyio.Event()
            heapq.heappush(self._waiters, (seq, next(self._order), reached))
            sleep = self._sleep
            if sleep is not None and sleep.deadline == math.inf:
                sleep.deadline = anyio.current_time() + self.kick_after
            await reached.wait()
        self.raise_if_failed()
