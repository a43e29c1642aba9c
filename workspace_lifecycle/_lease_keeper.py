"""One heartbeat for every build a provisioner holds: :class:`LeaseKeeper`.

:func:`~workspace_lifecycle.provisioner.holding` runs a heartbeat task (a task group and a cancel
scope) per build; for a provisioner that holds thousands of short builds that doubled the work
of a whole run. The keeper holds them all: a held build is an entry in a heap ordered by when
its renewal is due (:func:`~workspace_lifecycle.leases.renewal_due`, pure) and a cancel scope
around its work. One task sleeps on the clock until the earliest renewal due, renews what is
still held then, and cancels the work of a build whose lease was lost. A build whose work ends
before a third of its lease is never renewed; nothing else is spent on it but a heap entry.

The leases are as real as :func:`holding`'s: the build is claimed under a lease, a renewal
refused by the store (the lease expired, or the build was finished without us) cancels the
work and marks the hold lost, and a worker cut off from the store until its lease ran out (by
its clock) stops without waiting to hear it from the store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from . import leases
from ._heartbeat import Heartbeat
from ._held import Held
from .adapters.base import Store
from .clock import Clock
from .errors import (
    CallerError,
    CorruptStateError,
    LeaseLostError,
    NotFoundError,
    StoreClosedError,
    StoreError,
)
from .values import Build, Lease

__all__ = ["LeaseKeeper"]

log = logging.getLogger("workspace_lifecycle.provisioner")


class _Hold:
    """A build held: its lease as we surely hold it, its work's cancel scope, its next renewal."""

    __slots__ = ("due", "held", "ours", "scope")

    def __init__(self, held: Held, ours: Lease, due: float) -> None:
        self.held = held
        self.ours = ours
        self.due = due
        self.scope = anyio.CancelScope()


class LeaseKeeper:
    """Renews the leases of every build held with :meth:`hold`, from one task (:meth:`run`)."""

    def __init__(self, store: Store, *, lease_seconds: float, clock: Clock) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.clock = clock
        self._held: dict[str, _Hold] = {}
        self._beat = Heartbeat[_Hold](
            clock, kept=lambda hold: self._held.get(hold.held.build.build_id) is hold, renew=self._renew
        )
        #: Renewals that landed, over every build.
        self.renewals = 0

    @property
    def held(self) -> int:
        """How many builds are held now."""
        return len(self._held)

    @asynccontextmanager
    async def hold(self, build: Build) -> AsyncIterator[Held]:
        """Work on ``build`` under its lease while the block runs (see :func:`holding`): its
        work is cancelled if the lease is lost (then ``held.lost`` after the block)."""
        held = Held(build)
        lease = build.lease or Lease(
            build.build_id, build.workspace_id, build.worker, held.token, self.clock() + self.lease_seconds
        )
        since = lease.expires_at - self.lease_seconds
        hold = _Hold(held, lease, leases.renewal_due(since, self.lease_seconds, lease.expires_at))
        self._held[build.build_id] = hold
        self._beat.schedule(hold, hold.due)
        try:
            with hold.scope:
                yield held
        finally:
            if self._held.get(build.build_id) is hold:
                del self._held[build.build_id]

    async def run(self) -> None:
        """Renew what comes due, until cancelled."""
        await self._beat.run()

    async def _renew(self, hold: _Hold) -> None:
        build, held = hold.held.build, hold.held
        sent = self.clock()
        try:
            await self.store.renew_lease(build.build_id, held.token, lease_seconds=self.lease_seconds)
        except (LeaseLostError, NotFoundError) as exc:
            if not await self._finished_by_us(hold):
                self._lose(hold, exc)
            return
        except StoreClosedError:
            return
        except (StoreError, CorruptStateError) as exc:
            now = self.clock()
            if hold.ours.due(now):
                self._lose(hold, f"no renewal landed before it ran out: {exc}")
                return
            log.warning("provisioner: build %s: lease not renewed: %s", build.build_id, exc)
            self._reschedule(hold, leases.retry_due(now, self.lease_seconds, hold.ours.expires_at))
            return
        hold.ours = hold.ours.renewed(sent + self.lease_seconds)
        held.renewals += 1
        self.renewals += 1
        self._reschedule(hold, leases.renewal_due(sent, self.lease_seconds, hold.ours.expires_at))

    def _reschedule(self, hold: _Hold, due: float) -> None:
        if self._held.get(hold.held.build.build_id) is hold:
            self._beat.schedule(hold, due)

    async def _finished_by_us(self, hold: _Hold) -> bool:
        """A renewal was refused: because the work's finish landed, or because the lease is
        lost? Asked a few times over a short while if the store is briefly unavailable."""
        pause = self.lease_seconds * leases.RENEW_EVERY / 6
        for _ in range(3):
            try:
                stored = await self.store.get_build(hold.held.build.build_id)
            except (StoreError, CallerError):
                await self.clock.sleep_until(self.clock() + pause)
                continue
            return stored.finished_under(hold.held.token)
        return False

    def _lose(self, hold: _Hold, why: object) -> None:
        log.warning(
            "provisioner: build %s: lease lost (%s); stopping its work", hold.held.build.build_id, why
        )
        hold.held.lost = True
        hold.scope.cancel()
