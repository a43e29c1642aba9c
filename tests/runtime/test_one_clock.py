"""One clock, given in one place (issue 27, point 6): the store's clock reaches the runtime,
the provisioners and the reaper; a different one given to them is refused when they are made."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.clock import resolve_clock, store_clock
from workspace_lifecycle.faults import FaultyStore

pytestmark = pytest.mark.anyio

SENTENCE = "is not its store's (the wall clock): give the clock to the store, open_store(url, clock=...)"


class TestTheStoresClockReachesEveryone:
    async def test_a_clock_given_only_to_the_store_fires_the_idle_stop(self) -> None:
        """The issue's case: the clock given to the store alone; the deadline fires on it."""
        clock = wl.VirtualClock()
        store = wl.MemoryStore(clock=clock)
        async with (
            store,
            wl.SimulatedProvisioner(store, build_seconds=20) as provisioner,
            wl.Lifecycle(store, policy=wl.Policy(idle_stop_after=600)) as lc,
        ):
            assert lc.clock is clock and provisioner.clock is clock
            await lc.register_chat("c", owner="a")
            await lc.create_workspace("c", owner="a", name="dev", wait=False)
            await anyio.wait_all_tasks_blocked()
            clock.advance(20)  # the simulated build takes 20 s of the store's clock
            await anyio.wait_all_tasks_blocked()
            assert await lc.state("c") is wl.WorkspaceState.AGENT_READY
            clock.advance(600)
            await anyio.wait_all_tasks_blocked()
            assert lc.deadlines_fired == 1
            clock.advance(20)
            await anyio.wait_all_tasks_blocked()
            assert await lc.state("c") is wl.WorkspaceState.STOPPED

    async def test_the_reaper_and_the_process_provisioner_read_it(self, tmp_path: Path) -> None:
        """``LeaseReaper(store)`` and ``ProcessProvisioner(store, ...)`` run on the store's clock,
        also through a wrapping store (``FaultyStore``)."""
        clock = wl.VirtualClock()
        store = FaultyStore(wl.MemoryStore(clock=clock))
        assert store_clock(store) is clock
        assert wl.LeaseReaper(store)._clock is clock
        process = wl.ProcessProvisioner(store, root=tmp_path, command=["true"])  # its holding() too
        assert process.reaper is not None and process.reaper._clock is clock

    async def test_the_default_store_clock_is_the_wall_clock(self) -> None:
        assert isinstance(wl.Lifecycle(wl.MemoryStore()).clock, wl.WallClock)
        assert isinstance(store_clock(object()), wl.WallClock)  # a store that names no clock


class TestAnotherClockIsRefused:
    @pytest.mark.parametrize(
        "make",
        [
            lambda store, clock: wl.Lifecycle(store, clock=clock),
            lambda store, clock: wl.SimulatedProvisioner(store, clock=clock),
            lambda store, clock: wl.LeaseReaper(store, clock=clock),
        ],
        ids=["Lifecycle", "SimulatedProvisioner", "LeaseReaper"],
    )
    async def test_a_virtual_clock_not_given_to_the_store(self, make: object) -> None:
        """One sentence, naming the class and where the clock goes."""
        with pytest.raises(ValueError, match=r"'s clock VirtualClock\(now=.*\) is not its store's") as caught:
            make(wl.MemoryStore(), wl.VirtualClock())  # type: ignore[operator]
        assert SENTENCE in str(caught.value)
        assert "\n" not in str(caught.value)

    async def test_holding_refuses_it_too(self) -> None:
        async with wl.MemoryStore() as store:
            await store.register_chat("c", "a")
            await store.create_workspace("c", "dev", expected_workspace_id=None)
            build = await store.claim_build("w")
            assert build is not None
            with pytest.raises(ValueError, match=r"^holding's clock .* is not its store's"):
                async with wl.holding(store, build, clock=wl.VirtualClock()):
                    pass

    async def test_two_virtual_clocks(self) -> None:
        ours, theirs = wl.VirtualClock(start=1.0), wl.VirtualClock(start=2.0)
        with pytest.raises(ValueError, match=r"is not its store's \(VirtualClock\(now=1.0\)\)"):
            wl.Lifecycle(wl.MemoryStore(clock=ours), clock=theirs)

    async def test_the_same_clock_or_two_wall_clocks_are_accepted(self) -> None:
        """Giving the store's own clock again (as the code written before this did) is fine, and
        so is a wall clock over a store on the wall clock."""
        clock = wl.VirtualClock()
        assert wl.Lifecycle(wl.MemoryStore(clock=clock), clock=clock).clock is clock

        def read() -> float:
            return 5.0

        assert wl.Lifecycle(wl.MemoryStore(clock=read), clock=read).clock() == 5.0
        for given in (wl.WallClock(), time.time):
            assert abs(wl.Lifecycle(wl.MemoryStore(), clock=given).clock() - time.time()) < 60
            assert (
                abs(resolve_clock(given, wl.MemoryStore(clock=wl.WallClock()), who="x")() - time.time()) < 60
            )
