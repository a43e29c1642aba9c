"""Answers when another caller's build lands right after the awaited one (reported bugs).

A build that *succeeded* must be answered as what happened (``started: true`` and its
``build_id``), with ``superseded_by`` naming the newer build that another caller queued
before this waiter looked; never as a failure, and never ``no_agent`` for a build that has an
agent. The tests play the provisioner and the other caller through the memory store's own calls:
those run without a checkpoint, so "the build finished and the next one was queued before the
waiter ran" is exactly what happens, every time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from chat_harness import CHAT, OWNER, Call, H, harness, spawn

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, Transition, WorkspaceState

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def waiting(tg: TaskGroup, fn: Callable[[], Awaitable[wl.ToolResult]]) -> Call:
    """Run ``fn`` in the background; return once it sleeps (on its build or its agent)."""
    call = spawn(tg, fn)
    await anyio.wait_all_tasks_blocked()
    assert not call.done.is_set()
    return call


def assert_succeeded_then_superseded(
    data: dict[str, Any], key: str, build: wl.Build, newer: wl.Build
) -> None:
    assert "error" not in data, f"a build that succeeded was answered as a failure: {data}"
    assert data.get(key) is True, data
    assert data.get("workspace_name") == "dev", data
    assert data.get("build_id") == build.build_id, data
    assert "no_build" not in data, data
    assert data.get("superseded_by") == {"transition": newer.transition.value, "build_id": newer.build_id}, (
        data
    )


class TestSucceededBuildThenNewerBuild:
    async def test_own_start_succeeded_then_stop_queued(self) -> None:
        """Bug 1: this call's start build succeeded; another caller's stop was queued before the
        waiter ran. Answer: started, its build_id, superseded_by the stop (not 'failed')."""
        async with harness() as h:
            await h.stopped()
            async with anyio.create_task_group() as tg:
                call = await waiting(tg, lambda: h.lc.start_workspace(CHAT, owner=OWNER))
                start = await h.claim()
                assert start.transition is Transition.START
                # No checkpoint between these two: the waiter has not run in between.
                done = await h.store.finish_build(start.build_id, JobStatus.SUCCEEDED, has_agent=False)
                stop = await h.queue(Transition.STOP)
                r = await call.result()
            assert done.status is JobStatus.SUCCEEDED
            assert not r.is_error
            assert_succeeded_then_superseded(r.data, "started", start, stop)
            # The build has no agent (its stored has_agent is false): no_agent is the truth.
            assert r.data.get("agent_status", "no_agent") == "no_agent", r.data

    async def test_awaited_start_of_another_caller_succeeded_then_stop_queued(self) -> None:
        """Bug 1, waiting on somebody else's start build (the create's): still 'started', not
        'waiting for in-progress build: superseded by a newer build'."""
        async with harness() as h:
            created = await h.lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)
            async with anyio.create_task_group() as tg:
                call = await waiting(tg, lambda: h.lc.start_workspace(CHAT, owner=OWNER))
                first = await h.claim()
                assert first.build_id == created.data["build_id"]
                await h.store.finish_build(first.build_id, JobStatus.SUCCEEDED, has_agent=False)
                stop = await h.queue(Transition.STOP)
                r = await call.result()
            assert not r.is_error
            assert_succeeded_then_superseded(r.data, "started", first, stop)

    async def test_own_stop_succeeded_then_start_queued(self) -> None:
        """The mirror for stop_workspace: its stop build succeeded, another caller's start was
        queued before the waiter ran. Answer: stopped, its build_id, superseded_by the start."""
        async with harness() as h:
            await h.running()
            async with anyio.create_task_group() as tg:
                call = await waiting(tg, lambda: h.lc.stop_workspace(CHAT, owner=OWNER))
                stop = await h.claim()
                assert stop.transition is Transition.STOP
                await h.store.finish_build(stop.build_id, JobStatus.SUCCEEDED)
                start = await h.queue(Transition.START)
                r = await call.result()
            assert not r.is_error
            assert_succeeded_then_superseded(r.data, "stopped", stop, start)

    async def test_own_stop_succeeded_then_delete_queued(self) -> None:
        """stop_workspace again, superseded by a delete build (any newer transition is named)."""
        async with harness() as h:
            await h.running()
            async with anyio.create_task_group() as tg:
                call = await waiting(tg, lambda: h.lc.stop_workspace(CHAT, owner=OWNER))
                stop = await h.claim()
                await h.store.finish_build(stop.build_id, JobStatus.SUCCEEDED)
                delete = await h.queue(Transition.DELETE)
                r = await call.result()
            assert not r.is_error
            assert_succeeded_then_superseded(r.data, "stopped", stop, delete)

    async def test_failed_build_then_newer_build_still_says_failed(self) -> None:
        """The guard on the other side: a build that really failed is still answered as failed
        (with its own reason), even if a newer build was queued before the waiter ran."""
        async with harness() as h:
            await h.stopped()
            async with anyio.create_task_group() as tg:
                call = await waiting(tg, lambda: h.lc.start_workspace(CHAT, owner=OWNER))
                start = await h.claim()
                await h.store.finish_build(start.build_id, JobStatus.FAILED, "no capacity")
                await h.queue(Transition.STOP)
                r = await call.result()
            assert r.data.get("error") == "workspace start build failed: no capacity", r.data
            assert r.data.get("build_id") == start.build_id


class TestAgentThenStop:
    @pytest.mark.parametrize("reported", [None, AgentLifecycle.STARTING])
    async def test_start_with_agent_then_stop_is_not_no_agent(self, reported: AgentLifecycle | None) -> None:
        """Bug 2: the start build succeeded with an agent; while the starter waits for the agent,
        another caller queues a stop. There is an agent: never 'no_agent'; it will not become
        ready because the workspace is being stopped: not_ready, its lifecycle_state, and
        superseded_by naming the stop."""
        async with harness() as h:
            await h.stopped()
            async with anyio.create_task_group() as tg:
                call = await waiting(tg, lambda: h.lc.start_workspace(CHAT, owner=OWNER))
                start = await h.claim()
                await h.store.finish_build(start.build_id, JobStatus.SUCCEEDED, has_agent=True)
                await anyio.wait_all_tasks_blocked()
                assert not call.done.is_set()  # waiting for the agent now
                if reported is not None:
                    await h.store.report_agent(await h.workspace_id(), reported)
                    await anyio.wait_all_tasks_blocked()
                    assert not call.done.is_set()
                stop = await h.queue(Transition.STOP)
                r = await call.result()
            assert not r.is_error
            assert r.data.get("agent_status") != "no_agent", f"the build has an agent: {r.data}"
            assert r.data == {
                "started": True,
                "workspace_name": "dev",
                "build_id": start.build_id,
                "agent_status": "not_ready",
                "lifecycle_state": (reported or AgentLifecycle.CREATED).value,
                "superseded_by": {"transition": "stop", "build_id": stop.build_id},
            }

    async def test_start_with_agent_then_stop_through_the_runtime(self) -> None:
        """Bug 2 with the other caller going through the Lifecycle (stop_workspace wait=False)."""
        async with harness() as h:
            await h.stopped()
            async with anyio.create_task_group() as tg:
                call = await waiting(tg, lambda: h.lc.start_workspace(CHAT, owner=OWNER))
                start = await h.complete(agent=True)
                await anyio.wait_all_tasks_blocked()
                assert not call.done.is_set()
                stopping = await h.lc.stop_workspace(CHAT, owner=OWNER, wait=False)
                assert stopping.data["status"] == "building"
                r = await call.result()
            assert r.data.get("agent_status") != "no_agent", f"the build has an agent: {r.data}"
            assert r.data.get("started") is True and r.data.get("build_id") == start.build_id, r.data
            assert r.data.get("agent_status") == "not_ready" and r.data.get("lifecycle_state") == "created"
            assert r.data.get("superseded_by") == {
                "transition": "stop",
                "build_id": stopping.data["build_id"],
            }


# --- 3. a late start must not revive a workspace the chat no longer has --------------------------


def _answers_about_the_new_workspace(r: wl.ToolResult) -> bool:
    """The late start's answer is about the chat's current workspace (``dev2``), or says the
    workspace it waited on was replaced."""
    return r.data.get("workspace_name") in ("dev2", f"{OWNER}/dev2") or "replaced" in r.text.lower()


async def _failed_with_stop_in_flight(h: H) -> str:
    """c1's workspace (``dev``) failed, and a stop build of it is in flight; returns its id."""
    assert not (await h.lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)).is_error
    await h.complete(JobStatus.FAILED)
    assert await h.lc.state(CHAT) is WorkspaceState.FAILED
    stopping = await h.lc.stop_workspace(CHAT, owner=OWNER, wait=False)
    assert stopping.data["status"] == "building"
    return await h.workspace_id()


async def _starts_after(store: wl.Store, workspace_id: str, seq: int) -> list[wl.StoreEvent]:
    return [
        e
        for e in await store.read_events(seq)
        if e.workspace_id == workspace_id
        and e.kind is wl.EventKind.BUILD_QUEUED
        and e.transition is Transition.START
    ]


class TestStartAfterTheChatGotANewWorkspace:
    @pytest.mark.parametrize("stop_outcome", [JobStatus.FAILED, JobStatus.SUCCEEDED])
    async def test_waiting_start_does_not_start_the_replaced_workspace(self, stop_outcome: JobStatus) -> None:
        """Bug 3: start_workspace waits (WAIT_THEN_RETRY) on the failed workspace's stop build;
        when that stop ends, another caller's create_workspace replaces the workspace at once.
        The waiting start must not fire a start build on the old workspace (bound to no chat);
        its answer is about the chat's new workspace, or says the workspace was replaced."""
        async with harness() as h:
            old = await _failed_with_stop_in_flight(h)
            async with anyio.create_task_group() as tg:
                call = await waiting(tg, lambda: h.lc.start_workspace(CHAT, owner=OWNER))
                stop = await h.claim()
                assert stop.transition is Transition.STOP and stop.workspace_id == old
                # The stop ends, and another replica's create replaces the workspace before the
                # waiting start runs again (no checkpoint in between).
                await h.store.finish_build(stop.build_id, stop_outcome)
                replaced = await h.store.create_workspace(CHAT, "dev2", expected_workspace_id=old)
                assert replaced.fired
                rebound_at = replaced.facts.seq
                new = replaced.facts.workspace_id
                # Play the provisioner until the late start answers (whatever builds it awaits).
                while not call.done.is_set():
                    with anyio.move_on_after(0.5):
                        await h.complete()
                r = await call.result()
            assert await h.workspace_id() == new
            revived = await _starts_after(h.store, old, rebound_at)
            assert not revived, (
                f"a start build was fired on workspace {old}, which the chat no longer has "
                f"(it is bound to {new}): {revived}; answer {r.data}"
            )
            assert wl.derive_state(await h.store.workspace_facts(old)) not in (
                WorkspaceState.RUNNING,
                WorkspaceState.AGENT_READY,
                WorkspaceState.BUILDING,
            )
            assert _answers_about_the_new_workspace(r), r.data

    async def test_deferred_start_fires_before_any_replacement(self) -> None:
        """Bug 3 with wait=False: the start deferred behind the stop build is stored on the
        workspace and fired by the stop's finish, in the same write: no create can replace the
        workspace in between, and the create that comes after is refused (a workspace being
        started would run bound to no chat)."""
        async with harness() as h:
            old = await _failed_with_stop_in_flight(h)
            deferred = await h.lc.start_workspace(CHAT, owner=OWNER, wait=False)
            assert deferred.data["status"] == "building"
            stop = await h.claim()
            assert stop.transition is Transition.STOP
            await h.store.finish_build(stop.build_id, JobStatus.FAILED)
            latest = (await h.store.workspace_facts(old)).latest_build
            assert latest is not None and latest.transition is Transition.START
            assert latest.number == stop.number + 1
            replaced = await h.store.create_workspace(CHAT, "dev2", expected_workspace_id=old)
            assert not replaced.fired
            assert await h.workspace_id() == old


class TestStoreRefusesStartOnUnboundWorkspace:
    """Store conformance (memory, SQLite, PostgreSQL): once the chat is bound to a new workspace,
    the old one may still be stopped or deleted (that only saves cost), never started."""

    @pytest.fixture
    def anyio_backend(self, store_backend: tuple[str, str]) -> str:
        return store_backend[1]

    async def _replaced(self, store: wl.Store) -> tuple[str, str]:
        await store.register_chat(CHAT, OWNER)
        old = (await store.create_workspace(CHAT, "dev", expected_workspace_id=None)).facts.workspace_id
        build = await store.claim_build("w")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.FAILED, "boom")
        replaced = await store.create_workspace(CHAT, "dev2", expected_workspace_id=old)
        assert replaced.fired and replaced.facts.workspace_id != old
        first = await store.claim_build("w")  # the new workspace's first build: out of the way
        assert first is not None and first.workspace_id == replaced.facts.workspace_id
        await store.finish_build(first.build_id, JobStatus.SUCCEEDED)
        chat = await store.get_chat(CHAT)
        assert chat is not None and chat.workspace_id == replaced.facts.workspace_id
        return old, replaced.facts.workspace_id

    async def test_start_on_unbound_workspace_is_refused(self, store: wl.Store) -> None:
        old, _ = await self._replaced(store)
        head = await store.head()
        outcome = await store.request_build(old, Transition.START, expected_build_number=1)
        assert not outcome.fired, f"a start build was appended to workspace {old}, bound to no chat"
        assert outcome.build is None
        assert await store.head() == head

    async def test_stop_and_delete_on_unbound_workspace_stay_allowed(self, store: wl.Store) -> None:
        old, _ = await self._replaced(store)
        stop = await store.request_build(old, Transition.STOP, expected_build_number=1)
        assert stop.fired and stop.build is not None
        claimed = await store.claim_build("w")
        assert claimed is not None and claimed.build_id == stop.build.build_id
        await store.finish_build(claimed.build_id, JobStatus.SUCCEEDED)
        delete = await store.request_build(old, Transition.DELETE, expected_build_number=2)
        assert delete.fired and delete.build is not None
