"""The keeper of the warm pools: it executes what :mod:`workspace_lifecycle.pools` decides.

One task per pool. Each round reads the pool's members, deletes the ones of no use
(:func:`~workspace_lifecycle.pools.retired`: failed, stopped, past their time to live) and
queues as many new ones as :func:`~workspace_lifecycle.pools.shortfall` says, each with its own
compare-and-set (:meth:`~workspace_lifecycle.adapters.base.Store.fill_pool` decides again on
the rows it reads, so replicas that fill at once never overfill). Then it sleeps until news
that may give it work (:func:`~workspace_lifecycle.pools.wakes_keeper`: a claim, a member that
failed or went) or the next member's time to live, whichever comes first. It never polls; a
store error is retried after a backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from . import pools
from .adapters.base import Store
from .backoff import Backoff
from .clock import Clock
from .errors import StoreClosedError, WorkspaceLifecycleError
from .values import StoreEvent, Transition

__all__ = ["PoolKeeper"]

log = logging.getLogger("workspace_lifecycle.pools")

_BACKOFF = Backoff(first=0.05, factor=4, cap=5.0)


class PoolKeeper:
    """Keeps every pool of ``pools`` at its size (see the module docstring)."""

    def __init__(self, store: Store, pool_list: Sequence[pools.Pool], clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.pools = {pool.name: pool for pool in pool_list}
        self.filled = 0  # workspaces this keeper queued
        self.retired = 0  # delete builds this keeper fired
        self.rounds = 0  # rounds run (each one read of a pool's members)
        self._wake = {name: anyio.Event() for name in self.pools}

    def dispatch(self, event: StoreEvent) -> None:
        """The pump's news: wake the keeper of the pool it may give work to."""
        name = pools.wakes_keeper(event)
        if name is not None and name in self._wake:
            self._wake[name].set()

    def wake_all(self) -> None:
        """After a resync (events may have been missed): every keeper looks again."""
        for event in self._wake.values():
            event.set()

    async def run(self) -> None:
        """Keep every pool until cancelled."""
        async with anyio.create_task_group() as tg:
            for pool in self.pools.values():
                tg.start_soon(self._keep, pool)

    async def _keep(self, pool: pools.Pool) -> None:
        delays = _BACKOFF.delays()
        while True:
            self._wake[pool.name] = woken = anyio.Event()  # before the read: news after it wakes us
            try:
                next_due = await self.round(pool)
            except StoreClosedError:
                return
            except WorkspaceLifecycleError as exc:  # a store error, a corrupt row: try again later
                delay = next(delays)
                log.warning("pool %s: %s; trying again in %.2fs", pool.name, exc, delay)
                await anyio.sleep(delay)
                continue
            delays = _BACKOFF.delays()
            async with anyio.create_task_group() as tg:
                if next_due is not None:
                    tg.start_soon(self._alarm, next_due, woken)
                await woken.wait()
                tg.cancel_scope.cancel()

    async def _alarm(self, when: float, woken: anyio.Event) -> None:
        await self.clock.sleep_until(when)
        woken.set()

    async def round(self, pool: pools.Pool) -> float | None:
        """One round for ``pool``: retire, fill; when the next member expires (``None``: never)."""
        self.rounds += 1
        members = await self.store.pool_members(pool.name)
        now = self.clock()
        for member in pools.retired(members, now):
            latest = member.latest_build
            assert latest is not None
            outcome = await self.store.request_build(
                member.workspace_id, Transition.DELETE, expected_build_number=latest.number
            )
            self.retired += outcome.fired
        expiries = [pools.next_expiry(members, now)]
        for _ in range(pools.shortfall(pool, members, now)):
            made = await self.store.fill_pool(pool)
            if made is None:
                break  # another replica filled it meanwhile
            self.filled += 1
            expiries.append(pools.next_expiry([made], now))
        return min((e for e in expiries if e is not None), default=None)
