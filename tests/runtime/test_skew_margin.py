"""The skew margin of deadlines and leases, on a virtual clock (issue 29, item 11).

``skew_margin`` delays each firing past its deadline (``Lifecycle``) and each expiry past its
lease's end (``LeaseReaper``), so a time stamped by a replica whose clock runs behind is not
acted on early. The decision is :func:`workspace_lifecycle.skew.act_margin` and the pure
functions it feeds (``tests/core/test_skew.py``); here the runtime keeps it.
"""

from __future__ import annotations

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, JobStatus, Transition, WorkspaceState

pytestmark = pytest.mark.anyio

CHAT, OWNER = "chat-1", "alice"
IDLE = 1800.0
MARGIN = 5.0
LEASE = 30.0


async def settle() -> None:
    """Let every task that can run, run (real time, briefly)."""
    for _ in range(10):
        await anyio.sleep(0.005)


async def stops(store: wl.Store) -> int:
    events = await store.read_events(0, 100_000)
    return sum(1 for e in events if e.kind is EventKind.BUILD_QUEUED and e.transition is Transition.STOP)


async def test_an_idle_stop_waits_out_the_margin() -> None:
    clock = wl.VirtualClock()
    store = wl.MemoryStore(clock=clock)
    policy = wl.Policy(idle_stop_after=IDLE)
    async with (
        store,
        wl.SimulatedProvisioner(store, clock=clock),
        wl.Lifecycle(store, clock=clock, policy=policy, skew_margin=MARGIN) as lc,
    ):
        await lc.register_chat(CHAT, owner=OWNER)
        assert (await lc.create_workspace(CHAT, owner=OWNER, name="dev")).data["created"] is True
        armed = lc.next_deadline()
        assert armed == clock() + IDLE  # the stored deadline keeps no margin: only its firing
        clock.advance(IDLE)
        await settle()
        clock.advance(MARGIN - 0.001)
        await settle()
        assert await stops(store) == 0 and await lc.state(CHAT) is WorkspaceState.AGENT_READY
        clock.advance(0.001)
        with anyio.fail_after(5):
            while await lc.state(CHAT) is not WorkspaceState.STOPPED:
                await settle()
        assert await stops(store) == 1 and lc.deadlines_fired == 1


async def test_a_lease_is_expired_only_after_the_margin() -> None:
    clock = wl.VirtualClock()
    async with wl.MemoryStore(clock=clock) as store:
        await store.register_chat(CHAT, OWNER)
        await store.create_workspace(CHAT, "dev", expected_workspace_id=None)
        build = await store.claim_build("w", lease_seconds=LEASE)
        assert build is not None
        async with wl.LeaseReaper(store, clock=clock, skew_margin=MARGIN) as reaper:
            await settle()
            clock.advance(LEASE + MARGIN - 0.001)
            await settle()
            assert reaper.expired == 0
            assert (await store.get_build(build.build_id)).status is JobStatus.RUNNING
            clock.advance(0.001)
            with anyio.fail_after(5):
                while reaper.expired == 0:
                    await settle()
        assert (await store.get_build(build.build_id)).status is JobStatus.FAILED


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_bad_margin_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="skew_margin"):
        wl.LeaseReaper(None, skew_margin=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="skew_margin"):
        wl.Lifecycle(wl.MemoryStore(), skew_margin=bad)
