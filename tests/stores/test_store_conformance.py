"""One conformance suite, run against every store (memory, sqlite, postgres).

The same tests and the same expectations: a store that passes is a drop-in for the runtime.
"""

from __future__ import annotations

import anyio
import pytest
from conftest import SHARDED_POSTGRES, STORE_BACKENDS

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, EventKind, JobStatus, Transition, WorkspaceState

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[*STORE_BACKENDS, SHARDED_POSTGRES])
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Every store, and PostgreSQL notifying by workspace shard too."""
    kind, backend = request.param
    return kind, backend


async def make_workspace(store: wl.Store, chat: str = "c1", owner: str = "alice") -> wl.Outcome:
    await store.register_chat(chat, owner)
    outcome = await store.create_workspace(chat, "dev", expected_workspace_id=None)
    assert outcome.fired and outcome.build is not None
    return outcome


async def finish_latest(store: wl.Store, status: JobStatus = JobStatus.SUCCEEDED, **kw: object) -> wl.Build:
    build = await store.claim_build("w")
    assert build is not None
    return await store.finish_build(build.build_id, status, **kw)  # type: ignore[arg-type]


class TestChats:
    async def test_register_is_idempotent(self, store: wl.Store) -> None:
        """Registering twice with one owner returns the same chat."""
        a = await store.register_chat("c1", "alice")
        b = await store.register_chat("c1", "alice")
        assert a == b == wl.Chat("c1", "alice", None)

    async def test_register_other_owner_is_refused(self, store: wl.Store) -> None:
        """A chat cannot change owner."""
        await store.register_chat("c1", "alice")
        with pytest.raises(wl.OwnershipError):
            await store.register_chat("c1", "mallory")
        assert (await store.get_chat("c1")) == wl.Chat("c1", "alice", None)

    async def test_unknown_chat_is_none(self, store: wl.Store) -> None:
        """get_chat answers None for a chat never registered."""
        assert await store.get_chat("nope") is None

    async def test_unknown_workspace_is_not_found(self, store: wl.Store) -> None:
        """workspace_facts of an unknown id raises NotFoundError (a LookupError)."""
        with pytest.raises(wl.NotFoundError):
            await store.workspace_facts("nope")

    async def test_strings_round_trip_exactly(self, store: wl.Store) -> None:
        """Quotes, SQL metacharacters and non-ASCII text are stored and returned exactly."""
        chat = "c'; DROP TABLE chats; --\"ü🚀"
        owner = "o'wner\\%_"
        await store.register_chat(chat, owner)
        assert await store.get_chat(chat) == wl.Chat(chat, owner, None)


class TestCreate:
    async def test_create_binds_chat_and_queues_build(self, store: wl.Store) -> None:
        """create_workspace binds the chat and appends build 1 (start, pending) with its events."""
        head = await store.head()
        outcome = await make_workspace(store)
        facts = outcome.facts
        assert facts.workspace.name == "dev" and facts.workspace.owner == "alice"
        assert outcome.build is not None
        assert (outcome.build.number, outcome.build.transition, outcome.build.status) == (
            1,
            Transition.START,
            JobStatus.PENDING,
        )
        assert (await store.get_chat("c1")) == wl.Chat("c1", "alice", facts.workspace_id)
        events = await store.read_events(head)
        assert [e.kind for e in events] == [EventKind.CHAT_BOUND, EventKind.BUILD_QUEUED]
        assert facts.seq == events[-1].seq == await store.head()
        assert wl.derive_state(facts) is WorkspaceState.BUILDING

    async def test_create_is_compare_and_set(self, store: wl.Store) -> None:
        """A second create expecting the old binding appends nothing and reports the winner."""
        first = await make_workspace(store)
        second = await store.create_workspace("c1", "other", expected_workspace_id=None)
        assert not second.fired and second.build is None
        assert second.facts.workspace_id == first.facts.workspace_id

    async def test_create_for_unknown_chat_is_not_found(self, store: wl.Store) -> None:
        with pytest.raises(wl.NotFoundError):
            await store.create_workspace("nope", "dev", expected_workspace_id=None)


class TestRequestBuild:
    async def test_request_needs_finished_latest(self, store: wl.Store) -> None:
        """No build is appended while the latest one is in progress."""
        ws = (await make_workspace(store)).facts.workspace_id
        outcome = await store.request_build(ws, Transition.STOP, expected_build_number=1)
        assert not outcome.fired
        assert outcome.facts.latest_build is not None and outcome.facts.latest_build.number == 1

    async def test_request_is_compare_and_set(self, store: wl.Store) -> None:
        """Only a caller that saw the latest build number appends the next build."""
        ws = (await make_workspace(store)).facts.workspace_id
        await finish_latest(store)
        stale = await store.request_build(ws, Transition.STOP, expected_build_number=0)
        assert not stale.fired
        won = await store.request_build(ws, Transition.STOP, expected_build_number=1)
        assert won.fired and won.build is not None and won.build.number == 2
        lost = await store.request_build(ws, Transition.STOP, expected_build_number=1)
        assert not lost.fired and lost.facts.latest_build == won.build

    async def test_concurrent_requests_fire_once(self, store: wl.Store) -> None:
        """Fifty concurrent requests that saw the same build append exactly one."""
        ws = (await make_workspace(store)).facts.workspace_id
        await finish_latest(store)
        results: list[wl.Outcome] = []

        async def one() -> None:
            results.append(await store.request_build(ws, Transition.STOP, expected_build_number=1))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)
        assert sum(r.fired for r in results) == 1
        assert len({r.facts.latest_build.build_id for r in results if r.facts.latest_build}) == 1

    async def test_unknown_workspace(self, store: wl.Store) -> None:
        with pytest.raises(wl.NotFoundError):
            await store.request_build("nope", Transition.START, expected_build_number=0)


class TestProvisionerSide:
    async def test_claim_hands_each_build_once(self, store: wl.Store) -> None:
        """Concurrent claims: one worker gets the pending build, the others get None."""
        await make_workspace(store)
        got: list[wl.Build | None] = []

        async def claim(i: int) -> None:
            got.append(await store.claim_build(f"w{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(claim, i)
        claimed = [b for b in got if b is not None]
        assert len(claimed) == 1 and claimed[0].status is JobStatus.RUNNING
        assert claimed[0].worker is not None

    async def test_claim_takes_oldest_first(self, store: wl.Store) -> None:
        a = await make_workspace(store, "c1")
        b = await make_workspace(store, "c2")
        first = await store.claim_build("w")
        second = await store.claim_build("w")
        assert first is not None and second is not None and await store.claim_build("w") is None
        assert first.workspace_id == a.facts.workspace_id
        assert second.workspace_id == b.facts.workspace_id

    async def test_finish_start_creates_agent(self, store: wl.Store) -> None:
        ws = (await make_workspace(store)).facts.workspace_id
        done = await finish_latest(store, has_agent=True)
        assert done.status is JobStatus.SUCCEEDED and done.has_agent is True
        facts = await store.workspace_facts(ws)
        assert facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.CREATED
        assert wl.derive_state(facts) is WorkspaceState.RUNNING
        await store.report_agent(ws, AgentLifecycle.READY)
        assert wl.derive_state(await store.workspace_facts(ws)) is WorkspaceState.AGENT_READY

    async def test_finish_without_agent(self, store: wl.Store) -> None:
        ws = (await make_workspace(store)).facts.workspace_id
        done = await finish_latest(store, has_agent=False)
        assert done.has_agent is False
        facts = await store.workspace_facts(ws)
        assert facts.agent is None
        with pytest.raises(wl.NotFoundError):
            await store.report_agent(ws, AgentLifecycle.READY)

    async def test_failed_build_keeps_reason(self, store: wl.Store) -> None:
        ws = (await make_workspace(store)).facts.workspace_id
        done = await finish_latest(store, JobStatus.FAILED, error="terraform exploded")
        assert done.error == "terraform exploded"
        facts = await store.workspace_facts(ws)
        assert facts.latest_build is not None and facts.latest_build.error == "terraform exploded"
        assert wl.derive_state(facts) is WorkspaceState.FAILED

    async def test_finish_twice_is_a_conflict(self, store: wl.Store) -> None:
        await make_workspace(store)
        done = await finish_latest(store)
        with pytest.raises(wl.BuildConflictError):
            await store.finish_build(done.build_id, JobStatus.FAILED)

    async def test_finish_needs_final_status(self, store: wl.Store) -> None:
        await make_workspace(store)
        build = await store.claim_build("w")
        assert build is not None
        with pytest.raises(ValueError):
            await store.finish_build(build.build_id, JobStatus.RUNNING)

    async def test_finish_unknown_build(self, store: wl.Store) -> None:
        with pytest.raises(wl.NotFoundError):
            await store.finish_build("nope", JobStatus.SUCCEEDED)

    async def test_delete_marks_workspace_deleted(self, store: wl.Store) -> None:
        ws = (await make_workspace(store)).facts.workspace_id
        await finish_latest(store)
        head = await store.head()
        await store.request_build(ws, Transition.DELETE, expected_build_number=1)
        await finish_latest(store)
        facts = await store.workspace_facts(ws)
        assert facts.workspace.deleted
        assert wl.derive_state(facts) is WorkspaceState.NO_WORKSPACE
        kinds = [e.kind for e in await store.read_events(head)]
        assert kinds[-2:] == [EventKind.BUILD_FINISHED, EventKind.WORKSPACE_DELETED]
        assert not (await store.request_build(ws, Transition.START, expected_build_number=2)).fired


class TestEventLog:
    async def test_sequence_is_increasing_and_complete(self, store: wl.Store) -> None:
        """Events come back in seq order, each once, and paging with limit loses none."""
        for i in range(5):
            await make_workspace(store, f"c{i}")
        everything = await store.read_events(0)
        seqs = [e.seq for e in everything]
        assert seqs == sorted(set(seqs)) and len(seqs) == 10
        paged: list[wl.StoreEvent] = []
        cursor = 0
        while batch := await store.read_events(cursor, limit=3):
            paged.extend(batch)
            cursor = batch[-1].seq
        assert paged == list(everything)

    async def test_events_carry_build_and_workspace(self, store: wl.Store) -> None:
        outcome = await make_workspace(store)
        queued = (await store.read_events(0))[-1]
        assert queued.kind is EventKind.BUILD_QUEUED
        assert queued.workspace_id == outcome.facts.workspace_id and queued.chat_id == "c1"
        assert queued.build_number == 1 and queued.transition is Transition.START
        assert outcome.build is not None and queued.build_id == outcome.build.build_id
        assert queued.at > 0

    async def test_wait_for_change_wakes_on_commit(self, store: wl.Store) -> None:
        """A waiter sleeping at the head wakes when another task commits."""
        await store.register_chat("c1", "alice")
        head = await store.head()
        woke = anyio.Event()

        async def waiter() -> None:
            await store.wait_for_change(head)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            assert not woke.is_set()
            await store.create_workspace("c1", "dev", expected_workspace_id=None)
            with anyio.fail_after(5):
                await woke.wait()

    async def test_wait_returns_at_once_when_behind(self, store: wl.Store) -> None:
        await make_workspace(store)
        with anyio.fail_after(5):
            await store.wait_for_change(0)

    async def test_prune_then_old_cursor_expires(self, store: wl.Store) -> None:
        """Pruning drops old events; a cursor behind the pruned point gets CursorExpiredError."""
        await make_workspace(store, "c1")
        await anyio.sleep(0.02)
        import time

        cut = time.time()
        await anyio.sleep(0.02)
        await make_workspace(store, "c2")
        dropped = await store.prune_events(cut)
        assert dropped == 2
        with pytest.raises(wl.CursorExpiredError):
            await store.read_events(0)
        head = await store.head()
        kept = await store.read_events(head - 2)
        assert [e.chat_id for e in kept] == ["c2", "c2"]

    async def test_list_chats(self, store: wl.Store) -> None:
        await make_workspace(store, "c1")
        await store.register_chat("c2", "bob")
        rows = {r.chat.chat_id: r for r in await store.list_chats()}
        assert set(rows) == {"c1", "c2"}
        assert rows["c2"].facts is None
        assert rows["c1"].facts is not None and wl.derive_state(rows["c1"].facts) is WorkspaceState.BUILDING


class TestClosed:
    async def test_closed_store_raises(self, store_url: str) -> None:
        """Every call after close raises StoreClosedError, a clear error, not a driver one."""
        store = wl.open_store(store_url)
        async with store:
            await store.register_chat("c1", "alice")
        with pytest.raises(wl.StoreClosedError):
            await store.get_chat("c1")
        with pytest.raises(wl.StoreClosedError):
            await store.read_events(0)


def test_memory_store_survives_a_second_event_loop() -> None:
    """A MemoryStore whose waiter was cancelled works again under a new anyio.run."""
    store = wl.MemoryStore()

    async def wait_then_cancel() -> None:
        await store.register_chat("c", "o")
        with anyio.move_on_after(0.01):
            await store.wait_for_change(await store.head())

    async def wait_again() -> None:
        head = await store.head()
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.wait_for_change, head)  # must not find the first loop's event
            await anyio.wait_all_tasks_blocked()
            await store.create_workspace("c", "dev", expected_workspace_id=None)

    anyio.run(wait_then_cancel)
    anyio.run(wait_again)


@pytest.mark.postgres
class TestPostgresChatBinding:
    """PostgreSQL only: the chat binding is part of request_build's compare-and-set, read under a
    lock that a concurrent create_workspace (re-binding the chat) waits for, or waits on."""

    @staticmethod
    async def stopped(store: wl.Store) -> str:
        ws = (await make_workspace(store)).facts.workspace_id
        await finish_latest(store)
        assert (await store.request_build(ws, Transition.STOP, expected_build_number=1)).fired
        await finish_latest(store)
        return ws

    async def test_start_on_a_replaced_workspace_does_not_fire(self, pg_schema_url: str) -> None:
        """The chat now points at a new workspace: starting the old one fires nothing; deleting
        it (which only saves money) still may."""
        async with wl.open_store(pg_schema_url) as store:
            old = await self.stopped(store)
            assert (await store.create_workspace("c1", "dev2", expected_workspace_id=old)).fired
            assert not (await store.request_build(old, Transition.START, expected_build_number=2)).fired
            assert (await store.request_build(old, Transition.DELETE, expected_build_number=2)).fired

    @pytest.mark.parametrize("first", ["create", "start"])
    async def test_rebind_and_start_on_two_replicas_serialise(self, pg_schema_url: str, first: str) -> None:
        """One replica holds its transaction open (create re-binding the chat, or a start); the
        other's write waits for it and decides on what it committed: a start after the re-bind
        fires nothing, and neither does a re-bind after the start (the old workspace would run
        bound to no chat)."""
        async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
            old = await self.stopped(a)
            entered = anyio.Event()

            async def hold() -> None:
                entered.set()
                await anyio.sleep(0.3)

            outcomes: dict[str, wl.Outcome] = {}

            async def create() -> None:
                outcomes["create"] = await b.create_workspace("c1", "dev2", expected_workspace_id=old)

            async def start() -> None:
                outcomes["start"] = await a.request_build(old, Transition.START, expected_build_number=2)

            holder, calls = (b, (create, start)) if first == "create" else (a, (start, create))
            holder.driver.committer._before_commit = hold  # type: ignore[attr-defined]
            async with anyio.create_task_group() as tg:
                tg.start_soon(calls[0])
                await entered.wait()
                holder.driver.committer._before_commit = None  # type: ignore[attr-defined]
                tg.start_soon(calls[1])
            # Whichever committed first wins; the other refuses: a start after the re-bind would
            # run a workspace no chat reaches, and so would a re-bind after the start.
            assert outcomes["create"].fired is (first == "create")
            assert outcomes["start"].fired is (first == "start")
            if first == "start":
                assert outcomes["create"].facts.workspace_id == old


class TestRequestsAsData:
    """Every store persists what :mod:`workspace_lifecycle.writes` decides, nothing more or less."""

    async def test_start_needs_the_chat_still_bound(self, store: wl.Store) -> None:
        """A workspace its chat has replaced is never started again (it would run bound to no
        chat), but it may still be stopped and deleted."""
        first = await make_workspace(store)
        old = first.facts.workspace_id
        await finish_latest(store, JobStatus.FAILED)  # a failed workspace: create replaces it
        again = await store.create_workspace("c1", "dev2", expected_workspace_id=old)
        assert again.fired and again.facts.workspace_id != old
        head = await store.head()
        start = await store.request_build(old, Transition.START, expected_build_number=1)
        assert not start.fired and start.build is None
        assert await store.head() == head  # nothing written
        stop = await store.request_build(old, Transition.STOP, expected_build_number=1)
        assert stop.fired and stop.build is not None and stop.build.transition is Transition.STOP
        assert (await store.claim_build("w")).workspace_id == again.facts.workspace_id  # type: ignore[union-attr]
        await finish_latest(store)  # the old workspace's stop
        delete = await store.request_build(old, Transition.DELETE, expected_build_number=2)
        assert delete.fired
        await finish_latest(store)
        assert (await store.workspace_facts(old)).workspace.deleted
        assert (await store.get_chat("c1")).workspace_id == again.facts.workspace_id  # type: ignore[union-attr]

    async def test_a_running_or_starting_workspace_is_never_replaced(self, store: wl.Store) -> None:
        """create_workspace refuses to re-bind the chat away from a workspace that runs or whose
        start build is in flight (it would run bound to no chat); stopped, failed and stopping
        ones may be replaced."""
        ws = (await make_workspace(store)).facts.workspace_id
        head = await store.head()
        assert not (await store.create_workspace("c1", "x", expected_workspace_id=ws)).fired  # starting
        await finish_latest(store)
        assert not (await store.create_workspace("c1", "x", expected_workspace_id=ws)).fired  # running
        assert await store.head() == head + 2  # only the finished build's two events: nothing else
        assert (await store.request_build(ws, Transition.STOP, expected_build_number=1)).fired
        again = await store.create_workspace("c1", "x", expected_workspace_id=ws)  # stopping: fine
        assert again.fired and (await store.get_chat("c1")).workspace_id == again.facts.workspace_id  # type: ignore[union-attr]

    async def test_finish_effects_and_events_follow_writes(self, store: wl.Store) -> None:
        """A succeeded start with an agent creates it in ``created``; without one, none; the
        events of each write are numbered in order, right after the head."""
        outcome = await make_workspace(store)
        ws = outcome.facts.workspace_id
        head = await store.head()
        build = await finish_latest(store, has_agent=False)
        assert build.has_agent is False
        assert (await store.workspace_facts(ws)).agent is None
        events = await store.read_events(head)
        assert [(e.seq, e.kind) for e in events] == [
            (head + 1, EventKind.BUILD_UPDATED),
            (head + 2, EventKind.BUILD_FINISHED),
        ]
        with pytest.raises(wl.NotFoundError):
            await store.report_agent(ws, AgentLifecycle.READY)
        assert await store.head() == head + 2


class TestStringValues:
    """The provisioner calls take a status or lifecycle as the enum or its string value."""

    async def test_strings_are_accepted_and_unknown_ones_refused(self, store: wl.Store) -> None:
        ws = (await make_workspace(store)).facts.workspace_id
        build = await store.claim_build("w")
        assert build is not None
        head = await store.head()
        with pytest.raises(ValueError, match="unknown job status 'done'; use one of: pending, running"):
            await store.finish_build(build.build_id, "done")
        assert await store.head() == head
        done = await store.finish_build(build.build_id, "succeeded")
        assert done.status is JobStatus.SUCCEEDED
        with pytest.raises(ValueError, match="unknown agent lifecycle state 'up'"):
            await store.report_agent(ws, "up")
        await store.report_agent(ws, "ready")
        assert (await store.workspace_facts(ws)).agent.lifecycle is AgentLifecycle.READY  # type: ignore[union-attr]
