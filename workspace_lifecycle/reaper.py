"""Failing the builds whose provisioner stopped: the lease reaper.

Every claim is a lease (:meth:`~workspace_lifecycle.adapters.base.Store.claim_build`): a
fencing token and a time at which it runs out unless its worker renews it
(:func:`~workspace_lifecycle.provisioner.holding` does, every third of the lease). A worker that
was killed, hangs, or lost its database stops renewing; :class:`LeaseReaper` fails its build
once the lease ran out, with a sentence naming the worker. The workspace then reads
``failed``: waiting callers get ``workspace start build failed: ...``, and a retried
``start_workspace`` fires exactly one new build, which any live provisioner claims.

* **Exactly once across replicas.** The expiry is a compare-and-set in the store
  (:func:`~workspace_lifecycle.writes.expire_lease` decides): it holds only while the build is
  still in flight under that very token and its lease is due by the store's clock. Any number
  of reapers may race; one fails the build, the others find nothing to do.
* **Woken by the next expiry, not a scan.** A reaper reads the lease that runs out first
  (:meth:`~workspace_lifecycle.adapters.base.Store.next_lease_expiry`, one indexed read) and
  sleeps on its clock until then, or until the log shows a claim (a new lease may run out
  sooner; it reads the log once per wake-up, or hears it from its provisioner's claim loop).
  Renewals append no event: a reaper that wakes for a lease renewed meanwhile reads the new
  expiry and sleeps again.
* **Fencing.** The worker that lost its lease cannot finish, report on or renew that build:
  the store refuses with :class:`~workspace_lifecycle.errors.LeaseLostError` and changes nothing.

Each provisioner of this library runs one next to its claim loop (``reap_leases=True``), so
any live provisioner fails the builds of a dead one; a deployment may also run one alone::

    async with wl.open_store(url) as store:
        async with LeaseReaper(store):
            ...

:func:`local_worker_name` names workers ``prefix:host:pid``, so a failed build says which
process stopped.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence

import anyio

from . import checks, leases
from ._service import BackgroundService
from .adapters.base import Store
from .backoff import Backoff
from .clock import Clock, resolve_clock
from .errors import CorruptStateError, CursorExpiredError, StoreClosedError, StoreError
from .values import Build, Lease, StoreEvent

__all__ = ["LeaseReaper", "local_worker_name"]

log = logging.getLogger("workspace_lifecycle.reaper")

#: The pauses after a due lease the store would not expire (its clock is behind ours).
_BACKOFF = Backoff(first=0.01, factor=2, cap=1.0)


def local_worker_name(prefix: str = "worker") -> str:
    """``prefix:host:pid`` for this process: a failed build names the process that stopped."""
    return f"{prefix}:{socket.gethostname()}:{os.getpid()}"


class LeaseReaper(BackgroundService):
    """Fails every build whose lease ran out, once, woken by the next expiry.

    It runs on the store's clock (``clock``, if given, must be that one): a
    :class:`~workspace_lifecycle.clock.VirtualClock` given to the store steps a test through
    leases of minutes in milliseconds. ``retry_delay``: the pause
    after a store error. ``skew_margin``: seconds past a lease's end before it is expired
    (0 by default; see :func:`~workspace_lifecycle.skew.act_margin`): set it to the skew the
    workers' clocks may have behind the reaper's, so a live worker whose renewal was stamped
    by a clock running behind keeps its build.

    >>> LeaseReaper(None, retry_delay=0)  # type: ignore[arg-type]
    Traceback (most recent call last):
    ...
    ValueError: retry_delay must be a positive finite number of seconds, not 0
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | Callable[[], float] | None = None,
        retry_delay: float = 1.0,
        follow_log: bool = True,
        skew_margin: float = 0.0,
    ) -> None:
        self.store = store
        self.retry_delay = checks.seconds("retry_delay", retry_delay)
        self.skew_margin = checks.seconds("skew_margin", skew_margin, zero=True)
        self._clock = resolve_clock(clock, store, who="LeaseReaper")
        #: Whether it reads the log itself; if not, whoever reads it hands it on (:meth:`heard`).
        self.follow_log = follow_log
        self._cursor: int | None = None  # the log read up to here (follow_log)
        self._news: anyio.Event | None = None  # set when the log may hold a lease that runs out sooner
        #: Builds this reaper failed.
        self.expired = 0
        #: Times it woke up (a due lease, a new event, a retry): what an idle reaper costs.
        self.wakeups = 0
        #: Builds whose rows it cannot read: set aside (logged once), so they stop nobody else's.
        self.unreadable: set[str] = set()

    async def run(self) -> None:
        """Fail expired leases until cancelled (or the store closes)."""
        pause = _BACKOFF.first
        refused: Lease | None = None  # a due lease the store would not expire, as read
        while True:
            lease = None
            try:
                if self.follow_log and self._cursor is None:
                    self._cursor = await self.store.head()
                self._news = anyio.Event()  # what comes from now on may hold a sooner lease
                lease = await self.store.next_lease_expiry(skip=self.unreadable)
                now = self._clock()
                due = float("inf") if lease is None else leases.expiry_due(lease, self.skew_margin)
                if lease is None or due > now:
                    refused, pause = None, _BACKOFF.first
                    await self._sleep(due)
                elif await self.expire(lease) is not None:
                    refused, pause = None, _BACKOFF.first  # the next lease may be due too: read again
                elif lease != refused:
                    refused = lease  # renewed or finished meanwhile, probably: read again
                else:  # refused twice as it stands: the store's clock is behind ours
                    await self._sleep(now + pause)
                    pause = _BACKOFF.after(pause)
            except CursorExpiredError:
                self._cursor = None  # the log was pruned past us: read the lease afresh
            except StoreClosedError:
                return
            except CorruptStateError as exc:
                # One unreadable row must not stop the reaping of every other build.
                unreadable = exc.key if exc.table == "builds" and isinstance(exc.key, str) else None
                unreadable = unreadable or (lease.build_id if lease is not None else None)
                if unreadable is None:
                    log.warning("lease reaper: %s; trying again in %.1fs", exc, self.retry_delay)
                    await self._clock.sleep_until(self._clock() + self.retry_delay)
                else:
                    log.error("lease reaper: build %s set aside: %s", unreadable, exc)
                    self.unreadable.add(unreadable)
            except StoreError as exc:
                log.warning("lease reaper: %s; trying again in %.1fs", exc, self.retry_delay)
                await self._clock.sleep_until(self._clock() + self.retry_delay)

    async def expire(self, lease: Lease) -> Build | None:
        """Fail the build of ``lease`` if it is still due (see
        :meth:`~workspace_lifecycle.adapters.base.Store.expire_lease`); the failed build, or
        ``None`` when it was renewed, finished, or expired by another reaper."""
        build = await self.store.expire_lease(lease.build_id, lease.token)
        if build is not None:
            self.expired += 1
            log.warning("lease reaper: failed build %s: %s", build.build_id, build.error)
        return build

    def heard(self, events: Sequence[StoreEvent]) -> None:
        """News from the log, read by someone else (a provisioner's claim loop): a claim may
        hold a lease that runs out sooner than the one this reaper sleeps on."""
        if self._news is not None and leases.sooner_lease(events):
            self._news.set()

    async def _sleep(self, until: float) -> None:
        """Until ``until`` on the clock, or until the log shows a claim (a lease that may run
        out sooner): woken by the store's changes and a read of the log when it follows it
        itself, by :meth:`heard` otherwise. The log is read once per wake-up, and the next
        lease only when it may have changed."""
        failed: list[Exception] = []
        async with anyio.create_task_group() as tg:

            async def on_clock() -> None:
                await self._clock.sleep_until(until)
                tg.cancel_scope.cancel()

            async def on_news() -> None:
                try:
                    if self.follow_log:
                        await self._follow()
                    else:
                        assert self._news is not None
                        await self._news.wait()
                except Exception as exc:  # raised below, not as an exception group
                    failed.append(exc)
                tg.cancel_scope.cancel()

            tg.start_soon(on_clock)
            tg.start_soon(on_news)
        self.wakeups += 1
        if failed:
            raise failed[0]

    async def _follow(self) -> None:
        """Read the log until it shows a claim (or the news came by :meth:`heard`)."""
        while self._news is not None and not self._news.is_set():
            assert self._cursor is not None
            await self.store.wait_for_change(self._cursor)
            events = await self.store.read_events(self._cursor)
            if events:
                self._cursor = events[-1].seq
                self.heard(events)
