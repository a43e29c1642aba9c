"""The event pump under bad storage: a corrupt log entry, an expired cursor, a pump bug."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, WorkspaceState

pytestmark = pytest.mark.anyio


class CorruptOnce(wl.MemoryStore):
    """Raises CorruptStateError for one event seq the first time it is read."""

    def __init__(self) -> None:
        super().__init__()
        self.corrupt_seq: int | None = None
        self.raised = 0

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[wl.StoreEvent]:
        events = await super().read_events(after, limit)
        for event in events:
            if event.seq == self.corrupt_seq and not self.raised:
                self.raised += 1
                raise wl.CorruptStateError("events", event.seq, "kind", "exploded")
        return events


class Broken(wl.MemoryStore):
    """read_events raises a plain bug (not a StoreError) once armed."""

    armed = False

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[wl.StoreEvent]:
        if self.armed:
            raise ZeroDivisionError("a bug in an adapter")
        return await super().read_events(after, limit)


async def test_corrupt_event_is_skipped_and_state_rederived() -> None:
    """An unreadable log entry is logged and skipped; waiters still get the right answer."""
    store = CorruptOnce()
    async with store, wl.Lifecycle(store, build_timeout=5) as lc:
        await lc.register_chat("c", owner="o")
        await lc.create_workspace("c", owner="o", name="dev", wait=False)
        build = await store.claim_build("w")
        assert build is not None
        store.corrupt_seq = await store.head() + 1  # the build_finished about to be written
        async with anyio.create_task_group() as tg:
            results: list[wl.ToolResult] = []

            async def start() -> None:
                results.append(await lc.start_workspace("c", owner="o"))

            tg.start_soon(start)
            await anyio.wait_all_tasks_blocked()
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
        assert store.raised == 1
        assert results[0].data == {
            "started": True,
            "workspace_name": "dev",
            "build_id": build.build_id,
            "agent_status": "no_agent",
        }
        assert await lc.state("c") is WorkspaceState.RUNNING


async def test_pump_bug_wakes_waiters_instead_of_hanging() -> None:
    """A non-storage exception in the pump fails every waiter at once and surfaces on exit."""
    store = Broken()
    errors: list[BaseException] = []
    with pytest.raises(BaseExceptionGroup) as caught:
        async with store, anyio.create_task_group() as outer, wl.Lifecycle(store) as lc:
            await lc.register_chat("c", owner="o")
            await lc.create_workspace("c", owner="o", name="dev", wait=False)

            async def waiter() -> None:
                try:
                    await lc.start_workspace("c", owner="o")
                except wl.StoreClosedError as exc:
                    errors.append(exc)

            outer.start_soon(waiter)  # a request from outside the Lifecycle's task group
            await anyio.wait_all_tasks_blocked()
            store.armed = True
            await store.register_chat("other", "o")
            await store.create_workspace("other", "x", expected_workspace_id=None)  # wakes the pump
            with anyio.fail_after(5):
                await anyio.sleep_forever()
    assert caught.group_contains(ZeroDivisionError)
    assert len(errors) == 1 and "event pump stopped" in str(errors[0])


async def test_a_deferred_start_fires_in_the_stop_builds_finish() -> None:
    """wait=False during a stop build stores the start on the workspace; the write that finishes
    the stop queues it (one transaction: no runtime task carries it)."""
    store = wl.MemoryStore()
    async with store, wl.Lifecycle(store) as lc:
        await lc.register_chat("c", owner="o")
        await lc.create_workspace("c", owner="o", name="dev", wait=False)
        first = await store.claim_build("w")
        assert first is not None
        await store.finish_build(first.build_id, JobStatus.SUCCEEDED, has_agent=False)
        await lc.stop_workspace("c", owner="o", wait=False)
        r = await lc.start_workspace("c", owner="o", wait=False)
        assert r.data["status"] == "building" and r.data["request"] == "start"
        stop = await store.claim_build("w")
        assert stop is not None and stop.transition is wl.Transition.STOP
        stored = (await store.workspace_facts(stop.workspace_id)).workspace.deferred
        assert stored == wl.Deferred(wl.Transition.START, stop.number, "o")
        head = await store.head()
        await store.finish_build(stop.build_id, JobStatus.SUCCEEDED)
        finished = [e.kind for e in await store.read_events(head)]
        assert finished[0] is wl.EventKind.BUILD_FINISHED and wl.EventKind.BUILD_QUEUED in finished
        facts = await store.workspace_facts(stop.workspace_id)
        assert facts.latest_build is not None and facts.latest_build.transition is wl.Transition.START
        assert facts.latest_build.number == 3 and facts.workspace.deferred is None


async def test_a_deferral_whose_build_never_ends_stays_stored() -> None:
    """A deferral whose build never ends fires nothing and holds no task: it stays stored on the
    workspace until that build ends (its lease's expiry fails it at the latest)."""
    store = wl.MemoryStore()
    async with store, wl.Lifecycle(store, build_timeout=0.05) as lc:
        await lc.register_chat("c", owner="o")
        await lc.create_workspace("c", owner="o", name="dev", wait=False)
        await lc.stop_workspace("c", owner="o", wait=False)  # deferred behind the start build
        with anyio.fail_after(5):
            await lc.drain()  # returns at once: nothing of the request runs here
        facts = (await store.list_chats())[0].facts
        assert facts is not None and facts.latest_build is not None
        assert facts.latest_build.number == 1  # nothing fired behind the hung build
        assert facts.workspace.deferred == wl.Deferred(wl.Transition.STOP, 1, "o")


async def test_a_deferred_start_outlives_its_lifecycle() -> None:
    """The Lifecycle that accepted a deferred start may be gone when the stop build ends: the
    start still fires. Before 0.3 it lived in that runtime's task group and was cancelled."""
    store = wl.MemoryStore()
    async with store:
        async with wl.Lifecycle(store) as lc:
            await lc.register_chat("c", owner="o")
            await lc.create_workspace("c", owner="o", name="dev", wait=False)
            first = await store.claim_build("w")
            assert first is not None
            await store.finish_build(first.build_id, JobStatus.SUCCEEDED, has_agent=False)
            await lc.stop_workspace("c", owner="o", wait=False)
            r = await lc.start_workspace("c", owner="o", wait=False)  # deferred behind the stop
            assert r.data["status"] == "building" and r.data["request"] == "start"
        async with wl.SimulatedProvisioner(store, build_seconds=0.01):  # no Lifecycle runs now
            with anyio.fail_after(5):
                while True:
                    head = await store.head()
                    facts = (await store.list_chats())[0].facts
                    assert facts is not None and facts.latest_build is not None
                    if facts.latest_build.number == 3 and facts.latest_build.status.finished:
                        break
                    await store.wait_for_change(head)
        assert facts.latest_build.transition is wl.Transition.START
        assert facts.latest_build.status is JobStatus.SUCCEEDED
