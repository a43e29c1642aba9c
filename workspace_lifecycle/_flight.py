"""Single-flight: identical concurrent store writes of one process share one execution.

N callers that decided the same compare-and-set at the same time (say 250 ``start_workspace``
for one stopped workspace) would each run it: one wins, N-1 lose and read what won. The first
caller runs the write; the others, while it is in flight, wait for it and are answered what
their own write would have answered after it committed: a lost race, with the rows the write
left (:meth:`SingleFlight.run`'s ``share``). The answers stay those of today's race; the store
sees one write instead of N.

Only a write in flight is shared, never a finished one (a later identical call runs its own and
loses on the compare-and-set, as before). If the leader's write raised or was cancelled, each
waiting caller runs the write itself (one of them leads the next flight): a failure is never
handed to a caller who did not make the call.

Reads are shared differently (:class:`FreshRead`): never one that was already running when a
caller asked (it might predate that caller's own last write), only one started after.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel

from .adapters.base import Store
from .values import Chat

__all__ = ["FreshRead", "SharedReads", "SingleFlight"]

T = TypeVar("T")


class _Flight(Generic[T]):
    """One call in flight. Its event is made only when a second caller waits on it: most
    flights have nobody waiting, and an event costs more than the rest of the flight's
    bookkeeping."""

    __slots__ = ("_done", "finished", "ok", "result")

    def __init__(self) -> None:
        self._done: anyio.Event | None = None
        self.finished = False
        self.ok = False
        self.result: T

    async def wait(self) -> None:
        """Until the call ended (a checkpoint if it has)."""
        if self.finished:
            await anyio.lowlevel.checkpoint()
            return
        if self._done is None:
            self._done = anyio.Event()
        await self._done.wait()

    def end(self) -> None:
        """The call ended (returned, raised or was cancelled): wake whoever waits."""
        self.finished = True
        if self._done is not None:
            self._done.set()


class SingleFlight(Generic[T]):
    """Calls keyed by what makes them identical; one runs, the others share its result."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}
        self.shared = 0  # calls answered from another caller's flight

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]], share: Callable[[T], T]) -> T:
        """``await call()``, unless an identical call (same ``key``) is in flight: then wait for
        it and return ``share(its result)``."""
        while True:
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.wait()
            if flight.ok:
                self.shared += 1
                return share(flight.result)
            # The leader's call raised or was cancelled: run it ourselves (or join the next one).
        flight = self._flights[key] = _Flight()
        try:
            flight.result = await call()
            flight.ok = True
            return flight.result
        finally:
            del self._flights[key]
            flight.end()


class FreshRead(Generic[T]):
    """Concurrent identical reads share one that started after every one of them asked.

    A read already running when a caller asks may have read the rows before that caller's own
    last write committed, so it is never shared with it. The callers that ask meanwhile wait for
    it to end and then share one new read: each gets an answer at least as fresh as its own
    read would have been, and N concurrent callers make about two reads instead of N. If the
    shared read raises or its leader is cancelled, each of its callers reads for itself.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, _Flight[T]] = {}
        self._next: dict[Hashable, _Flight[T]] = {}
        self.shared = 0  # reads not made because a fresh one was shared

    async def run(self, key: Hashable, call: Callable[[], Awaitable[T]]) -> T:
        running = self._running.get(key)
        if running is None:
            return await self._lead(key, self._running.setdefault(key, _Flight()), call)
        follow = self._next.get(key)
        if follow is not None:  # the next read is planned and has not started: join it
            await follow.wait()
            if follow.ok:
                self.shared += 1
                return follow.result
            return await call()
        follow = self._next[key] = _Flight()
        try:
            await running.wait()
        except BaseException:
            del self._next[key]
            follow.end()  # its waiters read for themselves
            raise
        del self._next[key]
        newer = self._running.get(key)
        if newer is None:
            self._running[key] = follow
            return await self._lead(key, follow, call)
        # A caller who came after the last read ended started one already: it began after all
        # of ours asked, so it is fresh for them too. Hand its result on.
        try:
            await newer.wait()
        finally:
            if newer.ok:
                follow.result, follow.ok = newer.result, True
            follow.end()  # not ok: its waiters read for themselves
        if newer.ok:
            self.shared += 1
            return newer.result
        return await call()

    async def _lead(self, key: Hashable, flight: _Flight[T], call: Callable[[], Awaitable[T]]) -> T:
        try:
            flight.result = await call()
            flight.ok = True
            return flight.result
        finally:
            del self._running[key]
            flight.end()


class SharedReads:
    """The reads every request starts with (its chat, the log's head), shared with
    :class:`FreshRead` among concurrent requests of this process."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._chats = FreshRead[Chat | None]()
        self._heads = FreshRead[int]()

    @property
    def shared(self) -> int:
        return self._chats.shared + self._heads.shared

    async def get_chat(self, chat_id: str) -> Chat | None:
        return await self._chats.run(chat_id, lambda: self.store.get_chat(chat_id))

    async def head(self) -> int:
        return await self._heads.run(None, self.store.head)
