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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import anyio

__all__ = ["SingleFlight"]

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("done", "ok", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.ok = False
        self.result: T


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
            await flight.done.wait()
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
            flight.done.set()
