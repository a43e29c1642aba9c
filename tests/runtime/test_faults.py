"""FaultyStore itself, and requests that stay correct under its faults, on every store.

The dangerous fault is the ambiguous one: a write commits, then the caller sees an error. A
request retried after it (by the runtime, or by the caller) must fire no second build and must
report the build that exists. The compare-and-set on the build number is what guarantees it.
"""

from __future__ import annotations

import anyio
import pytest
from workspaces import stopped

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, JobStatus, Transition
from workspace_lifecycle.faults import ALL_WRITES, FaultyStore, InjectedFault

pytestmark = pytest.mark.anyio

OWNER = "alice"


async def builds_queued(store: wl.Store, ws: str, after: int = 0) -> list[wl.StoreEvent]:
    return [
        e for e in await store.read_events(after) if e.workspace_id == ws and e.kind is EventKind.BUILD_QUEUED
    ]


# --- the wrapper ---------------------------------------------------------------------------------


class TestFaultyStore:
    async def test_fail_before_writes_nothing(self, store: wl.Store) -> None:
        ws = await stopped(store)
        faulty = FaultyStore(store, seed=1, fail_before=1.0)
        head = await store.head()
        with pytest.raises(InjectedFault) as caught:
            await faulty.request_build(ws, Transition.START, expected_build_number=2)
        assert not caught.value.committed and isinstance(caught.value, wl.StoreError)
        assert await store.head() == head
        assert faulty.injected == {"fail_before": 1}

    async def test_fail_after_commits_then_raises(self, store: wl.Store) -> None:
        ws = await stopped(store)
        faulty = FaultyStore(store, seed=1, fail_after=1.0)
        with pytest.raises(InjectedFault) as caught:
            await faulty.request_build(ws, Transition.START, expected_build_number=2)
        assert caught.value.committed
        latest = (await store.workspace_facts(ws)).latest_build
        assert latest is not None and latest.number == 3 and latest.transition is Transition.START
        assert faulty.injected == {"fail_after": 1}

    async def test_max_consecutive_lets_the_next_call_through(self, store: wl.Store) -> None:
        await store.register_chat("c1", OWNER)
        faulty = FaultyStore(store, seed=1, fail_before=1.0, max_consecutive=2, writes=ALL_WRITES)
        for _ in range(2):
            with pytest.raises(InjectedFault):
                await faulty.claim_build("w")
        assert await faulty.claim_build("w") is None  # the third goes through
        with pytest.raises(InjectedFault):
            await faulty.claim_build("w")
        assert faulty.calls["claim_build"] == 4

    async def test_reads_and_unlisted_writes_pass_through(self, store: wl.Store) -> None:
        faulty = FaultyStore(store, seed=1, fail_before=1.0)  # request writes only
        assert (await faulty.register_chat("c1", OWNER)).owner == OWNER
        assert await faulty.get_chat("c1") == await store.get_chat("c1")
        assert await faulty.head() == await store.head()
        faulty.enabled = False
        await faulty.create_workspace("c1", "dev", expected_workspace_id=None)
        assert not faulty.injected

    async def test_event_faults_keep_the_last_event_and_count(self, store: wl.Store) -> None:
        for i in range(6):
            await stopped(store, f"c{i}")
        events = list(await store.read_events(0))
        seqs = [e.seq for e in events]
        faulty = FaultyStore(store, seed=3, drop=0.3, duplicate=0.3, reorder=1.0)
        for _ in range(20):
            got = [e.seq for e in await faulty.read_events(0)]
            assert got[-1] == seqs[-1]  # the cursor always moves past the whole batch
            assert set(got) <= set(seqs)
        assert faulty.injected["drop"] > 0 and faulty.injected["duplicate"] > 0
        assert faulty.injected["reorder"] == 20
        lost = FaultyStore(store, seed=3, drop_if=lambda e: e.kind is EventKind.BUILD_FINISHED)
        got_events = await lost.read_events(0)
        assert all(e.kind is not EventKind.BUILD_FINISHED for e in got_events[:-1])

    async def test_closing_the_wrapper_leaves_the_store_open(self, store: wl.Store) -> None:
        async with FaultyStore(store, seed=1):
            pass
        assert await store.head() == 0

    def test_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="fail_before"):
            FaultyStore(wl.MemoryStore(), fail_before=-0.1)
        with pytest.raises(ValueError, match="exceed 1"):
            FaultyStore(wl.MemoryStore(), fail_before=0.6, fail_after=0.6)
        with pytest.raises(ValueError, match="unknown write methods"):
            FaultyStore(wl.MemoryStore(), writes={"drop_table"})
        with pytest.raises(ValueError, match="max_consecutive"):
            FaultyStore(wl.MemoryStore(), max_consecutive=0)


# --- requests under faults -----------------------------------------------------------------------


class TestAmbiguousFailure:
    async def test_caller_retry_after_ambiguous_failure_fires_no_second_build(self, store: wl.Store) -> None:
        """Without runtime retries the caller sees the error; its retry reports the same build."""
        ws = await stopped(store)
        head = await store.head()
        faulty = FaultyStore(store, seed=1, fail_after=1.0)
        async with (
            wl.SimulatedProvisioner(store, agent=None),
            wl.Lifecycle(faulty, write_retries=0, build_timeout=10) as lc,
        ):
            with pytest.raises(wl.StoreError):
                await lc.start_workspace("c1", owner=OWNER)
            faulty.enabled = False
            retried = await lc.start_workspace("c1", owner=OWNER)
        builds = await builds_queued(store, ws, head)
        assert len(builds) == 1 and builds[0].transition is Transition.START
        assert not retried.is_error
        assert retried.data["started"] is True and retried.data["agent_status"] == "no_agent"
        assert retried.data.get("build_id", builds[0].build_id) == builds[0].build_id
        assert faulty.injected["fail_after"] == 1

    async def test_runtime_retry_answers_with_the_committed_build(self, store: wl.Store) -> None:
        """With retries on, the runtime re-reads after the ambiguous error: one build, answered."""
        ws = await stopped(store)
        head = await store.head()
        faulty = FaultyStore(store, seed=1, fail_after=1.0, max_consecutive=1)
        async with wl.SimulatedProvisioner(store, agent=None), wl.Lifecycle(faulty, build_timeout=10) as lc:
            r = await lc.start_workspace("c1", owner=OWNER)
            assert lc.write_retried == 1
        builds = await builds_queued(store, ws, head)
        assert len(builds) == 1
        assert not r.is_error and r.data["started"] is True
        assert r.data["build_id"] == builds[0].build_id

    async def test_runtime_retry_after_failures_before_the_write(self, store: wl.Store) -> None:
        ws = await stopped(store)
        head = await store.head()
        faulty = FaultyStore(store, seed=1, fail_before=1.0, max_consecutive=3)
        async with wl.SimulatedProvisioner(store, agent=None), wl.Lifecycle(faulty, build_timeout=10) as lc:
            r = await lc.start_workspace("c1", owner=OWNER)
        builds = await builds_queued(store, ws, head)
        assert len(builds) == 1 and r.data["build_id"] == builds[0].build_id
        assert faulty.injected["fail_before"] == 3

    async def test_retries_exhausted_raise_the_store_error(self, store: wl.Store) -> None:
        ws = await stopped(store)
        head = await store.head()
        faulty = FaultyStore(store, seed=1, fail_before=1.0)
        async with wl.Lifecycle(faulty, write_retries=2) as lc:
            with pytest.raises(InjectedFault):
                await lc.start_workspace("c1", owner=OWNER)
        assert await builds_queued(store, ws, head) == []
        assert faulty.injected["fail_before"] == 3

    async def test_concurrent_starts_under_ambiguous_failures(self, store: wl.Store) -> None:
        """Twenty callers, every write failing after commit at first: still exactly one build."""
        ws = await stopped(store)
        head = await store.head()
        faulty = FaultyStore(store, seed=5, fail_after=0.7, delay=0.5, max_consecutive=2)
        results: list[wl.ToolResult] = []
        async with wl.SimulatedProvisioner(store, agent=None), wl.Lifecycle(faulty, build_timeout=10) as lc:

            async def one() -> None:
                results.append(await lc.start_workspace("c1", owner=OWNER))

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(one)
        builds = await builds_queued(store, ws, head)
        assert len(builds) == 1
        assert {r.data.get("build_id") for r in results} == {builds[0].build_id}
        assert all(r.data["started"] is True for r in results)

    async def test_create_after_ambiguous_failure_makes_one_workspace(self, store: wl.Store) -> None:
        await store.register_chat("c1", OWNER)
        faulty = FaultyStore(store, seed=1, fail_after=1.0, max_consecutive=1)
        async with wl.SimulatedProvisioner(store, agent=None), wl.Lifecycle(faulty, build_timeout=10) as lc:
            r = await lc.create_workspace("c1", owner=OWNER, name="dev")
        bound = [e for e in await store.read_events(0) if e.kind is EventKind.CHAT_BOUND]
        assert len(bound) == 1
        chat = await store.get_chat("c1")
        assert chat is not None and chat.workspace_id == bound[0].workspace_id
        # The workspace its own write made: answered as its creator, with its first build.
        assert r.data["created"] is True and r.data["workspace_name"] == "alice/dev", r.data
        facts = await store.workspace_facts(bound[0].workspace_id)
        assert facts.latest_build is not None and r.data["build_id"] == facts.latest_build.build_id


class TestLostEvents:
    """On the memory store, where claim, finish and report commit with no reader in between."""

    async def _answer(self, resync_interval: float) -> tuple[wl.ToolResult, int]:
        """A start whose build_finished event is lost on the way to the runtime."""
        async with wl.open_store("memory://") as store:
            ws = await stopped(store)
            faulty = FaultyStore(store, seed=1, drop_if=lambda e: e.kind is EventKind.BUILD_FINISHED)
            answer: list[wl.ToolResult] = []
            async with wl.Lifecycle(faulty, build_timeout=0.6, resync_interval=resync_interval) as lc:

                async def start() -> None:
                    answer.append(await lc.start_workspace("c1", owner=OWNER))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(start)
                    with anyio.fail_after(5):  # until the start fired build 3
                        cursor = 0
                        while (await store.workspace_facts(ws)).latest_build.number != 3:  # type: ignore[union-attr]
                            await store.wait_for_change(cursor)
                            cursor = await store.head()
                    # Claim, finish and report in one go: the finish is never a batch's last event.
                    build = await store.claim_build("p")
                    assert build is not None
                    await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
                    await store.report_agent(ws, wl.AgentLifecycle.READY)
            return answer[0], lc.resyncs

    async def test_lost_event_delays_but_never_loses_the_answer(self) -> None:
        r, resyncs = await self._answer(resync_interval=0.1)
        assert not r.is_error and r.data.get("started") is True and "error" not in r.data, r.data
        assert resyncs >= 1

    async def test_without_the_safety_net_the_answer_is_lost(self) -> None:
        """The control: the same loss with a resync interval beyond the build timeout."""
        r, resyncs = await self._answer(resync_interval=60)
        assert r.data.get("timed_out") is True and "error" not in r.data, r.data
        assert resyncs == 0


class TestLostWakeups:
    async def test_requests_are_answered_when_every_wakeup_is_lost(self, store: wl.Store) -> None:
        """The store never wakes the runtime: answers come from the slow safety nets."""
        ws = await stopped(store)
        head = await store.head()
        faulty = FaultyStore(store, seed=1, lose_wakeups=1.0)
        async with (
            wl.SimulatedProvisioner(store, agent=None),
            wl.Lifecycle(faulty, build_timeout=10, resync_interval=0.05) as lc,
        ):
            # Another writer commits; the request must catch up with it without any wake-up.
            await store.register_chat("other", OWNER)
            await store.create_workspace("other", "x", expected_workspace_id=None)
            with anyio.fail_after(5):
                started = await lc.start_workspace("c1", owner=OWNER)
                stopped_again = await lc.stop_workspace("c1", owner=OWNER)
            assert lc.resyncs >= 1
        assert started.data["started"] is True and stopped_again.data["stopped"] is True
        builds = await builds_queued(store, ws, head)
        assert [e.transition for e in builds] == [Transition.START, Transition.STOP]
        assert faulty.injected["lost_wakeup"] >= 1
