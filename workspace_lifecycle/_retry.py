"""Store writes made on behalf of a request, retried after transient failures.

A write that raised :class:`~workspace_lifecycle.errors.TransientStoreError` may or may not
have committed. Every write is a compare-and-set, so the writer re-reads the rows and either
answers with what they show (the write, or another caller's, moved them on) or retries the
same write, which the compare-and-set makes safe.

Identical writes of concurrent requests in this process (the same compare-and-set) share one
execution (:class:`~workspace_lifecycle._flight.SingleFlight`): the callers that did not run it
are answered as the losers of the race they would have lost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio

from . import writes
from ._flight import SingleFlight
from .adapters.base import Deferral, Outcome, PoolClaim, Store
from .backoff import Backoff
from .errors import TransientStoreError
from .limits import Limits
from .values import Transition

__all__ = ["RetryingWriter", "claim_pooled"]

log = logging.getLogger("workspace_lifecycle.runtime")

T = TypeVar("T")

#: The pauses before re-reading after a failed write: short, a request is waiting on it.
_BACKOFF = Backoff(first=0.01, factor=4, cap=0.5)


class RetryingWriter:
    """``request_build``, ``defer_request`` and ``create_workspace`` with up to ``retries`` re-read-and-retries."""

    def __init__(self, store: Store, *, retries: int, limits: Limits | None = None) -> None:
        self.store = store
        self.retries = retries
        self.limits = limits  # the runtime's default limits, checked by the store
        self.retried = 0
        self._flights = SingleFlight[Outcome]()

    @property
    def shared(self) -> int:
        """Writes not made because an identical one was in flight (single-flight)."""
        return self._flights.shared

    async def _retry(self, write: Callable[[], Awaitable[T]], reread: Callable[[], Awaitable[T | None]]) -> T:
        """Run ``write``; on a :class:`TransientStoreError`, ``reread()`` the rows and retry.

        A failed write may have committed (an error after COMMIT). Every write is a
        compare-and-set, so ``reread`` decides: it returns a not-fired :class:`Outcome` when the
        rows moved on (this call's write or another caller's: the flow treats both as a lost
        race and answers about the build that exists), or ``None`` to retry the same write,
        which the compare-and-set makes safe.
        """
        delays = _BACKOFF.delays()
        for attempt in range(self.retries + 1):
            try:
                return await write()
            except TransientStoreError as exc:
                if attempt == self.retries:
                    raise
                delay = next(delays)
                log.warning("store write failed (%s); re-reading and retrying in %.2fs", exc, delay)
                self.retried += 1
                await anyio.sleep(delay)
                try:
                    moved = await reread()
                except TransientStoreError:
                    continue
                if moved is not None:
                    return moved
        raise AssertionError("unreachable")  # pragma: no cover

    async def request_build(
        self, workspace_id: str, transition: Transition, expected: int, parameters: Mapping[str, str]
    ) -> Outcome:
        """Append a ``transition`` build if build ``expected`` is still the latest."""

        async def write() -> Outcome:
            # Only when given: a store written before parameters existed keeps working without.
            extra: dict[str, Any] = {"parameters": parameters} if parameters else {}
            if self.limits is not None and transition is Transition.START:
                extra["limits"] = self.limits
            return await self.store.request_build(
                workspace_id, transition, expected_build_number=expected, **extra
            )

        async def reread() -> Outcome | None:
            facts = await self.store.workspace_facts(workspace_id)
            if writes.build_moved_on(facts, expected):
                return Outcome(fired=False, build=None, facts=facts)
            return None

        key = ("build", workspace_id, transition, expected, _frozen(parameters))
        return await self._flights.run(key, lambda: self._retry(write, reread), _lost)

    async def defer_request(
        self, workspace_id: str, transition: Transition | None, expected: int, requested_by: str
    ) -> Deferral:
        """Store (or withdraw) the request deferred behind build ``expected`` while it runs. The
        same write again is safe (it sets the same intent), so a failed one is simply retried."""

        async def write() -> Deferral:
            return await self.store.defer_request(
                workspace_id,
                transition,
                expected_build_number=expected,
                requested_by=requested_by,
                running_limit=None if self.limits is None else self.limits.running,
            )

        async def reread() -> Deferral | None:
            return None

        return await self._retry(write, reread)

    async def create_workspace(
        self, chat_id: str, name: str, expected: str | None, parameters: Mapping[str, str]
    ) -> Outcome:
        """Bind the chat to a new workspace if it is still bound to ``expected``."""

        async def write() -> Outcome:
            extra: dict[str, Any] = {"parameters": parameters} if parameters else {}
            if self.limits is not None:
                extra["limits"] = self.limits
            return await self.store.create_workspace(chat_id, name, expected_workspace_id=expected, **extra)

        async def reread() -> Outcome | None:
            now_bound = writes.rebound(await self.store.get_chat(chat_id), expected)
            if now_bound is None:
                return None
            facts = await self.store.workspace_facts(now_bound)
            if writes.create_landed(facts, name):
                return Outcome(fired=True, build=facts.latest_build, facts=facts)
            return Outcome(fired=False, build=None, facts=facts)

        key = ("create", chat_id, name, expected, _frozen(parameters))
        return await self._flights.run(key, lambda: self._retry(write, reread), _lost)


def _frozen(parameters: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(parameters.items()))


def _lost(outcome: Outcome) -> Outcome:
    """What an identical write answers once ``outcome``'s committed: it lost the race to it, and
    sees the rows it left (as the store answers a compare-and-set that lost)."""
    return Outcome(fired=False, build=None, facts=outcome.facts)


async def claim_pooled(
    writer: RetryingWriter, chat_id: str, pool: str, name: str, expected: str | None
) -> PoolClaim:
    """:meth:`~workspace_lifecycle.adapters.base.Store.claim_pooled`, retried after transient
    failures as every write: a claim that committed before its error is found by the re-read
    (the chat is bound to a workspace now), and answered as a lost race about it."""
    delays = _BACKOFF.delays()
    for attempt in range(writer.retries + 1):
        try:
            return await writer.store.claim_pooled(
                chat_id, pool, name, expected_workspace_id=expected, limits=writer.limits
            )
        except TransientStoreError as exc:
            if attempt == writer.retries:
                raise
            delay = next(delays)
            log.warning("pool claim failed (%s); re-reading and retrying in %.2fs", exc, delay)
            writer.retried += 1
            await anyio.sleep(delay)
            try:
                now_bound = writes.rebound(await writer.store.get_chat(chat_id), expected)
                if now_bound is not None:
                    return PoolClaim(False, await writer.store.workspace_facts(now_bound))
            except TransientStoreError:
                continue
    raise AssertionError("unreachable")  # pragma: no cover
