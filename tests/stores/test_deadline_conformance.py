"""Policies and deadlines, the same on every store (memory, sqlite, postgres).

Each store runs on a :class:`~workspace_lifecycle.VirtualClock`, so the times it stamps are
exact and a deadline is stepped past without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from conftest import SHARDED_POSTGRES, STORE_BACKENDS

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, JobStatus, Reason, Transition

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[*STORE_BACKENDS, SHARDED_POSTGRES])
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Every store, and PostgreSQL notifying by workspace shard too."""
    kind, backend = request.param
    return kind, backend


IDLE, RETAIN = 600.0, 3600.0


@pytest.fixture
def clock() -> wl.VirtualClock:
    return wl.VirtualClock(start=2_000_000_000.0)


@pytest.fixture
async def store(store_url: str, clock: wl.VirtualClock) -> AsyncIterator[wl.Store]:
    async with wl.open_store(store_url, clock=clock) as s:
        yield s


async def running(store: wl.Store, policy: wl.Policy) -> str:
    """A chat with ``policy`` whose workspace's start build succeeded; its workspace id."""
    await store.register_chat("c1", "alice", policy=policy)
    outcome = await store.create_workspace("c1", "dev", expected_workspace_id=None)
    await finish()(store)
    return outcome.facts.workspace_id


def finish(status: JobStatus = JobStatus.SUCCEEDED):  # type: ignore[no-untyped-def]
    async def run(store: wl.Store) -> wl.Build:
        build = await store.claim_build("w")
        assert build is not None
        return await store.finish_build(build.build_id, status)

    return run


async def deadline_events(store: wl.Store, after: int = 0) -> list[wl.StoreEvent]:
    return [e for e in await store.read_events(after, 10_000) if e.kind is EventKind.DEADLINE_SET]


class TestPolicies:
    async def test_a_new_chat_gets_its_policy_or_the_default(self, store: wl.Store) -> None:
        own, default = wl.Policy(idle_stop_after=60), wl.Policy(delete_after_stopped=7)
        assert (await store.register_chat("c1", "alice", policy=own, default_policy=default)).policy == own
        assert (await store.register_chat("c2", "alice", default_policy=default)).policy == default
        assert (await store.register_chat("c3", "alice")).policy == wl.Policy()
        assert (await store.get_chat("c1")) == wl.Chat("c1", "alice", None, policy=own)

    async def test_an_existing_chat_keeps_its_policy_unless_one_is_given(self, store: wl.Store) -> None:
        own = wl.Policy(idle_stop_after=60)
        await store.register_chat("c1", "alice", policy=own)
        assert (await store.register_chat("c1", "alice", default_policy=wl.Policy())).policy == own
        newer = wl.Policy(idle_stop_after=5, delete_after_stopped=9)
        assert (await store.register_chat("c1", "alice", policy=newer)).policy == newer
        assert [row.chat.policy for row in await store.list_chats()] == [newer]

    async def test_another_owner_cannot_set_a_policy(self, store: wl.Store) -> None:
        await store.register_chat("c1", "alice", policy=wl.Policy(idle_stop_after=60))
        with pytest.raises(wl.OwnershipError):
            await store.register_chat("c1", "mallory", policy=wl.Policy(idle_stop_after=1))
        chat = await store.get_chat("c1")
        assert chat is not None and chat.policy == wl.Policy(idle_stop_after=60)

    async def test_the_policy_survives_binding_a_workspace(self, store: wl.Store) -> None:
        policy = wl.Policy(idle_stop_after=60)
        await store.register_chat("c1", "alice", policy=policy)
        await store.create_workspace("c1", "dev", expected_workspace_id=None)
        chat = await store.get_chat("c1")
        assert chat is not None and chat.workspace_id is not None and chat.policy == policy


class TestDeadlines:
    async def test_a_start_build_that_succeeds_arms_the_idle_deadline(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        ws = await running(store, wl.Policy(idle_stop_after=IDLE))
        expected = wl.Deadline(clock() + IDLE, Reason.IDLE)
        assert (await store.workspace_facts(ws)).workspace.deadline == expected
        [event] = await deadline_events(store)
        assert event.armed == expected and event.workspace_id == ws
        armed = await store.armed_deadlines()
        assert armed.deadlines == {ws: expected} and armed.head == await store.head()

    async def test_no_policy_arms_nothing(self, store: wl.Store) -> None:
        ws = await running(store, wl.Policy())
        assert (await store.workspace_facts(ws)).workspace.deadline is None
        assert await deadline_events(store) == []
        assert (await store.armed_deadlines()).deadlines == {}

    async def test_touch_pushes_a_running_workspace_only(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        await store.register_chat("c1", "alice", policy=wl.Policy(idle_stop_after=IDLE))
        ws = (await store.create_workspace("c1", "dev", expected_workspace_id=None)).facts.workspace_id
        head = await store.head()
        assert await store.touch(ws) is None  # building: nothing to push
        assert await store.head() == head
        await finish()(store)
        clock.advance(100)
        pushed = await store.touch(ws)
        assert pushed == wl.Deadline(clock() + IDLE, Reason.IDLE)
        assert (await deadline_events(store))[-1].armed == pushed
        head = await store.head()
        assert await store.touch(ws) == pushed  # the same time: nothing new to write
        assert await store.head() == head

    async def test_a_request_disarms_and_the_end_of_its_build_rearms(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        await store.register_chat(
            "c1", "alice", policy=wl.Policy(idle_stop_after=IDLE, delete_after_stopped=RETAIN)
        )
        ws = (await store.create_workspace("c1", "dev", expected_workspace_id=None)).facts.workspace_id
        await finish()(store)
        outcome = await store.request_build(ws, Transition.STOP, expected_build_number=1)
        assert outcome.fired and outcome.facts.workspace.deadline is None
        assert (await deadline_events(store))[-1].armed is None
        assert (await store.armed_deadlines()).deadlines == {}
        clock.advance(5)
        await finish()(store)
        assert (await store.workspace_facts(ws)).workspace.deadline == wl.Deadline(
            clock() + RETAIN, Reason.RETENTION
        )

    async def test_a_failed_build_arms_nothing(self, store: wl.Store) -> None:
        await store.register_chat("c1", "alice", policy=wl.Policy(idle_stop_after=IDLE))
        ws = (await store.create_workspace("c1", "dev", expected_workspace_id=None)).facts.workspace_id
        await finish(JobStatus.FAILED)(store)
        assert (await store.workspace_facts(ws)).workspace.deadline is None

    async def test_fire_is_a_compare_and_set_on_the_deadline_and_the_time(
        self, store: wl.Store, clock: wl.VirtualClock
    ) -> None:
        ws = await running(store, wl.Policy(idle_stop_after=IDLE))
        deadline = (await store.workspace_facts(ws)).workspace.deadline
        assert deadline is not None
        clock.advance(IDLE - 0.001)
        early = await store.fire_deadline(ws, deadline)
        assert not early.fired and early.facts.workspace.deadline == deadline
        clock.advance(0.001)
        stale = await store.fire_deadline(ws, wl.Deadline(deadline.at - 1, Reason.IDLE))
        assert not stale.fired and stale.build is None
        fired = await store.fire_deadline(ws, deadline)
        assert fired.fired and fired.build is not None
        assert (fired.build.transition, fired.build.reason, fired.build.number) == (
            Transition.STOP,
            Reason.IDLE,
            2,
        )
        assert fired.facts.workspace.deadline is None and fired.facts.latest_build == fired.build
        again = await store.fire_deadline(ws, deadline)
        assert not again.fired and again.build is None
        queued = [e for e in await store.read_events(0, 10_000) if e.kind is EventKind.BUILD_QUEUED]
        assert [(e.transition, e.reason) for e in queued] == [
            (Transition.START, Reason.REQUEST),
            (Transition.STOP, Reason.IDLE),
        ]
        assert (await store.get_build(fired.build.build_id)).reason is Reason.IDLE
        assert (await store.armed_deadlines()).deadlines == {}

    async def test_retention_fires_a_delete_build(self, store: wl.Store, clock: wl.VirtualClock) -> None:
        ws = await running(store, wl.Policy(delete_after_stopped=RETAIN))
        await store.request_build(ws, Transition.STOP, expected_build_number=1)
        await finish()(store)
        deadline = (await store.workspace_facts(ws)).workspace.deadline
        assert deadline == wl.Deadline(clock() + RETAIN, Reason.RETENTION)
        clock.advance(RETAIN)
        fired = await store.fire_deadline(ws, deadline)
        assert fired.build is not None and (fired.build.transition, fired.build.reason) == (
            Transition.DELETE,
            Reason.RETENTION,
        )
        await finish()(store)
        facts = await store.workspace_facts(ws)
        assert facts.workspace.deleted and facts.workspace.deadline is None
