"""Turn holds on a virtual clock: while a turn holds the workspace no idle stop fires; the idle
countdown starts when the last hold ends (at its release, or at the expiry of a hold nobody
renews any more), and the idle stop then fires exactly ``idle_stop_after`` later.

The runtime renews its holds on the same virtual clock, so the clock is stepped a renewal
interval at a time (letting the runtime's tasks run between steps), as real time would pass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, Reason, Transition, WorkspaceState

pytestmark = pytest.mark.anyio

CHAT, OWNER = "chat-1", "alice"
IDLE = 60.0
HOLD = 30.0  # renewed every 10 s


async def stops(store: wl.Store) -> list[wl.StoreEvent]:
    return [
        e
        for e in await store.read_events(0, 100_000)
        if e.kind is EventKind.BUILD_QUEUED and e.transition is Transition.STOP
    ]


async def settle() -> None:
    """Let every task that can run, run (real time, briefly)."""
    await anyio.sleep(0.02)


async def step(clock: wl.VirtualClock, seconds: float, every: float = HOLD / 3) -> None:
    """Let ``seconds`` of virtual time pass, ``every`` at a time."""
    left = seconds
    while left > 1e-9:
        clock.advance(min(every, left))
        left -= min(every, left)
        await settle()


async def until(store: wl.Store, check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while True:
            head = await store.head()
            if await check():
                return
            await store.wait_for_change(head)


@asynccontextmanager
async def world() -> AsyncIterator[tuple[wl.MemoryStore, wl.Lifecycle, wl.VirtualClock]]:
    clock = wl.VirtualClock()
    store = wl.MemoryStore(clock=clock)
    async with (
        store,
        wl.SimulatedProvisioner(store, clock=clock),
        wl.Lifecycle(store, clock=clock, policy=wl.Policy(idle_stop_after=IDLE), hold_seconds=HOLD) as lc,
    ):
        await lc.register_chat(CHAT, owner=OWNER)
        result = await lc.create_workspace(CHAT, owner=OWNER, name="dev")
        assert result.data["created"] is True, result.text
        assert await lc.state(CHAT) is WorkspaceState.AGENT_READY
        yield store, lc, clock


async def stopped(lc: wl.Lifecycle) -> bool:
    return await lc.state(CHAT) is WorkspaceState.STOPPED


class TestTurnHolds:
    async def test_a_turn_held_for_three_idle_periods_stops_nothing(self) -> None:
        """Held across 3 idle periods: no stop; released at T, the stop fires at exactly T + IDLE."""
        async with world() as (store, lc, clock):
            async with lc.turn(CHAT, owner=OWNER) as turn:
                assert turn.holding and lc.turns == 1
                await step(clock, 3 * IDLE)
                assert await lc.state(CHAT) is WorkspaceState.AGENT_READY
                assert await stops(store) == []
                assert turn.renewals >= 3 * IDLE / (HOLD / 3) - 1 and not turn.lost
            ended = clock()
            await settle()
            assert lc.turns == 0
            assert lc.next_deadline() == ended + IDLE
            clock.advance(IDLE - 0.001)
            await settle()
            assert await stops(store) == []
            clock.advance(0.001)
            await until(store, lambda: stopped(lc))
            [stop] = await stops(store)
            assert stop.reason is Reason.IDLE and stop.at == ended + IDLE

    async def test_the_idle_stop_waits_for_the_last_of_two_turns(self) -> None:
        """Two turns overlap: the end of the first holds on; the countdown starts at the second's end."""
        async with world() as (store, lc, clock):
            async with lc.turn(CHAT, owner=OWNER):
                async with lc.turn(CHAT, owner=OWNER):
                    await step(clock, IDLE)
                await step(clock, 2 * IDLE)
                assert await stops(store) == []
                ended = clock()
            await settle()
            assert lc.next_deadline() == ended + IDLE
            await step(clock, IDLE)
            await until(store, lambda: stopped(lc))
            [stop] = await stops(store)
            assert stop.at == ended + IDLE

    async def test_a_hold_nobody_renews_lapses_and_the_countdown_starts_there(self) -> None:
        """A hold taken by a holder that died (never renewed): the stop fires at expiry + IDLE, once."""
        async with world() as (store, lc, clock):
            chat = await store.get_chat(CHAT)
            assert chat is not None and chat.workspace_id is not None
            expiry = await store.hold_turn(chat.workspace_id, "dead-process", hold_seconds=HOLD)
            assert expiry is not None
            await step(clock, expiry + IDLE - 0.001 - clock())
            assert await stops(store) == []
            assert await lc.state(CHAT) is WorkspaceState.AGENT_READY
            clock.advance(0.001)
            await until(store, lambda: stopped(lc))
            [stop] = await stops(store)
            assert stop.at == expiry + IDLE
            await step(clock, 3 * IDLE)
            assert len(await stops(store)) == 1

    async def test_a_turn_before_the_workspace_holds_it_once_it_exists(self) -> None:
        """A turn begun before create_workspace takes its hold at its next renewal."""
        clock = wl.VirtualClock()
        store = wl.MemoryStore(clock=clock)
        async with (
            store,
            wl.SimulatedProvisioner(store, clock=clock),
            wl.Lifecycle(store, clock=clock, policy=wl.Policy(idle_stop_after=IDLE), hold_seconds=HOLD) as lc,
        ):
            await lc.register_chat(CHAT, owner=OWNER)
            async with lc.turn(CHAT, owner=OWNER) as turn:
                assert not turn.holding
                await lc.create_workspace(CHAT, owner=OWNER, name="dev")
                await step(clock, 3 * IDLE)
                assert turn.holding
                assert await stops(store) == []

    async def test_another_owner_cannot_hold_the_chat(self) -> None:
        async with world() as (_, lc, _clock):
            with pytest.raises(wl.NotFoundError):
                async with lc.turn(CHAT, owner="mallory"):
                    pass  # pragma: no cover
            with pytest.raises(wl.NotFoundError):
                async with lc.turn("nobody", owner=OWNER):
                    pass  # pragma: no cover

    async def test_a_cancelled_turn_still_releases_its_hold(self) -> None:
        """A turn whose task is cancelled lets go of its hold at once: the countdown starts then."""
        async with world() as (store, lc, clock):
            with anyio.CancelScope() as scope:
                async with lc.turn(CHAT, owner=OWNER):
                    clock.advance(5)  # so the countdown the release starts is a new one
                    scope.cancel()
                    await anyio.sleep_forever()
            chat = await store.get_chat(CHAT)
            assert chat is not None and chat.workspace_id is not None
            ws = (await store.workspace_facts(chat.workspace_id)).workspace
            assert ws.holds == () and ws.deadline == wl.Deadline(clock() + IDLE, Reason.IDLE)
