"""A fault-injecting :class:`~workspace_lifecycle.adapters.base.Store` wrapper, for tests.

:class:`FaultyStore` wraps any store built on a driver (every store of this library, and a
user's :class:`~workspace_lifecycle.adapters.store.DriverStore`) and, with seeded randomness,
makes it misbehave the way real storage does. It wraps the driver's transaction and reads once
(:class:`~workspace_lifecycle.adapters.driver.WrappedDriver`), not each write by hand:

* ``fail_before``: a write raises :class:`~workspace_lifecycle.errors.StoreError` *before*
  reaching the store (nothing was written);
* ``fail_after``: a write commits and *then* raises (a lost reply, a timeout after COMMIT). The
  caller sees an error although the build exists: the ambiguous, dangerous case;
* ``drop``, ``duplicate``, ``reorder``: :meth:`read_events` loses events (a lost event is skipped
  for good: the batch's last event is always kept, so the reader's cursor moves past it, as a
  ``bigserial > cursor`` reader skips an id), repeats some, or shuffles the batch; ``drop_if``
  (a predicate on the event) loses chosen events deterministically, under the same rule;
* ``lose_wakeups``: :meth:`wait_for_change` sleeps until cancelled instead of returning (a lost
  ``NOTIFY``, a missed ``data_version`` change);
* ``delay``: a write sleeps up to ``max_delay`` seconds before or after its commit, which widens
  every race window.

Each probability is per call (per event for drop/duplicate). ``writes`` names the methods that
get write faults (default: the request side, ``create_workspace`` and ``request_build``; add
``claim_build``, ``finish_build``, ``report_agent`` and ``register_chat`` to hit the provisioner
side too). ``max_consecutive`` bounds how many write faults in a row one method suffers, so a
caller that retries a few times always gets through. :attr:`FaultyStore.injected` counts every
fault by kind; set :attr:`FaultyStore.enabled` to ``False`` to pass everything through.

Example::

    import workspace_lifecycle as wl
    from workspace_lifecycle.faults import FaultyStore

    async with wl.open_store("memory://") as raw:
        store = FaultyStore(raw, seed=1, fail_after=1.0, writes={"request_build"})
        ...  # a request_build now commits, then raises StoreError
        print(store.injected)  # Counter({'fail_after': 1})

Closing a :class:`FaultyStore` does not close the store it wraps (the test owns that one).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeVar

import anyio

from . import checks
from .adapters.base import Store
from .adapters.driver import Plan, Retry, WrappedDriver
from .adapters.store import DriverStore, as_driver_store
from .errors import TransientStoreError
from .values import StoreEvent

__all__ = ["InjectedFault", "FaultyStore", "REQUEST_WRITES", "ALL_WRITES"]

T = TypeVar("T")

#: The writes a runtime makes on behalf of a caller.
REQUEST_WRITES = frozenset({"create_workspace", "request_build"})
#: Every write of the store interface.
ALL_WRITES = REQUEST_WRITES | {
    "register_chat",
    "claim_build",
    "finish_build",
    "report_agent",
    "append_log",
    "touch",
    "fire_deadline",
    "warn_deadline",
    "defer_request",
    "hold_turn",
    "release_turn",
    "renew_lease",
    "expire_lease",
    "claim_pooled",
    "fill_pool",
    "set_limits",
}


class InjectedFault(TransientStoreError):
    """A fault injected by :class:`FaultyStore`; ``committed`` says whether the write happened."""

    def __init__(self, method: str, *, committed: bool) -> None:
        self.method = method
        self.committed = committed
        when = "after its write committed" if committed else "before writing"
        super().__init__(f"injected fault: {method} failed {when}")


def _probability(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], not {value!r}")
    return value


class FaultyStore(DriverStore):
    """Wraps ``inner``; injects faults with probabilities in [0, 1], seeded by ``seed``.

    >>> FaultyStore(None, drop=1.5)  # type: ignore[arg-type]
    Traceback (most recent call last):
    ...
    ValueError: drop must be a probability in [0, 1], not 1.5
    """

    def __init__(
        self,
        inner: Store,
        *,
        seed: int | None = None,
        fail_before: float = 0.0,
        fail_after: float = 0.0,
        drop: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: float = 0.0,
        lose_wakeups: float = 0.0,
        max_delay: float = 0.01,
        writes: Collection[str] = REQUEST_WRITES,
        max_consecutive: int | None = None,
        drop_if: Callable[[StoreEvent], bool] | None = None,
    ) -> None:
        self.fail_before = _probability("fail_before", fail_before)
        self.fail_after = _probability("fail_after", fail_after)
        self.drop = _probability("drop", drop)
        self.duplicate = _probability("duplicate", duplicate)
        self.reorder = _probability("reorder", reorder)
        self.delay = _probability("delay", delay)
        self.lose_wakeups = _probability("lose_wakeups", lose_wakeups)
        if fail_before + fail_after > 1.0:
            raise ValueError("fail_before + fail_after must not exceed 1")
        max_delay = checks.seconds("max_delay", max_delay, zero=True)
        unknown = set(writes) - ALL_WRITES
        if unknown:
            raise ValueError(f"unknown write methods {sorted(unknown)}; known: {sorted(ALL_WRITES)}")
        if max_consecutive is not None and max_consecutive < 1:
            raise ValueError("max_consecutive must be at least 1 (or None for no bound)")
        self.inner = inner
        super().__init__(_FaultyDriver(self, as_driver_store(inner)))
        self.max_delay = max_delay
        self.writes = frozenset(writes)
        self.max_consecutive = max_consecutive
        self.drop_if = drop_if
        self.enabled = True
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._streak: Counter[str] = Counter()

    async def aclose(self) -> None:
        """Does nothing: the wrapped store belongs to whoever opened it."""

    async def _transact(self, plan: Plan[T]) -> T:
        """Counts the call once (:attr:`calls`), however often its guard sends it back."""
        self.calls[plan.op] += 1
        return await super()._transact(plan)

    # --- fault machinery --------------------------------------------------------------------

    def _roll(self, p: float) -> bool:
        return self.enabled and p > 0.0 and self._random.random() < p

    async def _maybe_delay(self) -> None:
        if self._roll(self.delay):
            self.injected["delay"] += 1
            await anyio.sleep(self._random.uniform(0.0, self.max_delay))

    async def _write(self, plan: Plan[T], call: Callable[[], Awaitable[T | Retry]]) -> T | Retry:
        """One try of the write ``plan`` (``call`` runs it), with the faults drawn for it."""
        method = plan.op
        if method not in self.writes or not self.enabled:
            return await call()
        await self._maybe_delay()
        allowed = self.max_consecutive is None or self._streak[method] < self.max_consecutive
        draw = self._random.random() if allowed else 1.0
        if draw < self.fail_before:
            self._streak[method] += 1
            self.injected["fail_before"] += 1
            raise InjectedFault(method, committed=False)
        result = await call()
        if isinstance(result, Retry):
            return result  # nothing was written: the store reads and decides again
        if draw < self.fail_before + self.fail_after:
            self._streak[method] += 1
            self.injected["fail_after"] += 1
            raise InjectedFault(method, committed=True)
        self._streak[method] = 0
        await self._maybe_delay()
        return result

    async def _wait_for_change(self, call: Callable[[], Awaitable[None]]) -> None:
        if self._roll(self.lose_wakeups):
            self.injected["lost_wakeup"] += 1
            await anyio.sleep_forever()
        await call()

    def _events(self, events: list[StoreEvent]) -> list[StoreEvent]:
        """A batch of events as the faulty log delivers it."""
        if not self.enabled or not events:
            return events
        out: list[StoreEvent] = []
        for event in events[:-1]:  # the last one is kept: the reader's cursor must move on
            if self._roll(self.drop) or (self.drop_if is not None and self.drop_if(event)):
                self.injected["drop"] += 1
                continue
            out.append(event)
            if self._roll(self.duplicate):
                self.injected["duplicate"] += 1
                out.append(event)
        out.append(events[-1])
        if len(out) > 1 and self._roll(self.reorder):
            self.injected["reorder"] += 1
            last = out.pop()
            self._random.shuffle(out)
            # Keep the newest event last so the cursor still advances past the whole batch;
            # the events before it arrive in any order (and earlier ones may arrive again).
            out.append(last)
        return out


class _FaultyDriver(WrappedDriver):
    """The driver of a :class:`FaultyStore`: its transaction and log reads go through the
    store's fault machinery."""

    def __init__(self, faults: FaultyStore, inner: DriverStore) -> None:
        super().__init__(inner.driver)
        self.faults = faults

    async def around_write(self, plan: Plan[T], call: Callable[[], Awaitable[T | Retry]]) -> T | Retry:
        return await self.faults._write(plan, call)

    async def wait_for_change(self, after: int) -> None:
        await self.faults._wait_for_change(lambda: self.inner.wait_for_change(after))

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        return self.faults._events(list(await self.inner.read_events(after, limit)))
