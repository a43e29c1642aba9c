"""Every answer of the workspace tools (SPEC "Answers of start_workspace"), on asyncio and trio.

The tests play the provisioner themselves: they claim and finish builds and report the agent
through the store's provisioner calls, so each wait ends exactly when the test says and nothing
sleeps. ``anyio.wait_all_tasks_blocked`` tells when a request has reached its wait.
"""

from __future__ import annotations

from contextlib import aclosing

import anyio
import pytest
from anyio.abc import TaskGroup
from chat_harness import CHAT, OWNER, Call, H, harness, spawn

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, Transition, WorkspaceState
from workspace_lifecycle.answers import CHAT_NOT_FOUND, NO_WORKSPACE, WORKSPACE_DELETED

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def start_in_background(h: H, tg: TaskGroup) -> Call:
    """Start c1 with wait=True in the background and return once it is waiting."""
    call = spawn(tg, lambda: h.lc.start_workspace(CHAT, owner=OWNER))
    await anyio.wait_all_tasks_blocked()
    assert not call.done.is_set()
    return call


class TestStartRefusals:
    async def test_unknown_chat(self) -> None:
        """A chat nobody registered: 'chat has no workspace; use create_workspace first'."""
        async with harness() as h:
            r = await h.lc.start_workspace("never-registered", owner=OWNER)
        assert r.is_error and r.text == NO_WORKSPACE and r.data == {"error": NO_WORKSPACE}

    async def test_no_workspace(self) -> None:
        """A registered chat without a workspace gets the same sentence."""
        async with harness() as h:
            r = await h.lc.start_workspace(CHAT, owner=OWNER)
            assert r.is_error and r.text == NO_WORKSPACE
            assert await h.store.read_events(0) == []

    async def test_deleted(self) -> None:
        """After a delete build succeeded: 'workspace was deleted; ...'; no build is fired."""
        async with harness() as h:
            await h.running()
            async with anyio.create_task_group() as tg:
                call = spawn(tg, lambda: h.lc.delete_workspace(CHAT, owner=OWNER))
                await h.complete()
                deleted = await call.result()
            assert deleted.data == {
                "deleted": True,
                "workspace_name": "dev",
                "build_id": (await h.latest()).build_id,
            }
            head = await h.store.head()
            r = await h.lc.start_workspace(CHAT, owner=OWNER)
            assert r.is_error and r.text == WORKSPACE_DELETED
            assert await h.store.head() == head
            assert await h.lc.state(CHAT) is WorkspaceState.NO_WORKSPACE

    async def test_other_owner_same_as_unknown(self) -> None:
        """Another owner's live workspace is answered exactly like an unknown chat."""
        async with harness() as h:
            await h.running(AgentLifecycle.READY)
            head = await h.store.head()
            theirs = await h.lc.start_workspace(CHAT, owner="mallory")
            unknown = await h.lc.start_workspace("nope", owner="mallory")
            assert theirs == unknown and theirs.is_error and theirs.text == NO_WORKSPACE
            for other in (h.lc.stop_workspace, h.lc.delete_workspace):
                assert (await other(CHAT, owner="mallory")).text == NO_WORKSPACE
            assert await h.store.head() == head


class TestStartAlreadyRunning:
    async def test_agent_ready(self) -> None:
        """agent_ready: started, no_build, and no agent fields at all."""
        async with harness() as h:
            await h.running(AgentLifecycle.READY)
            head = await h.store.head()
            r = await h.lc.start_workspace(CHAT, owner=OWNER)
            assert not r.is_error
            assert r.data == {"started": True, "workspace_name": "dev", "no_build": True}
            assert await h.store.head() == head

    async def test_running_without_agent(self) -> None:
        """running with no agent: no_build and agent_status no_agent, at once."""
        async with harness() as h:
            await h.running()
            r = await h.lc.start_workspace(CHAT, owner=OWNER)
            assert r.data == {
                "started": True,
                "workspace_name": "dev",
                "no_build": True,
                "agent_status": "no_agent",
            }

    async def test_text_is_the_json_of_data(self) -> None:
        """The text the model sees is the JSON object of ``data``."""
        import json

        async with harness() as h:
            await h.running(AgentLifecycle.READY)
            r = await h.lc.start_workspace(CHAT, owner=OWNER)
            assert json.loads(r.text) == r.data


class TestStartWaits:
    async def test_start_build_in_progress(self) -> None:
        """A start build in flight: wait for it and answer with its build_id; fire nothing."""
        async with harness() as h:
            created = await h.lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                await h.complete(agent=True)
                await anyio.wait_all_tasks_blocked()
                assert not call.done.is_set()  # waiting for the agent now
                await h.report(AgentLifecycle.READY)
                r = await call.result()
            assert r.data == {"started": True, "workspace_name": "dev", "build_id": created.data["build_id"]}
            assert len(await h.start_builds()) == 1

    async def test_stop_build_in_progress_waits_then_starts(self) -> None:
        """The fixed Coder fault: during a stop build, wait for it, then fire one start build."""
        async with harness() as h:
            await h.running()
            await h.lc.stop_workspace(CHAT, owner=OWNER, wait=False)
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                assert (await h.latest()).transition is Transition.STOP
                await h.complete()  # the stop build
                start = await h.claim()
                assert start.transition is Transition.START and start.number == 3
                await anyio.wait_all_tasks_blocked()
                assert not call.done.is_set()  # not "started" while the stop ran
                await h.store.finish_build(start.build_id, JobStatus.SUCCEEDED, has_agent=False)
                r = await call.result()
            assert r.data == {
                "started": True,
                "workspace_name": "dev",
                "build_id": start.build_id,
                "agent_status": "no_agent",
            }
            assert len(await h.start_builds()) == 2  # the create's and this one

    async def test_stop_build_fails_then_starts_from_failed(self) -> None:
        """A stop build that fails leaves the workspace failed; start then fires from there."""
        async with harness() as h:
            await h.running()
            await h.lc.stop_workspace(CHAT, owner=OWNER, wait=False)
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                await h.complete(JobStatus.FAILED, error="stop exploded")
                start = await h.complete()
                r = await call.result()
            assert start.transition is Transition.START
            assert r.data["started"] is True and r.data["build_id"] == start.build_id

    async def test_delete_build_in_progress_then_deleted(self) -> None:
        """During a delete build, start waits for it and then answers as deleted."""
        async with harness() as h:
            await h.running()
            await h.lc.delete_workspace(CHAT, owner=OWNER, wait=False)
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                await h.complete()
                r = await call.result()
            assert r.is_error and r.text == WORKSPACE_DELETED
            assert len(await h.start_builds()) == 1

    @pytest.mark.parametrize("from_state", ["stopped", "failed"])
    async def test_fires_exactly_one_build(self, from_state: str) -> None:
        """From stopped or failed: exactly one start build, awaited, answered with its id."""
        async with harness() as h:
            if from_state == "stopped":
                await h.stopped()
            else:
                await h.lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)
                await h.complete(JobStatus.FAILED, error="boom")
                assert await h.lc.state(CHAT) is WorkspaceState.FAILED
            before = len(await h.start_builds())
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                build = await h.complete(agent=True)
                await h.report(AgentLifecycle.READY)
                r = await call.result()
            assert build.transition is Transition.START
            assert r.data == {"started": True, "workspace_name": "dev", "build_id": build.build_id}
            assert len(await h.start_builds()) == before + 1
            assert await h.lc.state(CHAT) is WorkspaceState.AGENT_READY


class TestBuildFailures:
    @pytest.mark.parametrize(
        ("status", "error", "reason"),
        [
            (JobStatus.FAILED, "terraform apply failed", "terraform apply failed"),
            (JobStatus.FAILED, None, "build failed"),
            (JobStatus.CANCELED, None, "build was canceled"),
        ],
    )
    async def test_own_build_fails(self, status: JobStatus, error: str | None, reason: str) -> None:
        """The start build this call fired fails: 'workspace start build failed: <reason>'."""
        async with harness() as h:
            await h.stopped()
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                build = await h.complete(status, error=error)
                r = await call.result()
            assert not r.is_error
            assert r.data == {"error": f"workspace start build failed: {reason}", "build_id": build.build_id}
            assert await h.lc.state(CHAT) is WorkspaceState.FAILED

    async def test_awaited_build_of_another_caller_fails(self) -> None:
        """Waiting on a start build somebody else fired: 'waiting for in-progress build: <reason>'."""
        async with harness() as h:
            created = await h.lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                await h.complete(JobStatus.FAILED, error="no capacity")
                r = await call.result()
            assert r.data == {
                "error": "waiting for in-progress build: no capacity",
                "build_id": created.data["build_id"],
            }

    async def test_build_timeout(self) -> None:
        """Nobody finishes the build within build_timeout: the answer says it timed out."""
        async with harness(build_timeout=0.05) as h:
            await h.stopped()
            with anyio.fail_after(5):
                r = await h.lc.start_workspace(CHAT, owner=OWNER)
            latest = await h.latest()
            assert latest.transition is Transition.START and latest.status is JobStatus.PENDING
            assert r.data == {
                "timed_out": True,
                "build_status": "pending",
                "message": "timed out waiting for the workspace start build; it is still pending:"
                " no provisioner has claimed it. It may still finish: ask workspace_status later",
                "build_id": latest.build_id,
            }


class TestAgentFields:
    async def test_no_agent_answers_at_once(self) -> None:
        """A start build without an agent is answered no_agent without any agent wait."""
        async with harness(agent_timeout=60) as h:
            await h.stopped()
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                build = await h.complete(agent=False)
                r = await call.result()  # bounded by 5 s, far below agent_timeout
            assert r.data == {
                "started": True,
                "workspace_name": "dev",
                "build_id": build.build_id,
                "agent_status": "no_agent",
            }

    @pytest.mark.parametrize(
        "lifecycle", [AgentLifecycle.START_ERROR, AgentLifecycle.START_TIMEOUT, AgentLifecycle.OFF]
    )
    async def test_agent_failure_state(self, lifecycle: AgentLifecycle) -> None:
        """The agent lands in a failure state: startup_scripts_failed with its lifecycle_state."""
        async with harness() as h:
            await h.stopped()
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                await h.complete(agent=True)
                await h.report(AgentLifecycle.STARTING)
                await anyio.wait_all_tasks_blocked()
                assert not call.done.is_set()  # starting is still on its way
                await h.report(lifecycle)
                r = await call.result()
            assert r.data["startup_scripts"] == "startup_scripts_failed"
            assert r.data["lifecycle_state"] == lifecycle.value
            assert r.data["started"] is True

    async def test_agent_timeout(self) -> None:
        """The agent stays in created past agent_timeout: startup_scripts_timeout."""
        async with harness(agent_timeout=0.05) as h:
            await h.stopped()
            async with anyio.create_task_group() as tg:
                call = await start_in_background(h, tg)
                build = await h.complete(agent=True)
                r = await call.result()
            assert r.data == {
                "started": True,
                "workspace_name": "dev",
                "build_id": build.build_id,
                "startup_scripts": "startup_scripts_timeout",
            }

    async def test_late_ready_after_start_timeout_is_followed(self) -> None:
        """start_timeout is reported, but a later ready still brings the state to agent_ready."""
        async with harness() as h:
            await h.stopped()
            changes: list[wl.StateChange] = []
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    async with aclosing(h.lc.watch(CHAT)) as stream:
                        async for change in stream:
                            changes.append(change)
                            if change.to_state is WorkspaceState.AGENT_READY:
                                return

                tg.start_soon(watch)
                call = await start_in_background(h, tg)
                await h.complete(agent=True)
                await h.report(AgentLifecycle.START_TIMEOUT)
                r = await call.result()
                assert r.data["lifecycle_state"] == "start_timeout"
                assert await h.lc.state(CHAT) is WorkspaceState.RUNNING
                await h.report(AgentLifecycle.READY)
            assert await h.lc.state(CHAT) is WorkspaceState.AGENT_READY
            assert [c.to_state for c in changes] == [
                WorkspaceState.BUILDING,
                WorkspaceState.RUNNING,
                WorkspaceState.AGENT_READY,
            ]
            again = await h.lc.start_workspace(CHAT, owner=OWNER)
            assert again.data == {"started": True, "workspace_name": "dev", "no_build": True}


class TestNoWait:
    async def test_from_stopped(self) -> None:
        """wait=False fires the build and answers at once with status 'building'."""
        async with harness() as h:
            await h.stopped()
            r = await h.lc.start_workspace(CHAT, owner=OWNER, wait=False)
            latest = await h.latest()
            assert latest.transition is Transition.START and latest.status is JobStatus.PENDING
            assert r.data == {
                "workspace_name": "dev",
                "status": "building",
                "request": "start",
                "build_id": latest.build_id,
            }

    @pytest.mark.parametrize("agent", [None, AgentLifecycle.READY])
    async def test_already_running(self, agent: AgentLifecycle | None) -> None:
        """wait=False on a running workspace: status is the state's name, no build."""
        async with harness() as h:
            await h.running(agent)
            r = await h.lc.start_workspace(CHAT, owner=OWNER, wait=False)
            expected = "agent_ready" if agent else "running"
            assert r.data == {
                "workspace_name": "dev",
                "status": expected,
                "request": "start",
                "no_build": True,
            }

    async def test_during_stop_build_starts_later(self) -> None:
        """wait=False during a stop build answers 'building' now and starts after the stop."""
        async with harness() as h:
            await h.running()
            stop = await h.lc.stop_workspace(CHAT, owner=OWNER, wait=False)
            r = await h.lc.start_workspace(CHAT, owner=OWNER, wait=False)
            assert r.data == {
                "workspace_name": "dev",
                "status": "building",
                "request": "start",
                "build_id": stop.data["build_id"],
            }
            await h.complete()  # the stop
            start = await h.claim()
            assert start.transition is Transition.START and start.number == 3


class TestExactlyOnce:
    async def test_200_concurrent_starts(self) -> None:
        """200 concurrent start_workspace calls on one stopped workspace: one build, one build_id."""
        async with harness() as h:
            await h.stopped()
            before = len(await h.start_builds())
            calls: list[Call] = []
            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    calls.append(spawn(tg, lambda: h.lc.start_workspace(CHAT, owner=OWNER)))
                await anyio.wait_all_tasks_blocked()
                build = await h.complete()
                results = [await c.result() for c in calls]
            assert len(await h.start_builds()) == before + 1
            assert {r.data.get("build_id") for r in results} == {build.build_id}
            assert all(r.data["started"] is True for r in results)
            assert await h.store.claim_build("w") is None

    async def test_loser_of_the_race_answers_the_winners_build(self) -> None:
        """A caller whose compare-and-set lost to an identical start build answers that build's
        id, even when the build finished before the loser looked again (not ``no_build``)."""

        class RivalStore(wl.MemoryStore):
            """Before this caller's request lands, a rival fires the same build and it finishes."""

            rival: wl.Build | None = None

            async def request_build(
                self, workspace_id: str, transition: Transition, *, expected_build_number: int
            ) -> wl.Outcome:
                if self.rival is None and transition is Transition.START:
                    won = await super().request_build(
                        workspace_id, transition, expected_build_number=expected_build_number
                    )
                    assert won.build is not None
                    claimed = await self.claim_build("rival")
                    assert claimed is not None
                    self.rival = await self.finish_build(
                        claimed.build_id, JobStatus.SUCCEEDED, has_agent=False
                    )
                return await super().request_build(
                    workspace_id, transition, expected_build_number=expected_build_number
                )

        with anyio.fail_after(5):
            async with RivalStore() as store, wl.Lifecycle(store) as lc:
                h = H(store, lc)
                await lc.register_chat(CHAT, owner=OWNER)
                await h.stopped()
                r = await lc.start_workspace(CHAT, owner=OWNER)
                assert store.rival is not None
                assert r.data == {
                    "started": True,
                    "workspace_name": "dev",
                    "build_id": store.rival.build_id,
                    "agent_status": "no_agent",
                }
                assert len(await h.start_builds()) == 2  # the create's and the rival's


class TestCreateStopDelete:
    async def test_create(self) -> None:
        """create_workspace: created, owner/name, build_id; waits for the build and agent."""
        async with harness() as h:
            async with anyio.create_task_group() as tg:
                call = spawn(tg, lambda: h.lc.create_workspace(CHAT, owner=OWNER, name="dev"))
                build = await h.complete(agent=True)
                await h.report(AgentLifecycle.READY)
                r = await call.result()
            assert r.data == {"created": True, "workspace_name": "alice/dev", "build_id": build.build_id}

    async def test_create_unknown_chat(self) -> None:
        async with harness() as h:
            r = await h.lc.create_workspace("nope", owner=OWNER, name="dev")
            assert r.is_error and r.text == CHAT_NOT_FOUND
            other = await h.lc.create_workspace(CHAT, owner="mallory", name="dev")
            assert other == r

    async def test_create_existing_stopped(self) -> None:
        """An existing stopped workspace is reported, not rebuilt."""
        async with harness() as h:
            await h.stopped()
            head = await h.store.head()
            r = await h.lc.create_workspace(CHAT, owner=OWNER, name="other")
            assert r.data == {
                "created": False,
                "workspace_name": "dev",
                "status": "stopped",
                "message": "workspace is stopped; use start_workspace to start it",
            }
            assert await h.store.head() == head

    async def test_create_existing_running(self) -> None:
        async with harness() as h:
            await h.running(AgentLifecycle.READY)
            r = await h.lc.create_workspace(CHAT, owner=OWNER, name="other")
            assert r.data == {
                "created": False,
                "workspace_name": "dev",
                "status": "already_exists",
                "message": "workspace is already running and recently connected",
            }

    async def test_create_after_delete_makes_a_new_workspace(self) -> None:
        async with harness() as h:
            await h.running()
            old = await h.workspace_id()
            await h.lc.delete_workspace(CHAT, owner=OWNER, wait=False)
            await h.complete()
            r = await h.lc.create_workspace(CHAT, owner=OWNER, name="dev2", wait=False)
            assert r.data["workspace_name"] == "alice/dev2" and r.data["status"] == "building"
            assert await h.workspace_id() != old

    async def test_create_over_failed_makes_a_new_workspace(self) -> None:
        """As Coder's: a chat whose workspace failed gets a new workspace, not an error."""
        async with harness() as h:
            await h.lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)
            await h.complete(JobStatus.FAILED, error="boom")
            old = await h.workspace_id()
            async with anyio.create_task_group() as tg:
                call = spawn(tg, lambda: h.lc.create_workspace(CHAT, owner=OWNER, name="dev2"))
                build = await h.complete(agent=False)
                r = await call.result()
            assert await h.workspace_id() != old
            assert r.data == {
                "created": True,
                "workspace_name": "alice/dev2",
                "build_id": build.build_id,
                "agent_status": "no_agent",
            }

    async def test_stop(self) -> None:
        """stop from running fires one stop build; from stopped it is already done."""
        async with harness() as h:
            await h.running(AgentLifecycle.READY)
            async with anyio.create_task_group() as tg:
                call = spawn(tg, lambda: h.lc.stop_workspace(CHAT, owner=OWNER))
                build = await h.complete()
                r = await call.result()
            assert build.transition is Transition.STOP
            assert r.data == {"stopped": True, "workspace_name": "dev", "build_id": build.build_id}
            again = await h.lc.stop_workspace(CHAT, owner=OWNER)
            assert again.data == {"stopped": True, "workspace_name": "dev", "no_build": True}

    async def test_stop_without_workspace(self) -> None:
        async with harness() as h:
            r = await h.lc.stop_workspace(CHAT, owner=OWNER)
            assert r.is_error and r.text == NO_WORKSPACE

    async def test_stop_during_start_waits_then_stops(self) -> None:
        async with harness() as h:
            await h.lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)
            async with anyio.create_task_group() as tg:
                call = spawn(tg, lambda: h.lc.stop_workspace(CHAT, owner=OWNER))
                await anyio.wait_all_tasks_blocked()
                await h.complete()
                stop = await h.complete()
                r = await call.result()
            assert stop.transition is Transition.STOP
            assert r.data == {"stopped": True, "workspace_name": "dev", "build_id": stop.build_id}

    async def test_stop_build_fails(self) -> None:
        async with harness() as h:
            await h.running()
            async with anyio.create_task_group() as tg:
                call = spawn(tg, lambda: h.lc.stop_workspace(CHAT, owner=OWNER))
                build = await h.complete(JobStatus.FAILED, error="stuck")
                r = await call.result()
            assert r.data == {"error": "workspace stop build failed: stuck", "build_id": build.build_id}

    async def test_delete_then_deleted(self) -> None:
        """delete fires one delete build; afterwards stop and delete answer 'deleted'."""
        async with harness() as h:
            await h.stopped()
            async with anyio.create_task_group() as tg:
                call = spawn(tg, lambda: h.lc.delete_workspace(CHAT, owner=OWNER))
                build = await h.complete()
                r = await call.result()
            assert build.transition is Transition.DELETE
            assert r.data == {"deleted": True, "workspace_name": "dev", "build_id": build.build_id}
            for request in (h.lc.stop_workspace, h.lc.delete_workspace, h.lc.start_workspace):
                assert (await request(CHAT, owner=OWNER)).text == WORKSPACE_DELETED


class TestWatch:
    async def test_changes_in_order(self) -> None:
        """watch(chat) yields every state change of the chat's workspace, in order."""
        async with harness() as h:
            changes: list[wl.StateChange] = []
            expected = [
                (WorkspaceState.NO_WORKSPACE, WorkspaceState.BUILDING),
                (WorkspaceState.BUILDING, WorkspaceState.RUNNING),
                (WorkspaceState.RUNNING, WorkspaceState.AGENT_READY),
                (WorkspaceState.AGENT_READY, WorkspaceState.BUILDING),
                (WorkspaceState.BUILDING, WorkspaceState.STOPPED),
                (WorkspaceState.STOPPED, WorkspaceState.BUILDING),
                (WorkspaceState.BUILDING, WorkspaceState.FAILED),
            ]
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    async with aclosing(h.lc.watch(CHAT)) as stream:
                        async for change in stream:
                            changes.append(change)
                            if len(changes) == len(expected):
                                return

                tg.start_soon(watch)
                await anyio.wait_all_tasks_blocked()
                await h.running(AgentLifecycle.READY)
                await h.lc.stop_workspace(CHAT, owner=OWNER, wait=False)
                await h.complete()
                await h.lc.start_workspace(CHAT, owner=OWNER, wait=False)
                await h.complete(JobStatus.FAILED)
            assert [(c.from_state, c.to_state) for c in changes] == expected
            seqs = [c.seq for c in changes]
            assert seqs == sorted(seqs)
            assert [c.build_number for c in changes] == [1, 1, 1, 2, 2, 3, 3]
            assert {c.chat_id for c in changes} == {CHAT}

    async def test_ending_a_watch_drops_only_its_chats_machines(self) -> None:
        """A watched chat's new workspace is followed without anybody holding it; when that
        watch ends its machine goes, while another chat's watch keeps (and feeds) its own."""
        async with harness() as h:
            await h.lc.register_chat("c2", owner=OWNER)
            seen: dict[str, list[wl.StateChange]] = {CHAT: [], "c2": []}

            async def watch(chat: str, scope: anyio.CancelScope) -> None:
                with scope:
                    async with aclosing(h.lc.watch(chat)) as stream:
                        async for change in stream:
                            seen[chat].append(change)

            scopes = {CHAT: anyio.CancelScope(), "c2": anyio.CancelScope()}
            async with anyio.create_task_group() as tg:
                for chat, scope in scopes.items():
                    tg.start_soon(watch, chat, scope)
                await anyio.wait_all_tasks_blocked()
                for chat in scopes:
                    assert not (await h.lc.create_workspace(chat, owner=OWNER, wait=False)).is_error
                await anyio.wait_all_tasks_blocked()
                assert h.lc.tracked == 2
                scopes[CHAT].cancel()
                await anyio.wait_all_tasks_blocked()
                assert h.lc.tracked == 1
                await h.complete()
                await h.complete()
                await anyio.wait_all_tasks_blocked()
                assert [c.to_state for c in seen["c2"]] == [WorkspaceState.BUILDING, WorkspaceState.RUNNING]
                assert [c.to_state for c in seen[CHAT]] == [WorkspaceState.BUILDING]
                scopes["c2"].cancel()
            assert h.lc.tracked == 0


class TestOnEveryStore:
    """A few rows again on every store (memory, sqlite, postgres) through the shared fixture."""

    @pytest.fixture
    def anyio_backend(self, store_backend: tuple[str, str]) -> str:
        return store_backend[1]

    async def test_stop_then_start_waits_and_fires_once(self, store: wl.Store) -> None:
        async with wl.Lifecycle(store) as lc:
            h = H(store, lc)
            await lc.register_chat(CHAT, owner=OWNER)
            await h.running()
            await lc.stop_workspace(CHAT, owner=OWNER, wait=False)
            async with anyio.create_task_group() as tg:
                calls = [spawn(tg, lambda: lc.start_workspace(CHAT, owner=OWNER)) for _ in range(5)]
                await anyio.wait_all_tasks_blocked()
                await h.complete()
                start = await h.complete()
                results = [await c.result() for c in calls]
            assert start.transition is Transition.START
            assert all(r.data["started"] is True for r in results)
            # A caller still on its way to the store (sqlite, postgres: threads, sockets) when the
            # start finished rightly finds it running; every other caller shares the one build.
            assert {r.data.get("build_id", "no_build") for r in results} <= {start.build_id, "no_build"}
            assert len(await h.start_builds()) == 2
            assert (await lc.start_workspace("nope", owner=OWNER)).text == NO_WORKSPACE
