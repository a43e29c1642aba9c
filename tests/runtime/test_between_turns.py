"""Between turns, on a virtual clock: idle stop, touch, resume on the next turn, retention.

A :class:`~workspace_lifecycle.VirtualClock` given to the store, the provisioner and the runtime
makes a 30-minute idle timeout a matter of milliseconds: nothing here sleeps in real time except
to let the runtime's tasks run.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, Reason, Transition, WorkspaceState
from workspace_lifecycle.answers import WORKSPACE_DELETED
from workspace_lifecycle.faults import FaultyStore

pytestmark = pytest.mark.anyio

CHAT, OWNER = "chat-1", "alice"
IDLE = 1800.0
RETAIN = 7 * 24 * 3600.0


async def until(store: wl.Store, check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    """Wait (woken by the store's commits, no polling) until ``check()`` holds."""
    with anyio.fail_after(seconds):
        while True:
            head = await store.head()
            if await check():
                return
            await store.wait_for_change(head)


async def builds(store: wl.Store) -> list[wl.StoreEvent]:
    """Every build_queued event of the log, oldest first."""
    return [e for e in await store.read_events(0, 100_000) if e.kind is EventKind.BUILD_QUEUED]


async def stops(store: wl.Store) -> list[wl.StoreEvent]:
    return [e for e in await builds(store) if e.transition is Transition.STOP]


async def settle() -> None:
    """Let every task that can run, run (real time, briefly)."""
    await anyio.sleep(0.05)


@asynccontextmanager
async def world(
    policy: wl.Policy, clock: wl.VirtualClock | None = None
) -> AsyncIterator[tuple[wl.MemoryStore, wl.Lifecycle, wl.VirtualClock]]:
    clock = clock or wl.VirtualClock()
    store = wl.MemoryStore(clock=clock)
    async with (
        store,
        wl.SimulatedProvisioner(store, clock=clock),
        wl.Lifecycle(store, clock=clock, policy=policy) as lc,
    ):
        await lc.register_chat(CHAT, owner=OWNER)
        yield store, lc, clock


async def ready(lc: wl.Lifecycle) -> None:
    result = await lc.create_workspace(CHAT, owner=OWNER, name="dev")
    assert result.data["created"] is True, result.text
    assert await lc.state(CHAT) is WorkspaceState.AGENT_READY


class TestIdleStop:
    async def test_fires_at_the_deadline_and_not_one_tick_before(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (store, lc, clock):
            await ready(lc)
            armed = lc.next_deadline()
            assert armed == clock() + IDLE
            clock.advance(IDLE - 0.001)
            await settle()
            assert await lc.state(CHAT) is WorkspaceState.AGENT_READY
            assert await stops(store) == []
            clock.advance(0.001)
            await until(store, lambda: _is(lc, WorkspaceState.STOPPED))
            [stop] = await stops(store)
            assert stop.reason is Reason.IDLE
            assert lc.deadlines_fired == 1 and lc.next_deadline() is None

    async def test_touch_pushes_the_deadline(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (store, lc, clock):
            await ready(lc)
            clock.advance(1000)
            deadline = await lc.touch(CHAT, owner=OWNER)
            assert deadline == wl.Deadline(clock() + IDLE, Reason.IDLE)
            clock.advance(IDLE - 1)  # past the first deadline, before the pushed one
            await settle()
            assert await lc.state(CHAT) is WorkspaceState.AGENT_READY
            clock.advance(1)
            await until(store, lambda: _is(lc, WorkspaceState.STOPPED))
            assert len(await stops(store)) == 1

    async def test_repeated_touches_coalesce_into_one_write(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (store, lc, clock):
            await ready(lc)
            clock.advance(10)
            head = await store.head()
            results = []
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(lambda: _append(results, lc.touch(CHAT, owner=OWNER)))
            for _ in range(20):  # within the slack: nothing more to write
                clock.advance(0.01)
                results.append(await lc.touch(CHAT, owner=OWNER))
            written = [e for e in await store.read_events(head) if e.kind is EventKind.DEADLINE_SET]
            assert len(written) == 1
            assert {r for r in results} == {wl.Deadline(written[0].deadline or 0, Reason.IDLE)}

    async def test_every_tool_request_counts_as_activity(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (_store, lc, clock):
            await ready(lc)
            clock.advance(1500)
            assert (await lc.status(CHAT, owner=OWNER)).data["status"] == "agent_ready"
            assert lc.next_deadline() == clock() + IDLE
            clock.advance(1500)
            assert (await lc.start_workspace(CHAT, owner=OWNER)).data["started"] is True
            assert lc.next_deadline() == clock() + IDLE

    async def test_a_request_in_flight_disarms_and_the_builds_end_rearms(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (store, lc, clock):
            await ready(lc)
            assert (await lc.stop_workspace(CHAT, owner=OWNER)).data["stopped"] is True
            assert lc.next_deadline() is None  # stopped: no idle deadline (and no retention)
            clock.advance(10 * IDLE)
            await settle()
            assert [b.reason for b in await stops(store)] == [Reason.REQUEST]

    async def test_watch_says_why_a_build_was_fired(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (_store, lc, clock):
            await ready(lc)
            seen: list[wl.StateChange] = []
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    async for change in lc.watch(CHAT):
                        seen.append(change)
                        if change.to_state is WorkspaceState.STOPPED:
                            return

                tg.start_soon(watch)
                await settle()
                clock.advance(IDLE)
            assert [(c.to_state, c.reason) for c in seen] == [
                (WorkspaceState.BUILDING, Reason.IDLE),
                (WorkspaceState.STOPPED, Reason.IDLE),
            ]

    async def test_a_runtime_started_after_the_deadline_fires_it(self) -> None:
        clock = wl.VirtualClock()
        store = wl.MemoryStore(clock=clock)
        async with store, wl.SimulatedProvisioner(store, clock=clock):
            async with wl.Lifecycle(store, clock=clock, policy=wl.Policy(idle_stop_after=IDLE)) as lc:
                await lc.register_chat(CHAT, owner=OWNER)
                await ready(lc)
            clock.advance(2 * IDLE)  # nobody runs: nothing fires
            await settle()
            assert await stops(store) == []
            async with wl.Lifecycle(store, clock=clock) as later:
                await until(store, lambda: _is(later, WorkspaceState.STOPPED))
                assert later.deadlines_fired == 1
            assert [b.reason for b in await stops(store)] == [Reason.IDLE]

    async def test_a_deadline_extended_meanwhile_fires_nothing(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (store, lc, clock):
            await ready(lc)
            chat = await store.get_chat(CHAT)
            assert chat is not None and chat.workspace_id is not None
            first = (await store.workspace_facts(chat.workspace_id)).workspace.deadline
            assert first is not None
            clock.advance(100)
            await lc.touch(CHAT, owner=OWNER)
            clock.advance(IDLE)  # the first deadline passed; the pushed one too, but:
            outcome = await store.fire_deadline(chat.workspace_id, first)  # a replica that missed the touch
            assert outcome.fired is False and outcome.build is None
            await until(store, lambda: _is(lc, WorkspaceState.STOPPED))
            assert len(await stops(store)) == 1


class TestPolicyChanges:
    async def test_a_touch_after_the_policy_was_shortened_arms_the_shorter_deadline(self) -> None:
        async with world(wl.Policy(idle_stop_after=3600)) as (store, lc, clock):
            await ready(lc)
            await lc.register_chat(CHAT, owner=OWNER, policy=wl.Policy(idle_stop_after=60))
            clock.advance(10)
            assert await lc.touch(CHAT, owner=OWNER) == wl.Deadline(clock() + 60, Reason.IDLE)
            clock.advance(60)  # a minute after the last activity, not an hour
            await until(store, lambda: _is(lc, WorkspaceState.STOPPED))

    async def test_a_touch_answer_that_comes_back_late_does_not_hide_a_newer_deadline(self) -> None:
        """A touch's answer arrives after the pump delivered a newer deadline (another replica
        shortened the policy and touched): the scheduler keeps the newer one and fires it."""
        committed, release = anyio.Event(), anyio.Event()

        class SlowAnswer(FaultyStore):
            async def touch(self, workspace_id: str) -> wl.Deadline | None:
                armed = await self.inner.touch(workspace_id)
                committed.set()
                await release.wait()
                return armed

        clock = wl.VirtualClock()
        raw = wl.MemoryStore(clock=clock)
        async with raw, wl.SimulatedProvisioner(raw, clock=clock):
            slow = SlowAnswer(raw)
            async with (
                wl.Lifecycle(slow, clock=clock, policy=wl.Policy(idle_stop_after=3600)) as lc,
                wl.Lifecycle(raw, clock=clock, fire_deadlines=False) as front,
            ):
                await lc.register_chat(CHAT, owner=OWNER)
                await ready(lc)
                clock.advance(100)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: lc.touch(CHAT, owner=OWNER))
                    await committed.wait()
                    await front.register_chat(CHAT, owner=OWNER, policy=wl.Policy(idle_stop_after=60))
                    assert await front.touch(CHAT, owner=OWNER) == wl.Deadline(clock() + 60, Reason.IDLE)
                    await settle()
                    assert lc.next_deadline() == clock() + 60
                    release.set()
                assert lc.next_deadline() == clock() + 60
                clock.advance(60)
                await until(raw, lambda: _is(lc, WorkspaceState.STOPPED))


class TestResync:
    async def test_a_reload_that_fails_does_not_stop_the_runtime(self) -> None:
        """The pump's cursor expires (the log was pruned) and reloading the deadlines fails
        once: the failure stays in the scheduler (it reloads a little later), the runtime keeps
        answering, and the deadline it knew fires."""

        class Flaky(FaultyStore):
            expire = False
            refuse = 0

            async def read_events(self, after: int, limit: int = 1000) -> Sequence[wl.StoreEvent]:
                if self.expire:
                    self.expire = False
                    raise wl.CursorExpiredError(after, after + 1)
                return await super().read_events(after, limit)

            async def armed_deadlines(self) -> wl.ArmedDeadlines:
                if self.refuse:
                    self.refuse -= 1
                    raise wl.StoreUnavailableError("the database is restarting")
                return await super().armed_deadlines()

        clock = wl.VirtualClock()
        raw = wl.MemoryStore(clock=clock)
        async with raw, wl.SimulatedProvisioner(raw, clock=clock):
            store = Flaky(raw)
            async with wl.Lifecycle(store, clock=clock, policy=wl.Policy(idle_stop_after=IDLE)) as lc:
                await lc.register_chat(CHAT, owner=OWNER)
                await ready(lc)
                store.expire, store.refuse = True, 1
                await lc.register_chat("chat-2", owner=OWNER)
                await lc.create_workspace("chat-2", owner=OWNER, name="dev")  # wakes the pump
                assert store.refuse == 0 and not store.expire  # the resync met the failure
                clock.advance(IDLE)
                await until(raw, lambda: _is(lc, WorkspaceState.STOPPED))


class TestResume:
    async def test_ensure_running_after_an_idle_stop_fires_one_start_for_100_callers(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (store, lc, clock):
            await ready(lc)
            clock.advance(IDLE)
            await until(store, lambda: _is(lc, WorkspaceState.STOPPED))
            before = len(await builds(store))
            results: list[wl.ToolResult] = []
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(lambda: _append(results, lc.ensure_running(CHAT, owner=OWNER)))
            new = (await builds(store))[before:]
            assert [(b.transition, b.reason) for b in new] == [(Transition.START, Reason.REQUEST)]
            assert len(results) == 100 and all(not r.is_error and r.data["started"] for r in results)
            assert await lc.state(CHAT) is WorkspaceState.AGENT_READY
            assert lc.next_deadline() == clock() + IDLE  # the next idle period begins

    async def test_ensure_running_answers_at_once_when_running_and_like_start_without_one(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (store, lc, _clock):
            none = await lc.ensure_running(CHAT, owner=OWNER)
            assert none == await lc.start_workspace(CHAT, owner=OWNER)
            assert none.is_error
            await ready(lc)
            head = await store.head()
            assert (await lc.ensure_running(CHAT, owner=OWNER)).data["started"] is True
            assert [e for e in await store.read_events(head) if e.kind is EventKind.BUILD_QUEUED] == []


class TestRetention:
    async def test_a_workspace_stopped_that_long_is_deleted_once(self) -> None:
        async with world(wl.Policy(delete_after_stopped=RETAIN)) as (store, lc, clock):
            await ready(lc)
            assert lc.next_deadline() is None  # running: retention waits for a stop
            assert (await lc.stop_workspace(CHAT, owner=OWNER)).data["stopped"] is True
            assert lc.next_deadline() == clock() + RETAIN
            clock.advance(RETAIN - 1)
            await settle()
            assert await lc.state(CHAT) is WorkspaceState.STOPPED
            clock.advance(1)
            await until(store, lambda: _is(lc, WorkspaceState.NO_WORKSPACE))
            deletes = [b for b in await builds(store) if b.transition is Transition.DELETE]
            assert [b.reason for b in deletes] == [Reason.RETENTION]
            answer = await lc.start_workspace(CHAT, owner=OWNER)
            assert answer.is_error and answer.text == WORKSPACE_DELETED

    async def test_idle_stop_then_retention(self) -> None:
        policy = wl.Policy(idle_stop_after=IDLE, delete_after_stopped=RETAIN)
        async with world(policy) as (store, lc, clock):
            await ready(lc)
            clock.advance(IDLE)
            await until(store, lambda: _is(lc, WorkspaceState.STOPPED))
            clock.advance(RETAIN)
            await until(store, lambda: _is(lc, WorkspaceState.NO_WORKSPACE))
            assert [(b.transition, b.reason) for b in await builds(store)] == [
                (Transition.START, Reason.REQUEST),
                (Transition.STOP, Reason.IDLE),
                (Transition.DELETE, Reason.RETENTION),
            ]


class TestPolicies:
    @pytest.mark.parametrize("bad", [-1, 0, math.nan, math.inf, True, "60"])
    def test_bad_durations_are_a_value_error(self, bad: object) -> None:
        with pytest.raises(ValueError, match="idle_stop_after must be a positive finite number"):
            wl.Policy(idle_stop_after=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="delete_after_stopped must be a positive finite"):
            wl.Policy(delete_after_stopped=bad)  # type: ignore[arg-type]

    async def test_a_chat_keeps_its_own_policy_and_the_default_is_for_new_chats(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (store, lc, clock):
            own = wl.Policy(idle_stop_after=60)
            chat = await lc.register_chat("chat-2", owner=OWNER, policy=own)
            assert chat.policy == own
            again = await lc.register_chat("chat-2", owner=OWNER)  # no policy: it keeps its own
            assert again.policy == own
            assert (await lc.register_chat(CHAT, owner=OWNER)).policy == wl.Policy(idle_stop_after=IDLE)
            # Another replica with another default applies the stored policy, not its own.
            async with wl.Lifecycle(store, clock=clock, policy=wl.Policy()) as other:
                assert (await other.register_chat("chat-2", owner=OWNER)).policy == own

    async def test_a_policy_for_another_owners_chat_is_refused_and_changes_nothing(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (store, lc, _clock):
            with pytest.raises(wl.OwnershipError):
                await lc.register_chat(CHAT, owner="mallory", policy=wl.Policy(idle_stop_after=1))
            chat = await store.get_chat(CHAT)
            assert chat is not None and chat.policy == wl.Policy(idle_stop_after=IDLE)

    async def test_touch_of_an_unknown_or_foreign_chat_is_refused_alike(self) -> None:
        async with world(wl.Policy(idle_stop_after=IDLE)) as (_store, lc, _clock):
            await ready(lc)
            with pytest.raises(wl.NotFoundError) as unknown:
                await lc.touch("nope", owner=OWNER)
            with pytest.raises(wl.NotFoundError) as foreign:
                await lc.touch(CHAT, owner="mallory")
            assert str(unknown.value).replace("nope", "X") == str(foreign.value).replace(CHAT, "X")

    async def test_no_policy_arms_nothing_and_touch_writes_nothing(self) -> None:
        async with world(wl.Policy()) as (store, lc, _clock):
            await ready(lc)
            head = await store.head()
            assert await lc.touch(CHAT, owner=OWNER) is None
            assert await store.read_events(head) == []
            assert lc.next_deadline() is None and lc.deadlines_armed == 0


async def _is(lc: wl.Lifecycle, state: WorkspaceState) -> bool:
    return await lc.state(CHAT) is state


async def _append(out: list[object], call: Awaitable[object]) -> None:
    out.append(await call)
