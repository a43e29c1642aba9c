"""Clocks: what code that waits on time takes, so a test can step through hours in milliseconds.

A clock reads wall-clock time (seconds since the epoch, as the stores stamp their events and
deadlines) and sleeps until a wall-clock time. :class:`WallClock` is the real one, and the
default everywhere. :class:`VirtualClock` stands still until a test calls
:meth:`~VirtualClock.advance`, which wakes every sleeper whose time has come, as Temporal's
time-skipping test environment does. Give the *same* clock to the store (its events' and
deadlines' times), the :class:`~workspace_lifecycle.runtime.Lifecycle` (when deadlines fire)
and the provisioner (how long a simulated build takes).

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

__all__ = ["Clock", "VirtualClock", "WallClock", "as_clock"]


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
