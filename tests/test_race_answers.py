"""Answers when another caller's build lands right after the awaited one (reported bugs).

A build that *succeeded* must be answered as what happened (``started: true`` and its
``build_id``), with ``superseded_by`` naming the newer build that another caller queued
before this waiter looked; never as a failure, and never ``no_agent`` for a build that has an
agent. The tests play the provisioner and the other caller through the memory store's own calls:
those run without a checkpoint, so "the build finished and the next one was queued before the
waiter ran" is exactly what happens, every time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import pytest
from anyio.abc import TaskGroup

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, Transition, WorkspaceState

pytestmark = pytest.mark.anyio

OWNER = "alice"
CHAT = "c1"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@attrs.define
class H:
    store: wl.Store
    lc: wl.Lifecycle

    async def claim(self) -> wl.Build:
        with anyio.fail_after(5):
            while True:
                cursor = await self.store.head()
                build = await self.store.claim_build("test-worker")
                if build is not None:
                    return build
                await self.store.wait_for_change(cursor)

    async def complete(self, status: JobStatus = JobStatus.SUCCEEDED, *, agent: bool = False) -> wl.Build:
        build = await self.claim()
        return await self.store.finish_build(build.build_id, status, has_agent=agent)

    async def workspace_id(self) -> str:
        row = await self.store.get_chat(CHAT)
        assert row is not None and row.workspace_id is not None
        return row.workspace_id

    async def latest(self) -> wl.Build:
        facts = await self.store.workspace_facts(await self.workspace_id())
        assert facts.latest_build is not None
        return facts.latest_build

    async def queue(self, transition: Transition) -> wl.Build:
        """Another caller (another replica) queues ``transition`` after the latest build."""
        latest = await self.latest()
        outcome = await self.store.request_build(
            await self.workspace_id(), transition, expected_build_number=latest.number
        )
        assert outcome.fired and outcome.build is not None
        return outcome.build

    async def running(self) -> None:
        assert not (await self.lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)).is_error
        await self.complete()

    async def stopped(self) -> None:
        await self.running()
        assert not (await self.lc.stop_workspace(CHAT, owner=OWNER, wait=False)).is_error
        await self.complete()
        assert await self.lc.state(CHAT) is WorkspaceState.STOPPED


@asynccontextmanager
async def harness() -> AsyncIterator[H]:
    with anyio.fail_after(10):
        async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lc:
            await lc.register_chat(CHAT, owner=OWNER)
            yield H(store, lc)


@attrs.define
class Call:
    result_: wl.ToolResult | None = None
    done: anyio.Event = attrs.Factory(anyio.Event)

    async def result(self) -> wl.ToolResult:
        with anyio.fail_after(5):
            await self.done.wait()
        assert self.result_ is not None
        return self.result_


async def waiting(tg: TaskGroup, fn: Callable[[], Awaitable[wl.ToolResult]]) -> Call:
    """Run ``fn`` in the background; return once it sleeps (on its build or its agent)."""
    call = Call()

    async def run() -> None:
        call.result_ = await fn()
        call.done.set()

    tg.start_soon(run)
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
