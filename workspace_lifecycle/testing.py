"""The testing kit: Hypothesis strategies for histories, and a stateful test over any store.

Install the ``test`` extra (it brings Hypothesis). Four tools:

* :func:`histories` draws sequences of store operations (create, request start/stop/delete,
  claim, finish with succeeded/failed/canceled, agent reports); :func:`run_history` plays one
  against a store.
* :func:`deliveries` draws a perturbed delivery of an event list (repeats and reorders), and
  :func:`applied_states` feeds one to a fresh :class:`~workspace_lifecycle.machine.Tracker` per
  workspace: SPEC's property is that the result equals :func:`derive_state` over the rows.
* :func:`make_lifecycle_machine` builds a ``RuleBasedStateMachine`` that drives a
  :class:`~workspace_lifecycle.runtime.Lifecycle` over *your* store (any async context manager
  factory), optionally with your provisioner, and checks SPEC's invariants after every step.
* :func:`check_provisioner` checks *your* provisioner against the provisioner protocol (claims
  once, finishes and reports with its lease token, renews its lease while it works, gives up on
  a build whose lease it lost, honours stop and delete); its docstring shows a pytest test.
* :func:`check_store` checks *your* store against the rules every store keeps (compare-and-sets
  that fire once, the event log, waking, leases, deadlines); raises :class:`StoreCheckError`.

Hypothesis' stateful tests are synchronous; the machine runs the store, the runtime and the
provisioner on an event loop of their own behind an ``anyio.from_thread`` blocking portal, so
any store works, on asyncio or trio.

Example (a pytest module)::

    import workspace_lifecycle as wl
    from workspace_lifecycle.testing import make_lifecycle_machine

    MemoryLifecycle = make_lifecycle_machine(lambda: wl.open_store("memory://"))
    TestMemoryLifecycle = MemoryLifecycle.TestCase

    # with your own provisioner (any ``store -> async context manager``):
    Simulated = make_lifecycle_machine(
        lambda: wl.open_store("memory://"),
        provisioner=lambda store: wl.SimulatedProvisioner(store, fail=0.3, seed=1),
    )
    TestSimulated = Simulated.TestCase

The store factory of :func:`make_lifecycle_machine` must return a *fresh, empty* store on every call (one per example), e.g.
``lambda: wl.open_store(f"sqlite:///{tmp}/{uuid.uuid4().hex}.db")``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, ExitStack
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from . import answers, pools
from ._hold_histories import IDLE as HOLD_IDLE
from ._hold_histories import HoldRules
from ._provisioner_kit import (
    LeasedProvisionerFactory,
    ProvisionerCheckError,
    ProvisionerReport,
    check_provisioner,
)
from ._store_kit import ClockedStoreFactory, StoreCheckError, StoreReport, check_store
from .adapters.base import Store
from .clock import VirtualClock
from .limits import Limits, Usage
from .machine import Tracker, derive_state
from .pools import Pool
from .runtime import Lifecycle
from .values import (
    AgentLifecycle,
    Build,
    EventKind,
    JobStatus,
    Policy,
    StoreEvent,
    ToolResult,
    Transition,
    WorkspaceState,
)

__all__ = [
    "Claim",
    "LeasedProvisionerFactory",
    "ProvisionerCheckError",
    "ProvisionerReport",
    "check_provisioner",
    "ClockedStoreFactory",
    "StoreCheckError",
    "StoreReport",
    "check_store",
    "Create",
    "Finish",
    "HistoryOp",
    "LifecycleMachine",
    "Report",
    "RequestBuild",
    "applied_states",
    "deliveries",
    "histories",
    "history_ops",
    "make_lifecycle_machine",
    "run_history",
]

T = TypeVar("T")
StoreFactory = Callable[[], AbstractAsyncContextManager[Store]]
ProvisionerFactory = Callable[[Store], AbstractAsyncContextManager[Any]]

DEFAULT_CHATS = ("c1", "c2")
OWNER = "owner"

# --- histories ---------------------------------------------------------------------------------


@attrs.frozen
class Create:
    """Bind a new workspace (with its first start build) to ``chat``, if it has none alive."""

    chat: str


@attrs.frozen
class RequestBuild:
    """Append a ``transition`` build to ``chat``'s workspace if the machine would fire one."""

    chat: str
    transition: Transition


@attrs.frozen
class Claim:
    """A provisioner claims the oldest pending build."""

    worker: str = "history"


@attrs.frozen
class Finish:
    """Finish ``chat``'s in-progress build (claiming it first if it is still pending)."""

    chat: str
    status: JobStatus
    has_agent: bool = True
    error: str | None = None


@attrs.frozen
class Report:
    """The agent of ``chat``'s workspace reports a lifecycle state (if it has an agent)."""

    chat: str
    lifecycle: AgentLifecycle


HistoryOp = Create | RequestBuild | Claim | Finish | Report

_FINAL = (JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


def history_ops(chats: Sequence[str] = DEFAULT_CHATS) -> st.SearchStrategy[HistoryOp]:
    """One store operation on one of ``chats``."""
    chat = st.sampled_from(list(chats))
    return st.one_of(
        st.builds(Create, chat),
        st.builds(RequestBuild, chat, st.sampled_from(list(Transition))),
        st.builds(Claim),
        st.builds(
            Finish,
            chat,
            st.sampled_from(_FINAL),
            st.booleans(),
            st.sampled_from([None, "boom", "quota exceeded"]),
        ),
        st.builds(Report, chat, st.sampled_from(list(AgentLifecycle))),
    )


def histories(
    chats: Sequence[str] = DEFAULT_CHATS, *, min_size: int = 0, max_size: int = 40
) -> st.SearchStrategy[list[HistoryOp]]:
    """Sequences of store operations over ``chats`` (play them with :func:`run_history`).

    >>> from hypothesis import given
    >>> @given(histories(max_size=5))
    ... def test(ops): assert all(isinstance(op, HistoryOp) for op in ops)
    >>> test()
    """
    return st.lists(history_ops(chats), min_size=min_size, max_size=max_size)


async def run_history(store: Store, ops: Iterable[HistoryOp], *, owner: str = OWNER) -> None:
    """Play ``ops`` against ``store``; an operation that does not apply now is skipped.

    Requests follow the machine's decision (a start build only from stopped or failed, ...),
    as the runtime would; everything else is the store's own compare-and-set.
    """
    from .machine import Decision, Request

    for op in ops:
        chat_id = op.chat if not isinstance(op, Claim) else None
        chat = await store.register_chat(chat_id, owner) if chat_id is not None else None
        ws_id = chat.workspace_id if chat is not None else None
        facts = await store.workspace_facts(ws_id) if ws_id is not None else None
        if isinstance(op, Create):
            if facts is None or facts.workspace.deleted:
                await store.create_workspace(op.chat, "dev", expected_workspace_id=ws_id)
        elif isinstance(op, RequestBuild):
            if facts is None:
                continue
            tracker = Tracker.from_facts(facts)
            if tracker.decide(Request(op.transition.value)) is Decision.FIRE:
                number = facts.latest_build.number if facts.latest_build else 0
                await store.request_build(facts.workspace_id, op.transition, expected_build_number=number)
        elif isinstance(op, Claim):
            await store.claim_build(op.worker)
        elif isinstance(op, Finish):
            build = facts.latest_build if facts is not None else None
            if build is None or build.status.finished:
                continue
            while build.status is JobStatus.PENDING:
                claimed = await store.claim_build("history")
                assert claimed is not None, "a pending build was not claimable"
                if claimed.build_id == build.build_id:
                    break
            await store.finish_build(build.build_id, op.status, op.error, has_agent=op.has_agent)
        elif facts is not None and facts.agent is not None and not facts.workspace.deleted:
            await store.report_agent(facts.workspace_id, op.lifecycle)


# --- delivery perturbations ----------------------------------------------------------------------


@st.composite
def _deliveries(
    draw: st.DrawFn, events: Sequence[T], reorder: bool, repeat: bool, max_repeats: int | None
) -> list[T]:
    n = len(events)
    order = list(draw(st.permutations(range(n)))) if reorder else list(range(n))
    if repeat and n:
        cap = n if max_repeats is None else max_repeats
        extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n)), max_size=cap))
        for index, position in extra:
            order.insert(min(position, len(order)), index)
    return [events[i] for i in order]


def deliveries(
    events: Sequence[T], *, reorder: bool = True, repeat: bool = True, max_repeats: int | None = None
) -> st.SearchStrategy[list[T]]:
    """A delivery of ``events``: every event at least once, some repeated, in any order.

    >>> from hypothesis import given
    >>> @given(deliveries([1, 2, 3]))
    ... def test(d): assert set(d) == {1, 2, 3}
    >>> test()
    """
    return _deliveries(list(events), reorder, repeat, max_repeats)


def applied_states(events: Iterable[StoreEvent]) -> dict[str, WorkspaceState]:
    """The state of each workspace reached by applying ``events`` to fresh trackers."""
    trackers: dict[str, Tracker] = {}
    for event in events:
        tracker = trackers.get(event.workspace_id)
        if tracker is None:
            tracker = trackers[event.workspace_id] = Tracker(event.workspace_id, event.chat_id)
        tracker.apply(event)
    return {ws: t.state for ws, t in trackers.items()}


# --- the stateful test ---------------------------------------------------------------------------

_START_STATES = frozenset({WorkspaceState.STOPPED, WorkspaceState.FAILED})
_REQUESTS = {Transition.START: "start", Transition.STOP: "stop", Transition.DELETE: "delete"}
# What each request's build leads to, and where the request has nothing to do (SPEC).
_FIRES_FROM = {
    Transition.START: _START_STATES,
    Transition.STOP: frozenset({WorkspaceState.RUNNING, WorkspaceState.AGENT_READY, WorkspaceState.FAILED}),
    Transition.DELETE: frozenset(
        {WorkspaceState.STOPPED, WorkspaceState.RUNNING, WorkspaceState.AGENT_READY, WorkspaceState.FAILED}
    ),
}


class _DeafAgents:
    """A rule of :class:`LifecycleMachine` (kept apart: a class the size of a room): a ready
    agent stops answering, as :class:`~workspace_lifecycle.process_provisioner.ProcessProvisioner`
    reports it (``disconnected``)."""

    chats: tuple[str, ...]
    owner: str
    store: Store
    lc: Lifecycle
    deferred: dict[str, Transition]

    if TYPE_CHECKING:

        @property
        def simulated(self) -> bool: ...
        def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T: ...
        def _workspace(self, chat: str) -> str | None: ...
        def _read(self, upto: int | None = None) -> list[StoreEvent]: ...
        def _queued(self, events: Iterable[StoreEvent], ws: str | None) -> list[StoreEvent]: ...

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


class LifecycleMachine(_DeafAgents, HoldRules, RuleBasedStateMachine):
    """Drives a :class:`Lifecycle` over a store and checks SPEC's invariants after every step.

    Do not subclass directly; :func:`make_lifecycle_machine` makes a configured subclass.
    Invariants:

    * for every workspace, :func:`derive_state` over its rows equals the state reached by
      applying the store's events, in order, to a :class:`Tracker`; re-delivering an applied
      event changes nothing;
    * at most one build per workspace is in flight (queued and not finished);
    * every start request from ``stopped``/``failed`` fires exactly one start build, and every
      concurrent caller is answered with that build's id; other requests fire at most one
      build of their kind;
    * requests are answered as SPEC's table says (error sentences, ``status`` with
      ``wait=False``, ``started``/``build_id``/``no_build`` with ``wait=True``);
    * no accepted request is dropped: a ``wait=False`` request deferred behind another build
      (the latest one wins: a later request of another kind replaces it, one joining the build
      in flight withdraws it) fires in the very write that finishes that build, when the table
      allows it then, even after the runtime that accepted it was dropped (``restart_runtime``).
    * warm pools (a pool of :attr:`pool_size`, filled and built by rules of their own, claimed
      by ``create_workspace(..., pool=...)``): a create claims a member when one is ready and
      says ``pooled: true``, else builds and says ``pooled: false`` with a sentence; a claimed
      workspace belongs to the claiming chat for good; no workspace is two chats', no member
      is a chat's, and the pool never holds more than its size ready or on their way.
    * on a virtual clock (``clocked``), with turns holding workspaces and time passing: no idle
      stop fires while a hold is live, nor within ``idle_stop_after`` of its end (its release,
      or its lapse when its holder died) (:class:`~workspace_lifecycle._hold_histories.HoldRules`).
    """

    store_factory: StoreFactory
    provisioner_factory: ProvisionerFactory | None = None
    backend: str = "asyncio"
    chats: tuple[str, ...] = DEFAULT_CHATS
    owner: str = OWNER
    step_timeout: float = 10.0
    build_timeout: float = 10.0
    agent_timeout: float = 1.0
    pool_size: int = 2
    clocked: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._stack = ExitStack()
        try:
            self.portal: BlockingPortal = self._stack.enter_context(start_blocking_portal(self.backend))
            self.clock = VirtualClock() if self.clocked else None
            factory: Callable[..., AbstractAsyncContextManager[Store]] = type(self).store_factory
            cm = factory(self.clock) if self.clock is not None else factory()
            self.store: Store = self._stack.enter_context(self.portal.wrap_async_context_manager(cm))
            if self.provisioner_factory is not None:
                prov = type(self).provisioner_factory(self.store)  # type: ignore[misc]
                self._stack.enter_context(self.portal.wrap_async_context_manager(prov))
            # The pool is filled by the machine's rule, not a keeper: a fill at a moment of the
            # keeper's choosing would make the histories differ between runs.
            self.pool = Pool("warm", size=self.pool_size, parameters={"image": "kit"})
            self._runtime = ExitStack()  # the Lifecycle's own: restart_runtime drops it
            self._stack.callback(lambda: self._runtime.close())
            self.lc: Lifecycle = self._open_runtime()
            for chat in self.chats:
                self.call(self.lc.register_chat, chat, owner=self.owner)
            self.cursor: int = self.call(self.store.head)
        except BaseException:
            self._stack.close()
            raise
        self.trackers: dict[str, Tracker] = {}
        self.pending: dict[str, list[StoreEvent]] = {}
        self.applied: dict[str, list[StoreEvent]] = {}
        self.in_flight: dict[str, set[int]] = {}
        self.deferred: dict[str, Transition] = {}  # workspace -> request waiting for a build
        self.limits: Limits | None = None  # the owner's stored limits (none: unlimited)
        self.usage: Usage = self.call(self.store.usage, self.owner)  # as last checked
        self.claimed: dict[str, str] = {}  # workspace -> the chat that claimed it from the pool
        self.holds = {}  # (workspace, token) -> the holds the machine took (clocked only)

    def teardown(self) -> None:
        self._stack.close()

    def _open_runtime(self) -> Lifecycle:
        lifecycle = Lifecycle(
            self.store,
            build_timeout=self.build_timeout,
            agent_timeout=self.agent_timeout,
            clock=self.clock,
            policy=Policy(idle_stop_after=HOLD_IDLE) if self.clock is not None else None,
            pools=[self.pool],
            keep_pools=False,
        )
        return self._runtime.enter_context(self.portal.wrap_async_context_manager(lifecycle))

    # --- plumbing ----------------------------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the machine's event loop, bounded by ``step_timeout``."""

        async def bounded() -> T:
            with anyio.fail_after(self.step_timeout):
                return await fn(*args, **kwargs)

        return self.portal.call(bounded)

    @property
    def simulated(self) -> bool:
        """True when the machine itself plays the provisioner (no provisioner given)."""
        return self.provisioner_factory is None

    def _read(self, upto: int | None = None) -> list[StoreEvent]:
        """Read the log from the cursor (at least up to ``upto``); check builds in flight."""
        fresh: list[StoreEvent] = []
        while True:
            batch = self.call(self.store.read_events, self.cursor)
            for event in batch:
                self._record(event)
                fresh.append(event)
                self.cursor = event.seq
            if not batch and (upto is None or self.cursor >= upto):
                return fresh

    def _record(self, event: StoreEvent) -> None:
        ws = event.workspace_id
        self.pending.setdefault(ws, []).append(event)
        flying = self.in_flight.setdefault(ws, set())
        if event.kind is EventKind.BUILD_QUEUED:
            assert not flying, f"workspace {ws}: build {event.build_number} queued while {flying} in flight"
            flying.add(event.build_number)
        elif event.kind is EventKind.BUILD_FINISHED:
            flying.discard(event.build_number)

    def _workspace(self, chat: str) -> str | None:
        row = self.call(self.store.get_chat, chat)
        return row.workspace_id if row is not None else None

    def _check_workspace(self, ws: str) -> WorkspaceState:
        """derive_state over the rows == the state the events lead to (up to the same seq)."""
        facts = self.call(self.store.workspace_facts, ws)
        self._read(facts.seq)
        tracker = self.trackers.get(ws)
        if tracker is None:
            tracker = self.trackers[ws] = Tracker(ws, facts.workspace.chat_id)
        queue = self.pending.get(ws, [])
        due = [e for e in queue if e.seq <= facts.seq]
        self.pending[ws] = [e for e in queue if e.seq > facts.seq]
        for event in due:
            tracker.apply(event)
            self.applied.setdefault(ws, []).append(event)
        derived = derive_state(facts)
        assert derived is tracker.state, (
            f"workspace {ws}: rows say {derived.value}, events say {tracker.state.value} ({tracker.snapshot()})"
        )
        return derived

    def _state(self, chat: str) -> tuple[str | None, WorkspaceState, bool]:
        ws = self._workspace(chat)
        if ws is None:
            return None, WorkspaceState.NO_WORKSPACE, False
        facts = self.call(self.store.workspace_facts, ws)
        return ws, derive_state(facts), facts.workspace.deleted

    def _queued(self, events: Iterable[StoreEvent], ws: str | None) -> list[StoreEvent]:
        return [e for e in events if e.workspace_id == ws and e.kind is EventKind.BUILD_QUEUED]

    def _latest(self, ws: str) -> Build | None:
        return self.call(self.store.workspace_facts, ws).latest_build

    # --- rules -------------------------------------------------------------------------------

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
        if state in _FIRES_FROM[transition]:
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
        status=st.sampled_from(_FINAL),
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
        if deferred is None or after is None or after not in _FIRES_FROM[deferred]:
            assert not builds, (
                f"nothing was deferred behind build {build.number} (or it may not fire): {builds}"
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

    def _refused(self, r: ToolResult) -> bool:
        """Was ``r`` refused for quota? Then the owner was at the limit it names."""
        if r.data.get("error_code") != answers.INSUFFICIENT_QUOTA:
            return False
        quota = r.data["quota"]
        assert self.limits is not None, f"refused for quota with no limits set: {r.data}"
        assert quota["allowed"] == getattr(self.limits, quota["limit"]), (quota, self.limits)
        assert quota["used"] >= quota["allowed"], quota
        assert not r.is_error and r.data["next_steps"], r.data
        return True

    def _at_running_limit(self) -> bool:
        most = None if self.limits is None else self.limits.running
        return most is not None and self.call(self.store.usage, self.owner).running >= most

    # --- warm pools ----------------------------------------------------------------------------

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
    @rule(status=st.sampled_from(_FINAL), has_agent=st.booleans())
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

    # --- invariants ----------------------------------------------------------------------------

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


def _finished_state(transition: Transition, status: JobStatus, has_agent: bool) -> WorkspaceState | None:
    """The state a build's finish leaves (``None``: deleted)."""
    if status is not JobStatus.SUCCEEDED:
        return WorkspaceState.FAILED
    if transition is Transition.DELETE:
        return None
    if transition is Transition.STOP:
        return WorkspaceState.STOPPED
    return WorkspaceState.RUNNING


def make_lifecycle_machine(
    store_factory: StoreFactory,
    *,
    provisioner: ProvisionerFactory | None = None,
    backend: str = "asyncio",
    chats: Sequence[str] = DEFAULT_CHATS,
    agent_timeout: float = 1.0,
    build_timeout: float = 10.0,
    name: str = "LifecycleStateMachine",
    clocked: bool = False,
) -> type[LifecycleMachine]:
    """A :class:`LifecycleMachine` over the stores ``store_factory()`` opens.

    ``store_factory`` returns an async context manager that yields a fresh, empty store (one
    per example). Without ``provisioner`` the machine plays the provisioner itself (claims,
    finishes with succeeded/failed/canceled, agent reports) and requests use ``wait=False``, so
    every answer is checked exactly. With ``provisioner`` (``store -> async context manager``,
    e.g. ``lambda s: wl.SimulatedProvisioner(s)``) your provisioner completes the builds and
    requests use ``wait=True``. ``backend`` is the anyio backend of the store's event loop.
    With ``clocked``, ``store_factory(clock)`` gets the :class:`VirtualClock` the store must
    stamp its times with: the chats stop after idleness, and turn holds, their ends and time
    passing join the rules (with the invariant that no idle stop fires past a hold).

    >>> import workspace_lifecycle as wl
    >>> Machine = make_lifecycle_machine(lambda: wl.open_store("memory://"))
    >>> Machine.TestCase.settings = Machine.TestCase.settings.__class__(max_examples=2, stateful_step_count=5)
    >>> Machine.TestCase().runTest()
    """
    if not chats:
        raise ValueError("make_lifecycle_machine needs at least one chat id")
    attributes: dict[str, Any] = {
        "store_factory": staticmethod(store_factory),
        "provisioner_factory": staticmethod(provisioner) if provisioner is not None else None,
        "backend": backend,
        "chats": tuple(chats),
        "agent_timeout": agent_timeout,
        "build_timeout": build_timeout,
        "clocked": clocked,
    }
    return type(name, (LifecycleMachine,), attributes)


def _dump(result: ToolResult) -> str:  # pragma: no cover - a debugging aid
    return json.dumps({"is_error": result.is_error, "data": result.data}, sort_keys=True)
