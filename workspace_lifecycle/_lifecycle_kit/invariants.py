"""The invariants checked after every step of random histories (the turn holds' own is in
:mod:`.holds`), and the redelivery rule that checks a tracker ignores an event it applied."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from .. import pools
from ..values import AgentLifecycle, JobStatus, Transition, WorkspaceState
from .base import MachineBase


class Invariants(MachineBase):
    """Rows and events agree, no owner above its limits, pools hold no chat's workspace, no
    answer calls an agent ready that is not."""

    @rule(data=st.data(), pick=st.integers(0, 2**16))
    def redeliver(self, data: st.DataObject, pick: int) -> None:
        """Delivering an already-applied event again changes nothing."""
        # Draw from fixed ranges only: workspace ids are random, so drawing from them would make
        # Hypothesis' data generation differ between runs of the same example.
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        ws = self._workspace(chat)
        events = self.applied.get(ws, []) if ws is not None else []
        if ws is None or not events:
            return
        event = events[pick % len(events)]
        tracker = self.trackers[ws]
        before = tracker.snapshot()
        assert tracker.apply(event) is None
        assert tracker.snapshot() == before

    @invariant()
    def pool_members_belong_to_no_chat(self) -> None:
        """No workspace is two chats', no member is a chat's, a claimed workspace stays its
        claimer's, and the pool never holds more than its size ready or coming."""
        bound = [ws for chat in self.chats if (ws := self._workspace(chat)) is not None]
        assert len(bound) == len(set(bound)), f"a workspace bound to two chats: {bound}"
        members = self.call(self.store.pool_members, self.pool.name)
        assert not {m.workspace_id for m in members} & set(bound), "a pool member is bound to a chat"
        assert all(m.workspace.chat_id == self.pool.holder for m in members)
        for ws, chat in self.claimed.items():
            assert self.call(self.store.workspace_facts, ws).workspace.chat_id == chat
        now = self.lc.clock()
        assert pools.shortfall(self.pool, members, now) >= 0
        counts = pools.counts(self.pool, members, now)
        assert counts.ready + counts.warming <= self.pool.size, counts

    @invariant()
    def no_owner_above_its_limits(self) -> None:
        """No count rises above the owner's limit: above it only if a lowered limit found it
        there, and then it never grows."""
        usage = self.call(self.store.usage, self.owner)
        if self.limits is not None:
            for name in ("running", "workspaces"):
                most, now, before = (
                    getattr(self.limits, name),
                    getattr(usage, name),
                    getattr(self.usage, name),
                )
                assert most is None or now <= max(most, before), (
                    f"owner {self.owner} has {now} {name} over its limit of {most} (had {before})"
                )
        self.usage = usage

    @invariant()
    def derived_equals_applied(self) -> None:
        """Rows and events agree for every chat's workspace; the runtime reports the same."""
        for chat in self.chats:
            ws = self._workspace(chat)
            if ws is None:
                continue
            derived = self._check_workspace(ws)
            if self.simulated:
                assert self.call(self.lc.state, chat) is derived

    @precondition(lambda self: self.simulated)
    @invariant()
    def no_agent_ready_answer_for_an_agent_not_ready(self) -> None:
        """The runtime never holds a workspace ``agent_ready`` (the state every answer and status
        is made from) unless the stored agent of its latest build, a succeeded start, is ready:
        an agent that stopped answering (``disconnected``) or never became ready is never
        answered ready (issue 29). Read with ``state``, which, unlike ``status``, is no activity
        (a status would push the idle deadline at every step)."""
        for chat in self.chats:
            ws = self._workspace(chat)
            if ws is None:
                continue
            if self.call(self.lc.state, chat) is not WorkspaceState.AGENT_READY:
                continue
            facts = self.call(self.store.workspace_facts, ws)
            latest, agent = facts.latest_build, facts.agent
            assert (
                latest is not None
                and latest.transition is Transition.START
                and latest.status is JobStatus.SUCCEEDED
                and agent is not None
                and agent.build_number == latest.number
                and agent.lifecycle is AgentLifecycle.READY
            ), f"{chat} answered agent_ready; stored: {latest}, {agent}"
