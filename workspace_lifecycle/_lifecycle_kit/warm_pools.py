"""Warm pools in random histories: the keeper's fill and the provisioner's build of a member
(rules of their own, so the histories are the same on every run), and creates that claim a
member (``create_workspace(..., pool=...)``)."""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from .. import pools
from ..values import AgentLifecycle, JobStatus, WorkspaceState
from .base import MachineBase
from .histories import FINAL


class PoolRules(MachineBase):
    """The rules of warm pools: fill, build a member, create from the pool."""

    @rule()
    def fill_pool(self) -> None:
        """The keeper's fill: one member more, unless the pool has its size (ready or coming)."""
        before = self.call(self.store.pool_members, self.pool.name)
        short = pools.shortfall(self.pool, before, self.lc.clock())
        made = self.call(self.store.fill_pool, self.pool)
        assert (made is not None) == (short > 0), (short, made)
        if made is not None:
            assert made.workspace.chat_id == self.pool.holder and made.workspace.owner == ""
        self._read()

    @precondition(lambda self: self.simulated)
    @rule(status=st.sampled_from(FINAL), has_agent=st.booleans())
    def build_pool_member(self, status: JobStatus, has_agent: bool) -> None:
        """A provisioner builds a pool member's start build (its agent then reports ready)."""
        members = self.call(self.store.pool_members, self.pool.name)
        building = [m for m in members if m.latest_build is not None and m.latest_build.in_flight]
        if not building:
            return
        build = min(building, key=lambda m: m.workspace_id).latest_build
        assert build is not None
        while build.status is JobStatus.PENDING:
            claimed = self.call(self.store.claim_build, "kit")
            assert claimed is not None
            if claimed.build_id == build.build_id:
                build = claimed
        self.call(self.store.finish_build, build.build_id, status, None, has_agent=has_agent)
        if status is JobStatus.SUCCEEDED and has_agent:
            self.call(self.store.report_agent, build.workspace_id, AgentLifecycle.READY)

    @rule(data=st.data())
    def create_pooled(self, data: st.DataObject) -> None:
        """create_workspace(pool=...): a ready member claimed and answered at once, else a
        build, and the answer says which."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        ws, state, deleted = self._state(chat)
        if ws is not None and ws in self.deferred:
            return
        now = self.lc.clock()
        members = self.call(self.store.pool_members, self.pool.name)
        ready = {m.workspace_id for m in members if pools.is_ready(m, now)}
        ids = {m.workspace_id for m in members}
        wait = not self.simulated
        r = self.call(self.lc.create_workspace, chat, owner=self.owner, name="dev", wait=wait, pool="warm")
        fresh = self._read()
        new_ws = self._workspace(chat)
        if self._refused(r):  # a claim, as a build, is one workspace (running) more: limits apply
            assert new_ws == ws, "a create refused for quota binds nothing"
            assert not any(self.claimed.get(m.workspace_id) for m in members), r.data
            self.usage = self.call(self.store.usage, self.owner)
            return
        if not (ws is None or deleted or state is WorkspaceState.FAILED):
            assert new_ws == ws and "pooled" not in r.data, r.data  # it has a workspace: no claim
            return
        assert new_ws is not None and new_ws != ws
        if r.data.get("pooled") is True:
            assert new_ws in ids, "a claim takes a member of the pool"
            rebuilt = [b for b in self._queued(fresh, new_ws) if b.build_number > 1]
            assert not rebuilt, "a claimed workspace is not built again"
            assert r.data.get("created") is True and r.data["workspace_name"] == f"{self.owner}/dev", r.data
            self.claimed[new_ws] = chat
            return
        assert r.data.get("pooled") is False and "no ready workspace" in r.data["message"], r.data
        if self.simulated:
            assert not ready, "a create built while a member was ready"
        builds = self._queued(fresh, new_ws)
        assert len(builds) == 1 and builds[0].build_number == 1, builds
