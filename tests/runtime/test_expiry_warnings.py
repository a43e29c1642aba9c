"""Expiry warnings on a virtual clock, on every store: a ``deadline_approaching`` event
``warn_before`` seconds before an idle stop, once however many replicas look, and never for a
deadline that was pushed; tool answers carry the next deadline in words."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, Reason, Transition, WorkspaceState

pytestmark = pytest.mark.anyio

CHAT, OWNER = "chat-1", "alice"
IDLE, WARN = 1800.0, 60.0
POLICY = wl.Policy(idle_stop_after=IDLE, warn_before=WARN)


async def until(store: wl.Store, check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Wait (woken by the store's commits) until ``check()`` holds."""
    with anyio.fail_after(seconds):
        while True:
            head = await store.head()
            if await check():
                return
            await store.wait_for_change(head)


async def settle() -> None:
    await anyio.sleep(0.1)


async def warnings(store: wl.Store) -> list[wl.StoreEvent]:
    return [e for e in await store.read_events(0, 100_000) if e.kind is EventKind.DEADLINE_APPROACHING]


async def stops(store: wl.Store) -> list[wl.StoreEvent]:
    events = await store.read_events(0, 100_000)
    return [e for e in events if e.kind is EventKind.BUILD_QUEUED and e.transition is Transition.STOP]


@asynccontextmanager
async def world(
    store_url: str, replicas: int = 1
) -> AsyncIterator[tuple[wl.Store, list[wl.Lifecycle], wl.VirtualClock]]:
    clock = wl.VirtualClock(start=2_000_000_000.0)
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(wl.open_store(store_url, clock=clock))
        await stack.enter_async_context(wl.SimulatedProvisioner(store, clock=clock))
        lcs = [
            await stack.enter_async_context(wl.Lifecycle(store, clock=clock, policy=POLICY))
            for _ in range(replicas)
        ]
        await lcs[0].register_chat(CHAT, owner=OWNER)
        created = await lcs[0].create_workspace(CHAT, owner=OWNER, name="dev")
        assert created.data["created"] is True, created.text
        assert await lcs[0].state(CHAT) is WorkspaceState.AGENT_READY
        yield store, lcs, clock


class TestWarning:
    async def test_fires_once_at_the_configured_time(self, store_url: str) -> None:
        """Not one tick before deadline - warn_before, then exactly once; the stop still comes."""
        async with world(store_url) as (store, [lc], clock):
            deadline = lc.next_deadline()
            assert deadline is not None
            clock.advance(deadline - WARN - clock() - 0.001)
            await settle()
            assert await warnings(store) == []
            clock.advance(0.001)
            await until(store, lambda: _count(store, 1))
            [warning] = await warnings(store)
            assert warning.at == deadline - WARN and warning.deadline == deadline
            assert warning.reason is Reason.IDLE and warning.chat_id == CHAT
            assert lc.deadlines_warned == 1
            clock.advance(WARN - 1)
            await settle()
            assert await stops(store) == [] and len(await warnings(store)) == 1
            clock.advance(1)
            await until(store, lambda: _stopped(store))
            assert len(await warnings(store)) == 1

    async def test_a_touch_after_the_warning_cancels_it(self, store_url: str) -> None:
        """The pushed deadline stops nothing at the old time; its own warning comes in its time."""
        async with world(store_url) as (store, [lc], clock):
            first = lc.next_deadline()
            assert first is not None
            clock.advance(first - WARN - clock())
            await until(store, lambda: _count(store, 1))
            clock.advance(10)
            pushed = await lc.touch(CHAT, owner=OWNER)
            assert pushed is not None and pushed.at == clock() + IDLE and not pushed.warned
            clock.advance(first - clock() + 1)  # past the warned deadline
            await settle()
            assert await stops(store) == [] and len(await warnings(store)) == 1
            clock.advance(pushed.at - WARN - clock())
            await until(store, lambda: _count(store, 2))
            assert [w.deadline for w in await warnings(store)] == [first, pushed.at]

    async def test_a_touch_before_the_warning_moves_it(self, store_url: str) -> None:
        async with world(store_url) as (store, [lc], clock):
            first = lc.next_deadline()
            assert first is not None
            clock.advance(first - WARN - clock() - 5)
            await lc.touch(CHAT, owner=OWNER)
            clock.advance(10)  # past the first deadline's warning time
            await settle()
            assert await warnings(store) == []

    async def test_two_replicas_warn_once(self, store_url: str) -> None:
        async with world(store_url, replicas=3) as (store, lcs, clock):
            deadline = lcs[0].next_deadline()
            assert deadline is not None
            clock.advance(deadline - WARN - clock())
            await until(store, lambda: _count(store, 1))
            await settle()
            assert len(await warnings(store)) == 1
            assert sum(lc.deadlines_warned for lc in lcs) == 1
            clock.advance(WARN)
            await until(store, lambda: _stopped(store))
            assert len(await stops(store)) == 1 and len(await warnings(store)) == 1

    async def test_answers_carry_the_next_deadline_in_words(self, store_url: str) -> None:
        async with world(store_url) as (_store, [lc], clock):
            status = await lc.status(CHAT, owner=OWNER)
            assert status.data["next_deadline"] == "idle stop in 30 min"
            assert '"next_deadline": "idle stop in 30 min"' in status.text
            deadline = lc.next_deadline()
            assert deadline is not None
            clock.advance(deadline - 120 - clock())
            # A stop answers no deadline (stopping disarms the idle one, no retention is set).
            stopped = await lc.stop_workspace(CHAT, owner=OWNER)
            assert "next_deadline" not in stopped.data


class TestFollowing:
    async def test_a_subscriber_hears_the_warning(self, store_url: str) -> None:
        """Lifecycle.warnings: the chat's warnings as the pump delivers them; another owner hears none."""
        async with world(store_url) as (_store, [lc], clock):
            heard: list[wl.StoreEvent] = []
            stranger: list[wl.StoreEvent] = []
            arrived = anyio.Event()

            async def listen(into: list[wl.StoreEvent], owner: str) -> None:
                async for event in lc.warnings(CHAT, owner=owner):
                    into.append(event)
                    arrived.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(listen, heard, OWNER)
                tg.start_soon(listen, stranger, "mallory")
                await settle()
                deadline = lc.next_deadline()
                assert deadline is not None
                clock.advance(deadline - WARN - clock())
                with anyio.fail_after(10):
                    await arrived.wait()
                await settle()
                tg.cancel_scope.cancel()
            assert [e.deadline for e in heard] == [deadline] and stranger == []
            assert wl.deadline_in_words(heard[0].armed, clock()) == "idle stop in 60 s"


async def _count(store: wl.Store, n: int) -> bool:
    return len(await warnings(store)) >= n


async def _stopped(store: wl.Store) -> bool:
    return len(await stops(store)) >= 1
