"""Clocks: what code that waits on time takes, so a test can step through hours in milliseconds.

A clock reads wall-clock time (seconds since the epoch, as the stores stamp their events and
deadlines) and sleeps until a wall-clock time. :class:`WallClock` is the real one, and the
default everywhere. :class:`VirtualClock` stands still until a test calls
:meth:`~VirtualClock.advance`, which wakes every sleeper whose time has come, as Temporal's
time-skipping test environment does. Give a clock to the store only
(``open_store(url, clock=clock)``): the :class:`~workspace_lifecycle.runtime.Lifecycle`
(when deadlines fire), the provisioners (how long a simulated build takes, when a lease is
renewed) and the :class:`~workspace_lifecycle.reaper.LeaseReaper` read it from the store
(:func:`store_clock`). A clock given to one of them that is not the store's is refused at
construction (:func:`resolve_clock`): on another clock, deadlines and leases would silently
fire never, or early.

A wall clock that jumps moves deadlines with it: forward, they fire early by the jump; backward,
late by it (a sleep already begun runs its length in real seconds, then the clock is read
again). Deadlines are stored as wall-clock times, so every replica and every restart agrees on
them, within the replicas' clock skew.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import anyio

from . import checks

__all__ = ["Clock", "VirtualClock", "WallClock", "as_clock", "resolve_clock", "store_clock"]


@runtime_checkable
class Clock(Protocol):
    """Reads wall-clock time (``clock()``) and sleeps until a wall-clock time."""

    def __call__(self) -> float: ...

    async def sleep_until(self, when: float) -> None:
        """Return once ``clock() >= when`` (at once if it already is; never if ``when`` is inf).
        May return early: callers read the clock again."""


class _CallableClock:
    """A plain ``() -> float`` as a clock: it sleeps in real seconds by its own readings."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read

    def __call__(self) -> float:
        return self._read()

    async def sleep_until(self, when: float) -> None:
        if math.isinf(when) and when > 0:
            await anyio.sleep_forever()
        delay = when - self._read()
        if delay > 0:
            await anyio.sleep(delay)


class WallClock(_CallableClock):
    """The real clock: ``time.time()`` and anyio's sleep."""

    def __init__(self) -> None:
        super().__init__(time.time)

    def __repr__(self) -> str:
        return "WallClock()"


def as_clock(clock: Clock | Callable[[], float] | None) -> Clock:
    """``clock`` as a :class:`Clock`: ``None`` is the wall clock; a plain function of no
    arguments reads the time and sleeps in real seconds."""
    if clock is None:
        return WallClock()
    if type(clock) in _CLOCKS:  # this library's own: no Protocol check (5% of a large run)
        return clock  # type: ignore[return-value]
    if isinstance(clock, Clock):
        return clock
    if callable(clock):
        return _CallableClock(clock)
    raise ValueError(f"clock must be a Clock or a function returning seconds, not {clock!r}")


def _store_read(store: object) -> Callable[[], float] | None:
    """The function ``store`` reads its time with (a driver store's ``driver.clock``), or
    ``None`` for a store that names none (one not built on a driver)."""
    read = getattr(getattr(store, "driver", None), "clock", None)
    return read if callable(read) else None


def _wall(read: object) -> bool:
    return read is time.time or isinstance(read, WallClock)


def store_clock(store: object) -> Clock:
    """The clock ``store`` stamps its events, deadlines and leases with, as a :class:`Clock`
    (the wall clock for a store that names none).

    >>> clock = VirtualClock()
    >>> from workspace_lifecycle.adapters.memory import MemoryStore
    >>> store_clock(MemoryStore(clock=clock)) is clock
    True
    >>> store_clock(MemoryStore())
    WallClock()
    """
    read = _store_read(store)
    return WallClock() if read is None or _wall(read) else as_clock(read)


def resolve_clock(clock: Clock | Callable[[], float] | None, store: object, *, who: str) -> Clock:
    """The clock ``who`` (a class name) runs on over ``store``: the store's own when ``clock``
    is ``None``; ``clock`` if it is the store's (or both are the wall clock); else
    ``ValueError``. A clock the store does not read would let deadlines and leases silently
    never fire (or fire early), so it is refused here, once, in one sentence.

    >>> resolve_clock(VirtualClock(), object(), who="Lifecycle")  # a store that names no clock
    VirtualClock(now=1800000000.0)
    >>> from workspace_lifecycle.adapters.memory import MemoryStore
    >>> resolve_clock(VirtualClock(), MemoryStore(), who="Lifecycle")
    Traceback (most recent call last):
    ...
    ValueError: Lifecycle's clock VirtualClock(now=1800000000.0) is not its store's (the wall clock): give the clock to the store, open_store(url, clock=...), and leave it out here (Lifecycle reads it from the store)
    """
    read = _store_read(store)
    if clock is None:
        return store_clock(store)
    given = as_clock(clock)
    if read is None or _same(clock, read):
        return given
    theirs = "the wall clock" if _wall(read) else repr(read)
    raise ValueError(
        f"{who}'s clock {clock!r} is not its store's ({theirs}): give the clock to the store,"
        f" open_store(url, clock=...), and leave it out here ({who} reads it from the store)"
    )


def _same(clock: object, read: Callable[[], float]) -> bool:
    if clock is read or (_wall(clock) and _wall(read)):
        return True
    inner = clock._read if isinstance(clock, _CallableClock) else None
    return inner is not None and (inner is read or (_wall(inner) and _wall(read)))


class VirtualClock:
    """A clock that moves only when told: ``advance(seconds)`` wakes whoever's time has come.

    >>> clock = VirtualClock(start=1000.0)
    >>> clock()
    1000.0
    >>> clock.advance(90)
    >>> clock()
    1090.0

    Use it from one event loop's thread (``advance`` is synchronous; the woken tasks run at the
    caller's next ``await``).
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = checks.instant("start", start)
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward (not back) and wake the sleepers now due."""
        step = checks.instant("seconds", seconds)
        if step < 0:
            raise ValueError(f"a clock only moves forward; advance({seconds!r})")
        self._now = checks.instant("the clock", self._now + step)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        if math.isinf(when):
            await anyio.sleep_forever()
        entry = (when, next(self._order), event)
        heapq.heappush(self._sleepers, entry)
        try:
            await event.wait()
        finally:
            if not event.is_set():  # cancelled: forget the entry
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    @property
    def sleepers(self) -> int:
        """How many sleeps wait for a time not reached yet."""
        return len(self._sleepers)

    def __repr__(self) -> str:
        return f"VirtualClock(now={self._now!r})"


#: The clocks of this module, returned by :func:`as_clock` without a runtime Protocol check.
_CLOCKS: frozenset[type] = frozenset({WallClock, VirtualClock, _CallableClock})
