"""The chat's requests in random histories: create, start, stop and delete as a chat asks them
(one at a time, many at once, from another owner), and the owner's limits; each answer checked
against SPEC's table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from .. import answers
from ..limits import Limits
from ..values import StoreEvent, ToolResult, Transition, WorkspaceState
from .base import MachineBase
from .histories import DEFAULT_CHATS

_START_STATES = frozenset({WorkspaceState.STOPPED, WorkspaceState.FAILED})
_REQUESTS = {Transition.START: "start", Transition.STOP: "stop", Transition.DELETE: "delete"}
# What each request's build leads to, and where the request has nothing to do (SPEC).
FIRES_FROM = {
    Transition.START: _START_STATES,
    Transition.STOP: frozenset({WorkspaceState.RUNNING, WorkspaceState.AGENT_READY, WorkspaceState.FAILED}),
    Transition.DELETE: frozenset(
        {WorkspaceState.STOPPED, WorkspaceState.RUNNING, WorkspaceState.AGENT_READY, WorkspaceState.FAILED}
    ),
}


class RequestRules(MachineBase):
    """The rules of requests: what a chat (or its owner) asks the runtime."""

    @rule(data=st.data())
    def create(self, data: st.DataObject) -> None:
        """create_workspace: a new workspace from no_workspace, else the existing one reported."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        ws, state, deleted = self._state(chat)
        wait = not self.simulated
        r = self.call(self.lc.create_workspace, chat, owner=self.owner, name="dev", wait=wait)
        fresh = self._read()
        new_ws = self._workspace(chat)
        if self._refused(r):
            assert new_ws == ws and not self._queued(fresh, new_ws), fresh
            return
        if ws is None or deleted or state is WorkspaceState.FAILED:
            # As Coder's: a missing, deleted or failed workspace is replaced by a new one.
            assert new_ws != ws and new_ws is not None
            builds = self._queued(fresh, new_ws)
            assert (
                len(builds) == 1 and builds[0].transition is Transition.START and builds[0].build_number == 1
            )
            if wait:
                assert r.data.get("created") is True or r.data["error"].startswith("workspace build failed: ")
            else:
                assert r.data["status"] == "building" and r.data["build_id"] == builds[0].build_id
            return
        assert new_ws == ws
        if self.simulated:
            assert not self._queued(fresh, ws)
            assert r.data["status"] == state.value, r.data

    @rule(data=st.data(), transition=st.sampled_from(list(Transition)))
    def request(self, data: st.DataObject, transition: Transition) -> None:
        """start/stop/delete_workspace, answered as SPEC's table says."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        ws, state, deleted = self._state(chat)
        verb = _REQUESTS[transition]
        method: Callable[..., Awaitable[ToolResult]] = getattr(self.lc, f"{verb}_workspace")
        latest = self._latest(ws) if ws is not None else None
        other_in_flight = (
            state is WorkspaceState.BUILDING and latest is not None and latest.transition is not transition
        )
        if ws is not None and (
            (not self.simulated and ws in self.deferred) or (self.simulated and other_in_flight and deleted)
        ):
            return
        head = self.call(self.store.head)
        r = self.call(method, chat, owner=self.owner, wait=not self.simulated)
        fresh = self._read(head)
        builds = self._queued(fresh, ws)
        if self._refused(r):
            assert transition is Transition.START and not builds, (r.data, builds)
            return
        if ws is None:
            assert r.is_error and r.text == answers.NO_WORKSPACE and not builds
            return
        if deleted:
            assert r.is_error and r.text == answers.WORKSPACE_DELETED and not builds
            return
        if not self.simulated:
            self._check_waited(verb, transition, state, r, builds)
            return
        # wait=False: the request is decided at once; status is the state now. (An armed
        # deadline is named in words besides: the clocked histories have an idle policy.)
        assert not r.is_error, r.text
        said = {key: value for key, value in r.data.items() if key != "next_deadline"}
        if state in FIRES_FROM[transition]:
            assert len(builds) == 1 and builds[0].transition is transition, builds
            assert said == {
                "workspace_name": "dev",
                "status": "building",
                "request": verb,
                "build_id": builds[0].build_id,
            }
        elif state is WorkspaceState.BUILDING:
            assert not builds
            assert latest is not None
            assert r.data["status"] == "building" and r.data["build_id"] == latest.build_id
            if other_in_flight:
                self.deferred[ws] = transition  # stored behind the build; replaces any before
            else:
                self.deferred.pop(ws, None)  # joins the build in flight: the latest request wins
        else:
            assert not builds
            assert said == {
                "workspace_name": "dev",
                "status": state.value,
                "request": verb,
                "no_build": True,
            }

    def _check_waited(
        self,
        verb: str,
        transition: Transition,
        state: WorkspaceState,
        r: ToolResult,
        builds: list[StoreEvent],
    ) -> None:
        assert not r.is_error or r.text == answers.WORKSPACE_DELETED, r.text
        mine = [b for b in builds if b.transition is transition]
        assert len(mine) <= 1, builds
        if transition is Transition.START and state in _START_STATES:
            assert len(mine) == 1, f"start from {state.value} fired {len(mine)} start builds"
        if r.is_error:
            return
        key = answers.DONE_KEY[verb]
        if "error" in r.data:
            prefixes = (f"workspace {verb} build failed: ", "waiting for in-progress build: ")
            assert r.data["error"].startswith(prefixes), r.data
        else:
            assert r.data[key] is True and r.data["workspace_name"] == "dev", r.data
            assert ("build_id" in r.data) != ("no_build" in r.data), r.data
            if mine:
                assert r.data.get("build_id") == mine[0].build_id, (r.data, mine)

    @precondition(lambda self: self.simulated)
    @rule(data=st.data(), n=st.integers(2, 20))
    def concurrent_starts(self, data: st.DataObject, n: int) -> None:
        """n concurrent starts on a stopped/failed workspace: one build, one build_id for all."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        ws, state, deleted = self._state(chat)
        if ws is None or deleted or state not in _START_STATES:
            return
        head = self.call(self.store.head)

        async def many() -> list[ToolResult]:
            results: list[ToolResult] = []

            async def one() -> None:
                results.append(await self.lc.start_workspace(chat, owner=self.owner, wait=False))

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
            return results

        results = self.call(many)
        builds = self._queued(self._read(head), ws)
        if any(self._refused(r) for r in results):  # no slot: every caller is refused, none fires
            assert not builds and all(self._refused(r) for r in results), (builds, results)
            return
        assert len(builds) == 1 and builds[0].transition is Transition.START, builds
        assert {r.data.get("build_id") for r in results} == {builds[0].build_id}

    @rule(data=st.data(), verb=st.sampled_from(["create", "start", "stop", "delete"]))
    def other_owner(self, data: st.DataObject, verb: str) -> None:
        """Another owner's chat is answered as an unknown one, and nothing is written."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        head = self.call(self.store.head)
        method: Callable[..., Awaitable[ToolResult]] = getattr(self.lc, f"{verb}_workspace")
        r = self.call(method, chat, owner=self.owner + "-other", wait=False)
        unknown = self.call(method, "unknown-chat", owner=self.owner + "-other", wait=False)
        assert r == unknown and r.is_error
        expected = answers.CHAT_NOT_FOUND if verb == "create" else answers.NO_WORKSPACE
        assert r.text == expected and r.data == {"error": expected}
        if self.simulated:
            assert self.call(self.store.head) == head

    @rule(
        running=st.one_of(st.none(), st.integers(0, 3)),
        workspaces=st.one_of(st.none(), st.integers(0, len(DEFAULT_CHATS) + 1)),
    )
    def set_limits(self, running: int | None, workspaces: int | None) -> None:
        """Store the owner's limits (replacing the last); what it has stays, and is read now."""
        self.limits = Limits(running=running, workspaces=workspaces)
        self.call(self.lc.set_limits, self.owner, self.limits)
        self.usage = self.call(self.store.usage, self.owner)
        assert (self.usage.limits or Limits()) == self.limits, self.usage
