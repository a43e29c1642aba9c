"""Cheap holding: one heartbeat for every build a provisioner holds, and leases still real.

:class:`~workspace_lifecycle._lease_keeper.LeaseKeeper` renews a lease only when the build
outlives a third of it (:mod:`workspace_lifecycle.leases` decides when, purely); a lost lease
still stops the work and fences the worker. Everything runs on a
:class:`~workspace_lifecycle.VirtualClock` shared with the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import pytest

import workspace_lifecycle as wl
from bench.common import CountingStore
from workspace_lifecycle import leases
from workspace_lifecycle.adapters.driver import Plan, Retry
from workspace_lifecycle.errors import StoreUnavailableError
from workspace_lifecycle.faults import FaultyStore
from workspace_lifecycle.values import EventKind, JobStatus, StoreEvent

pytestmark = pytest.mark.anyio

T = TypeVar("T")
T0 = 2_000_000_000.0
LEASE = 30.0


async def _settle() -> None:
    for _ in range(50):
        await anyio.lowlevel.checkpoint()


async def _started(store: wl.Store) -> str:
    """A chat whose workspace's start build is queued; its workspace id."""
    await store.register_chat("c1", "alice")
    outcome = await store.create_workspace("c1", "dev", expected_workspace_id=None)
    return outcome.facts.workspace_id


async def _run_one_build(*, work: float, steps: list[float]) -> tuple[int, JobStatus | None]:
    """One build of ``work`` seconds, the clock advanced by ``steps``: the renewals its worker
    sent (counted at the store, and by the keeper: both must agree) and how the build ended."""
    clock = wl.VirtualClock(start=T0)
    async with wl.open_store("memory://", clock=clock) as raw:
        counted = CountingStore(raw)
        prov = wl.SimulatedProvisioner(counted, build_seconds=work, lease_seconds=LEASE, clock=clock)
        async with prov:
            ws = await _started(raw)
            await _settle()
            for step in steps:
                clock.advance(step)
                await _settle()
            assert prov.leases_lost == 0
        assert counted.calls["renew_lease"] == prov.leases.renewals
        build = (await raw.workspace_facts(ws)).latest_build
        return prov.leases.renewals, None if build is None else build.status


class TestPureTimes:
    def test_renewal_is_due_a_third_into_the_lease_and_never_after_it(self) -> None:
        """A third of the lease after it was taken (or last renewed); never past its end."""
        assert leases.renewal_due(T0, LEASE, T0 + LEASE) == T0 + 10
        assert leases.renewal_due(T0, LEASE, T0 + 5) == T0 + 5

    def test_work_done_before_a_third_needs_no_renewal(self) -> None:
        assert not leases.needs_renewal(T0, LEASE, 9.9)
        assert leases.needs_renewal(T0, LEASE, 10.0)

    def test_a_failed_renewal_is_retried_half_an_interval_later(self) -> None:
        assert leases.retry_due(T0 + 10, LEASE, T0 + LEASE) == T0 + 15
        assert leases.retry_due(T0 + 28, LEASE, T0 + LEASE) == T0 + LEASE

    def test_claims_owed_count_the_queued_builds(self) -> None:
        queued = StoreEvent(1, EventKind.BUILD_QUEUED, "w", "c")
        running = StoreEvent(2, EventKind.BUILD_UPDATED, "w", "c", status=JobStatus.RUNNING)
        agent = StoreEvent(3, EventKind.AGENT_UPDATED, "w", "c")
        assert leases.claims_owed([queued, running, agent, queued]) == 2
        assert leases.claims_owed([running, agent]) == 0
        assert leases.sooner_lease([agent, running]) and not leases.sooner_lease([queued, agent])


class TestKeeper:
    async def test_a_build_done_before_a_third_of_its_lease_is_never_renewed(self) -> None:
        renewals, done = await _run_one_build(work=5, steps=[5, 3 * LEASE])  # a sixth of its lease
        assert renewals == 0 and done == JobStatus.SUCCEEDED

    async def test_a_build_that_outlives_a_third_of_its_lease_is_renewed(self) -> None:
        renewals, done = await _run_one_build(work=50, steps=[5] * 10)  # past its first lease
        assert renewals >= 4 and done == JobStatus.SUCCEEDED  # at 10, 20, 30, 40 s

    async def test_one_heartbeat_serves_every_build_held(self) -> None:
        """Many builds held at once: renewals, no task per build."""
        clock = wl.VirtualClock(start=T0)
        async with wl.open_store("memory://", clock=clock) as raw:
            prov = wl.SimulatedProvisioner(raw, build_seconds=15, lease_seconds=LEASE, clock=clock)
            async with prov:
                for i in range(20):
                    await raw.register_chat(f"c{i}", "alice")
                    await raw.create_workspace(f"c{i}", "dev", expected_workspace_id=None)
                await _settle()
                assert prov.leases.held == 20
                clock.advance(11)
                await _settle()
                assert prov.leases.renewals == 20  # each renewed once, a third into its lease
                clock.advance(4)
                await _settle()
                assert prov.builds_done == 20 and prov.leases.held == 0

    async def test_a_lost_lease_stops_the_work_and_fences_the_worker(self) -> None:
        """Renewals cut off: the lease runs out, the reaper fails the build, the worker's work
        is cancelled and nothing it still does for the build lands."""
        clock = wl.VirtualClock(start=T0)
        async with wl.open_store("memory://", clock=clock) as raw:
            cut = _NoRenewals(raw)
            prov = wl.SimulatedProvisioner(cut, build_seconds=3 * LEASE, lease_seconds=LEASE, clock=clock)
            async with prov:
                ws = await _started(raw)
                await _settle()
                for _ in range(12):
                    clock.advance(LEASE / 6)
                    await _settle()
                assert prov.leases_lost == 1 and prov.builds_done == 0
                facts = await raw.workspace_facts(ws)
                assert facts.latest_build is not None and facts.latest_build.status is JobStatus.FAILED
                clock.advance(3 * LEASE)  # past the work's end: it was cancelled, nothing finishes
                await _settle()
            assert cut.calls["renew_lease"] >= 2
            assert cut.calls["finish_build"] == 0 and cut.calls["report_agent"] == 0
            assert (await raw.workspace_facts(ws)).latest_build.status is JobStatus.FAILED  # type: ignore[union-attr]


class _NoRenewals(FaultyStore):
    """Every renewal fails as an unreachable store would (a partition of the heartbeat)."""

    def __init__(self, inner: wl.Store) -> None:
        super().__init__(inner, writes=())

    async def _write(self, plan: Plan[T], call: Callable[[], Awaitable[T | Retry]]) -> T | Retry:
        if plan.op == "renew_lease":
            self.calls[plan.op] += 1
            raise StoreUnavailableError("the heartbeat is cut off")
        return await super()._write(plan, call)
