"""The pauses between retries: one schedule for every retry loop. Pure.

A loop that retries after a failure (a store write, a renewal, a reconnect, a probe) sleeps
``first`` seconds, then ``factor`` times longer each time, never more than ``cap``; once it
succeeds it starts over from ``first``. :class:`Backoff` is that schedule as a value; the loop
keeps the iterator of :meth:`Backoff.delays` and takes a fresh one after a success::

    >>> schedule = Backoff(first=0.05, factor=2, cap=0.3)
    >>> delays = schedule.delays()
    >>> [next(delays) for _ in range(5)]
    [0.05, 0.1, 0.2, 0.3, 0.3]

Jitter (spreading replicas that failed together) is the caller's: a function of the delay,
e.g. ``lambda d: rng.uniform(d / 2, d)`` with the caller's ``random.Random``.

Rules for this module: no I/O, no awaits, no clocks, no anyio (the loop sleeps, not this).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import attrs

from .checks import positive_seconds

__all__ = ["Backoff"]


def _factor(instance: object, field: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 100:
        raise ValueError(f"factor must be a number from 1 to 100, not {value!r}")


@attrs.frozen
class Backoff:
    """Pauses of ``first`` seconds, each ``factor`` times the last, at most ``cap``.

    >>> Backoff(first=1.0, cap=0.5)
    Traceback (most recent call last):
    ...
    ValueError: cap (0.5) must not be less than first (1.0)
    """

    first: float = attrs.field(validator=positive_seconds())
    factor: float = attrs.field(default=2.0, validator=_factor)
    cap: float = attrs.field(default=2.0, validator=positive_seconds())

    def __attrs_post_init__(self) -> None:
        if self.cap < self.first:
            raise ValueError(f"cap ({self.cap!r}) must not be less than first ({self.first!r})")

    def after(self, delay: float) -> float:
        """The pause after one of ``delay`` seconds.

        >>> Backoff(first=0.01, factor=4, cap=0.5).after(0.16)
        0.5
        """
        return min(delay * self.factor, self.cap)

    def delays(self, jitter: Callable[[float], float] | None = None) -> Iterator[float]:
        """The pauses, endlessly: ``first``, then each :meth:`after` the last. ``jitter``
        changes each pause handed out (not the schedule it is computed from)."""
        delay = self.first
        while True:
            yield delay if jitter is None else jitter(delay)
            delay = self.after(delay)
