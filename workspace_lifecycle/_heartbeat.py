"""One task that renews what comes due: :class:`Heartbeat`, the scheduler of the provisioner's
lease keeper (:mod:`._lease_keeper`) and the runtime's turn holds (:mod:`._holds`).

Each item carries when its next renewal is ``due``; the heartbeat keeps a heap of them, sleeps
on the clock until the earliest, and hands what is due to ``renew`` (each in a task of its
own). An item rescheduled or no longer kept (``kept(item)`` false) is dropped from the heap as
it comes up; a new item due before the current sleep ends cuts the sleep short. It decides
nothing: when an item is due is the pure core's (:mod:`~workspace_lifecycle.leases`).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Coroutine
from typing import Generic, Protocol, TypeVar

import anyio

from .clock import Clock

__all__ = ["Heartbeat"]


class _Due(Protocol):
    due: float


T = TypeVar("T", bound=_Due)


class Heartbeat(Generic[T]):
    """The items of one keeper, renewed from :meth:`run` as they come due."""

    def __init__(
        self,
        clock: Clock,
        *,
        kept: Callable[[T], bool],
        renew: Callable[[T], Coroutine[object, object, None]],
    ) -> None:
        self.clock = clock
        self._kept = kept
        self._renew = renew
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()
        self._nap: anyio.CancelScope | None = None  # the heartbeat's sleep, and until when
        self._nap_until = math.inf

    def schedule(self, item: T, due: float) -> None:
        """Renew ``item`` at ``due`` (replacing when it was due before)."""
        item.due = due
        heapq.heappush(self._heap, (due, next(self._order), item))
        if due < self._nap_until and self._nap is not None:
            self._nap.cancel()  # the heartbeat sleeps past this one: wake it to sleep less

    async def run(self) -> None:
        """Renew what comes due, until cancelled."""
        async with anyio.create_task_group() as tg:
            while True:
                due = self._pop_due(self.clock())
                for item in due:
                    tg.start_soon(self._renew, item)
                if due:
                    await anyio.lowlevel.checkpoint()
                    continue
                self._nap_until = self._heap[0][0] if self._heap else math.inf
                with anyio.CancelScope() as self._nap:
                    await self.clock.sleep_until(self._nap_until)
                self._nap, self._nap_until = None, math.inf

    def _pop_due(self, now: float) -> list[T]:
        """The items due at ``now``, dropping entries of items no longer kept or rescheduled."""
        heap, due = self._heap, []
        while heap:
            when, _, item = heap[0]
            if not self._kept(item) or when != item.due:
                heapq.heappop(heap)  # no longer kept, or rescheduled since
            elif when <= now:
                heapq.heappop(heap)
                due.append(item)
            else:
                break
        return due
