"""The provisioner's and the agents' side of random histories, as the machine plays it when no
provisioner is given (``simulated``): claims, finishes (a deferred request then fires in the
finishing write), agent reports, a ready agent going deaf; and a replica that exits and another
that starts (``restart_runtime``)."""

from __future__ import annotations

from contextlib import ExitStack

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from ..limits import over_limit
from ..values import AgentLifecycle, JobStatus, Transition, WorkspaceState
from .base import MachineBase
from .histories import FINAL
from .requests import FIRES_FROM


class ProvisionerRules(MachineBase):
    """The rules of the provisioner's side: claims, finishes, agents and replicas."""

    @precondition(lambda self: self.simulated)
    @rule(worker=st.sampled_from(["w1", "w2"]))
    def claim(self, worker: str) -> None:
        """A worker claims the oldest pending build (it moves to running)."""
        build = self.call(self.store.claim_build, worker)
        if build is not None:
            assert build.status is JobStatus.RUNNING and build.worker == worker

    @precondition(lambda self: self.simulated)
    @rule(
        data=st.data(),
        status=st.sampled_from(FINAL),
        has_agent=st.booleans(),
        error=st.sampled_from([None, "boom"]),
    )
    def finish(self, data: st.DataObject, status: JobStatus, has_agent: bool, error: str | None) -> None:
        """Finish the chat's build in flight; a request deferred behind it then fires (once)."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        ws = self._workspace(chat)
        if ws is None:
            return
        build = self._latest(ws)
        if build is None or build.status.finished:
            return
        while build.status is JobStatus.PENDING:
            claimed = self.call(self.store.claim_build, "kit")
            assert claimed is not None
            if claimed.build_id == build.build_id:
                build = claimed
        head = self.call(self.store.head)
        self.call(self.store.finish_build, build.build_id, status, error, has_agent=has_agent)
        deferred = self.deferred.pop(ws, None)
        # The request deferred behind the build fires in the finishing write itself: its build
        # is in the log at once, whether any runtime is alive or not.
        builds = self._queued(self._read(head), ws)
        after = _finished_state(build.transition, status, has_agent)
        if deferred is None or after is None or after not in FIRES_FROM[deferred]:
            assert not builds, (
                f"nothing was deferred behind build {build.number} (or it may not fire): {builds}"
            )
            return
        if not builds and deferred is Transition.START:
            # Dropped only for the owner's limits: one more running workspace would exceed them.
            usage = self.call(self.store.usage, self.owner)
            assert over_limit(usage, None, adds_running=True, adds_workspace=False) is not None, (
                f"the start deferred behind build {build.number} was dropped within the limits: {usage}"
            )
            return
        assert len(builds) == 1 and builds[0].transition is deferred, (deferred, builds)
        assert builds[0].build_number == build.number + 1

    @precondition(lambda self: self.simulated)
    @rule()
    def restart_runtime(self) -> None:
        """The replica that accepted the requests exits (its Lifecycle and everything in its
        memory is gone) and another starts: the deferred requests are kept in the store."""
        self._runtime.close()
        self._runtime = ExitStack()
        self.lc = self._open_runtime()

    @precondition(lambda self: self.simulated)
    @rule(data=st.data(), lifecycle=st.sampled_from(list(AgentLifecycle)))
    def report_agent(self, data: st.DataObject, lifecycle: AgentLifecycle) -> None:
        """The agent reports a lifecycle state (ready, start_timeout, start_error, ...)."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        ws = self._workspace(chat)
        if ws is None:
            return
        facts = self.call(self.store.workspace_facts, ws)
        if facts.agent is None or facts.workspace.deleted:
            return
        self.call(self.store.report_agent, ws, lifecycle)

    @precondition(lambda self: self.simulated)
    @rule(data=st.data())
    def agent_goes_deaf(self, data: st.DataObject) -> None:
        """The agent of a started workspace stops answering: no answer and no status says it is
        ready (``agent_status: "not_ready"``), and nothing is built for it."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        ws = self._workspace(chat)
        if ws is None or ws in self.deferred:
            return
        facts = self.call(self.store.workspace_facts, ws)
        latest, agent = facts.latest_build, facts.agent
        if (
            facts.workspace.deleted
            or latest is None
            or agent is None
            or agent.build_number != latest.number
            or latest.transition is not Transition.START
            or latest.status is not JobStatus.SUCCEEDED
        ):
            return
        head = self.call(self.store.head)
        self.call(self.store.report_agent, ws, AgentLifecycle.DISCONNECTED)
        assert self.call(self.lc.state, chat) is WorkspaceState.RUNNING
        started = self.call(self.lc.start_workspace, chat, owner=self.owner)
        assert started.data.get("started") is True, started.data
        assert started.data.get("agent_status") == "not_ready", started.data
        assert started.data.get("lifecycle_state") == "disconnected", started.data
        status = self.call(self.lc.status, chat, owner=self.owner).data
        assert status["status"] == "running" and status["reason"] == "agent lifecycle is disconnected", status
        assert not self._queued(self._read(head), ws)


def _finished_state(transition: Transition, status: JobStatus, has_agent: bool) -> WorkspaceState | None:
    """The state a build's finish leaves (``None``: deleted)."""
    if status is not JobStatus.SUCCEEDED:
        return WorkspaceState.FAILED
    if transition is Transition.DELETE:
        return None
    if transition is Transition.STOP:
        return WorkspaceState.STOPPED
    return WorkspaceState.RUNNING
