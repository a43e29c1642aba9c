"""The workspace state machine: the transition table, and every decision about states.

Every decision of the library lives in the pure core: this module (the table, the tracker that
applies events, what a request may do in a state), :mod:`~workspace_lifecycle.steps` (how a
request proceeds and what it answers) and :mod:`~workspace_lifecycle.writes` (what a store
write changes). The runtime and the adapters only execute what these decide.

Theory of operation
-------------------
A workspace is in one of six states (:class:`~workspace_lifecycle.values.WorkspaceState`). The
state is a pure function of the stored rows (:func:`derive_state`) and is *also* what you reach
by applying the store's events, one by one, to :class:`WorkspaceMachine`. Both paths must agree,
always; the property tests check it for random histories, including repeated and reordered
delivery.

Events come from storage, never from wishes. A request such as ``start_workspace`` does not
move the machine: :meth:`Tracker.decide` reads the transition table to decide whether the
request fires a build, waits for one, is already satisfied or is refused (the request's
:class:`~workspace_lifecycle.steps.Flow` turns that into its next step); the store then
appends the build with a compare-and-set, and the resulting ``build_queued`` event is what moves
the machine to ``building``. The request transitions (``start``, ``stop``, ``delete``,
``create``) are declared in the table so that the decision and the diagram read the same
source; they are never sent.

Stale and repeated events are filtered before the machine sees them (:meth:`Tracker.apply`):
an event whose sequence number was already applied, or that belongs to an older build than the
latest one known, changes nothing. "Already applied" is exact (the seqs applied for the latest
build, plus everything up to the seq the tracker was loaded at), not a high-water mark: under
reordered delivery an older event of the latest build (its ``build_finished`` after its agent's
report) still carries news. A build that finishes before its ``build_queued`` arrived implies
the queueing; an agent report for a build not yet known waits until that build is. Agent
reports carry their own sequence number, so a late snapshot of the agent never overwrites a
newer report. What remains must be accepted by the table; an event the table does not allow
raises :class:`InvalidEventError` (the machine is strict, as ``StateMachine`` is).

A :class:`Tracker` is data (one workspace's state and what is known of its latest build).
:class:`WorkspaceMachine` is the one declaration of the table (the diagram, validation and the
docs read it), but the hot path does not call python-statemachine's ``send``: at import,
:func:`~workspace_lifecycle.table.compile_table` (:mod:`~workspace_lifecycle.table`) reads the
class's transitions back (events, sources, targets, ``cond`` names, internal flags) into a dict
per state, :data:`TABLE`, and :meth:`Tracker.apply` and :meth:`Tracker.decide` look events up
there. Guards are plain functions of ``(tracker, event)`` declared with
:func:`~workspace_lifecycle.table.guard`: python-statemachine calls them as methods (through the
tracker bound to its model, :func:`bound_machine`), the compiled table calls the very same
functions, resolved from the ``cond`` names the transitions declare. A test proves both paths
agree on every (state, event, guard outcome). ``send`` cost ~90 µs and ~580 Python calls per
event; the lookup costs a dict access and the guards. The runtime keeps a :class:`Tracker`
only for workspaces somebody waits on or watches.

Rules for this module: no I/O, no awaits, no clocks, no imports of anyio or any driver.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
from statemachine import State, StateMachine
from statemachine.states import States

from .errors import InvalidEventError
from .table import _GUARD_ATTR as _GUARD_ATTR  # the mark guard() sets, read by its tests
from .table import Arc, Table, compile_table, guard, select
from .values import (
    DEADLINE_TRANSITION,
    AgentLifecycle,
    EventKind,
    JobStatus,
    Reason,
    StateChange,
    StoreEvent,
    Transition,
    WorkspaceFacts,
    WorkspaceState,
)

__all__ = [
    "DEADLINE_REQUEST",
    "REQUEST_TRANSITION",
    "TABLE",
    "Arc",
    "BuildSummary",
    "Decision",
    "Guard",
    "Request",
    "Tracker",
    "WorkspaceMachine",
    "bound_machine",
    "compile_table",
    "derive_state",
    "guard",
    "select",
]


def derive_state(facts: WorkspaceFacts) -> WorkspaceState:
    """The state of a workspace, read off its stored rows (SPEC "States").

    >>> from workspace_lifecycle.values import Build, Workspace
    >>> ws = Workspace("w1", "c1", "alice", "dev")
    >>> b = Build("b1", "w1", 1, Transition.STOP, JobStatus.SUCCEEDED)
    >>> derive_state(WorkspaceFacts(ws, b, None, seq=3))
    <WorkspaceState.STOPPED: 'stopped'>
    """
    build = facts.latest_build
    if facts.workspace.deleted or build is None:
        return WorkspaceState.NO_WORKSPACE
    if build.status.in_progress:
        return WorkspaceState.BUILDING
    if build.status is not JobStatus.SUCCEEDED:
        return WorkspaceState.FAILED
    if build.transition is Transition.STOP:
        return WorkspaceState.STOPPED
    if build.transition is Transition.DELETE:
        return WorkspaceState.NO_WORKSPACE
    agent = facts.agent
    if agent is not None and agent.build_number == build.number and agent.lifecycle is AgentLifecycle.READY:
        return WorkspaceState.AGENT_READY
    return WorkspaceState.RUNNING


#: A guard of the table: a pure function of the tracker and the event being applied.
Guard = Callable[["Tracker", StoreEvent], bool]


def _is_start(tracker: Tracker, ev: StoreEvent) -> bool:
    """The finished build is a start build."""
    return ev.transition is Transition.START


def _is_stop(tracker: Tracker, ev: StoreEvent) -> bool:
    """The finished build is a stop build."""
    return ev.transition is Transition.STOP


def _is_delete(tracker: Tracker, ev: StoreEvent) -> bool:
    """The finished build is a delete build."""
    return ev.transition is Transition.DELETE


def _agent_is_ready(tracker: Tracker, ev: StoreEvent) -> bool:
    """The tracker already knows the build's agent is ready (its report came first)."""
    return tracker.agent is AgentLifecycle.READY


class WorkspaceMachine(StateMachine):
    """The transition table (python-statemachine). Storage events move it; requests are read.

    The one declaration: :data:`TABLE` is compiled from it at import. Guards are declared with
    :func:`guard` (plain functions of the :class:`Tracker` and the event being applied); the
    transitions name them in ``cond``.
    """

    # As ``States.from_enum(..., use_enum_instance=True)``, but with the stored strings as state
    # ids, so the diagram and ``allowed_events`` speak the same names as the rows and the SPEC.
    s = States(
        {
            member.value: State(member.value, value=member, initial=member is WorkspaceState.NO_WORKSPACE)
            for member in WorkspaceState
        }
    )

    # --- storage events -------------------------------------------------------------------
    build_queued = s.building.from_.any()
    build_updated = s.building.to.itself(internal=True)
    build_succeeded = (
        s.building.to(s.agent_ready, cond=["is_start", "agent_is_ready"])
        | s.building.to(s.running, cond="is_start")
        | s.building.to(s.stopped, cond="is_stop")
        | s.building.to(s.no_workspace, cond="is_delete")
    )
    build_failed = s.building.to(s.failed)
    agent_ready = (
        s.running.to(s.agent_ready)
        | s.agent_ready.to.itself(internal=True)
        | s.building.to.itself(internal=True)
        | s.stopped.to.itself(internal=True)
        | s.failed.to.itself(internal=True)
    )
    agent_not_ready = (
        s.agent_ready.to(s.running)
        | s.running.to.itself(internal=True)
        | s.building.to.itself(internal=True)
        | s.stopped.to.itself(internal=True)
        | s.failed.to.itself(internal=True)
    )
    workspace_deleted = s.no_workspace.from_.any()

    # --- requests (decided from the table, never sent; the store's event moves the state) --
    # As Coder's create_workspace: a failed workspace is replaced by a new one.
    request_create = s.no_workspace.to(s.building) | s.failed.to(s.building)
    request_start = s.stopped.to(s.building) | s.failed.to(s.building)
    request_stop = s.running.to(s.building) | s.agent_ready.to(s.building) | s.failed.to(s.building)
    request_delete = (
        s.stopped.to(s.building)
        | s.running.to(s.building)
        | s.agent_ready.to(s.building)
        | s.failed.to(s.building)
    )

    is_start = guard(_is_start)
    is_stop = guard(_is_stop)
    is_delete = guard(_is_delete)
    agent_is_ready = guard(_agent_is_ready)


class _Binding:
    """The model of a thread's shared :class:`WorkspaceMachine`: forwards ``state`` to the
    tracker being applied or decided for."""

    __slots__ = ("tracker",)

    def __init__(self) -> None:
        self.tracker: Tracker | _Unbound = _UNBOUND

    @property
    def state(self) -> WorkspaceState:
        return self.tracker.state

    @state.setter
    def state(self, value: WorkspaceState) -> None:
        if self.tracker is _UNBOUND:
            raise RuntimeError("the shared WorkspaceMachine moved while bound to no tracker")
        self.tracker.state = value


class _Unbound:
    """What the shared machine's model holds between calls (a valid state, no agent)."""

    state = WorkspaceState.NO_WORKSPACE
    agent = None


_UNBOUND = _Unbound()
_local = threading.local()


@contextmanager
def bound_machine(tracker: Tracker) -> Iterator[WorkspaceMachine]:
    """This thread's :class:`WorkspaceMachine`, its model bound to ``tracker`` for the block.

    python-statemachine instances are not shared across threads: each thread has its own.
    """
    sm: WorkspaceMachine | None = getattr(_local, "machine", None)
    if sm is None:
        sm = _local.machine = WorkspaceMachine(model=_Binding(), state_field="state")
    sm.model.tracker = tracker
    try:
        yield sm
    finally:
        sm.model.tracker = _UNBOUND


#: The table the hot path uses, compiled once from :class:`WorkspaceMachine`.
TABLE: Table = compile_table(WorkspaceMachine)
_ALLOWED = {state: frozenset(by_event) for state, by_event in TABLE.items()}


#: The request transitions, by the request's name; each one is an event of the table.
class Request(enum.Enum):
    CREATE = "create"
    START = "start"
    STOP = "stop"
    DELETE = "delete"


#: The table's event for each request.
_REQUEST_EVENT = {request: f"request_{request.value}" for request in Request}

#: The build transition each request fires.
REQUEST_TRANSITION = {
    Request.CREATE: Transition.START,
    Request.START: Transition.START,
    Request.STOP: Transition.STOP,
    Request.DELETE: Transition.DELETE,
}

#: The request a deadline makes, by its reason: the request that fires the deadline's build
#: (:data:`~workspace_lifecycle.values.DEADLINE_TRANSITION`), so the table decides whether it
#: still may.
DEADLINE_REQUEST = {
    reason: next(r for r in (Request.STOP, Request.DELETE) if REQUEST_TRANSITION[r] is transition)
    for reason, transition in DEADLINE_TRANSITION.items()
}


class Decision(enum.Enum):
    """What a request does in the current state."""

    FIRE = "fire"  # append one build (compare-and-set on the latest build)
    WAIT = "wait"  # a build of the requested kind is in flight: wait for it
    WAIT_THEN_RETRY = "wait_then_retry"  # another kind of build is in flight: wait, decide again
    ALREADY = "already"  # nothing to do: the workspace is already where the request leads
    REFUSE = "refuse"  # the request has no transition from here (e.g. start with no workspace)


# Where each request leads when it has nothing to fire.
_SATISFIED = {
    Request.CREATE: frozenset({WorkspaceState.RUNNING, WorkspaceState.AGENT_READY, WorkspaceState.STOPPED}),
    Request.START: frozenset({WorkspaceState.RUNNING, WorkspaceState.AGENT_READY}),
    Request.STOP: frozenset({WorkspaceState.STOPPED}),
    Request.DELETE: frozenset({WorkspaceState.NO_WORKSPACE}),
}

_EVENT_FOR_STATUS = {
    JobStatus.SUCCEEDED: "build_succeeded",
    JobStatus.FAILED: "build_failed",
    JobStatus.CANCELED: "build_failed",
}


@attrs.frozen
class BuildSummary:
    """What a tracker knows of one build: the latest, or the one before it (``Tracker.previous``)."""

    number: int
    build_id: str | None
    transition: Transition | None
    status: JobStatus | None
    error: str | None
    has_agent: bool | None
    agent: AgentLifecycle | None
    details: Mapping[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status is not None and self.status.finished


@attrs.define(eq=False)
class Tracker:
    """One workspace's machine plus what it knows of the store (the machine's model).

    Create it from stored facts with :meth:`from_facts`; feed it events with :meth:`apply`.
    """

    workspace_id: str
    chat_id: str
    state: WorkspaceState = WorkspaceState.NO_WORKSPACE
    seq: int = 0  # last applied sequence number
    build_number: int = 0  # latest build known
    build_id: str | None = None
    transition: Transition | None = None
    status: JobStatus | None = None
    error: str | None = None
    details: Mapping[str, Any] | None = None
    reason: Reason | None = None  # why the latest build was fired
    has_agent: bool | None = None
    agent: AgentLifecycle | None = None
    agent_seq: int = 0
    endpoints: Mapping[str, str] = attrs.field(factory=dict)  # where the latest agent is reached
    deleted: bool = False
    #: A request stored on the workspace to fire once the latest build (in flight) ends
    #: (:class:`~workspace_lifecycle.values.Deferred`): news for later requests, which may
    #: withdraw or replace it; the write that finishes the build acts on it.
    deferred: Transition | None = None
    deferred_seq: int = 0
    #: The build before the latest one, as it was when the latest was queued: a request that
    #: waited for it still answers for it after another caller's build superseded it.
    previous: BuildSummary | None = None
    # Everything up to ``floor`` is in the facts the tracker was loaded from; ``_applied`` holds
    # the seqs applied since for the latest build (older builds' events are stale anyway), and
    # ``_early`` agent reports for builds not yet known (reordered delivery).
    floor: int = attrs.field(init=False, repr=False)
    _applied: set[int] = attrs.field(init=False, repr=False, factory=set)
    _early: list[StoreEvent] = attrs.field(init=False, repr=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self.floor = self.seq

    @classmethod
    def from_facts(cls, facts: WorkspaceFacts) -> Tracker:
        build = facts.latest_build
        agent = facts.agent
        if agent is not None and (build is None or agent.build_number != build.number):
            agent = None
        intent = facts.workspace.deferred
        if intent is not None and (build is None or intent.behind != build.number or build.status.finished):
            intent = None
        return cls(
            workspace_id=facts.workspace_id,
            chat_id=facts.workspace.chat_id,
            state=derive_state(facts),
            seq=facts.seq,
            build_number=build.number if build else 0,
            build_id=build.build_id if build else None,
            transition=build.transition if build else None,
            status=build.status if build else None,
            error=build.error if build else None,
            details=build.details if build else None,
            reason=build.reason if build else None,
            has_agent=build.has_agent if build else None,
            agent=agent.lifecycle if agent else None,
            agent_seq=facts.seq if agent else 0,
            endpoints=dict(agent.endpoints) if agent else {},
            deleted=facts.workspace.deleted,
            deferred=intent.transition if intent else None,
            deferred_seq=facts.seq if intent else 0,
        )

    # --- applying storage events ----------------------------------------------------------

    def is_stale(self, ev: StoreEvent) -> bool:
        """Already applied, for an older build, or after the workspace was deleted."""
        return (
            ev.seq <= self.floor
            or ev.seq in self._applied
            or ev.build_number < self.build_number
            or self.deleted
        )

    def apply(self, ev: StoreEvent) -> StateChange | None:
        """Apply one event; return the state change it caused, if any.

        Raises :class:`InvalidEventError` for a fresh event the table does not accept.
        """
        if ev.workspace_id != self.workspace_id:
            raise InvalidEventError(
                f"event {ev.seq} is for workspace {ev.workspace_id}, not {self.workspace_id}"
            )
        if ev.kind is EventKind.CHAT_BOUND or ev.kind is EventKind.DEADLINE_SET:
            if ev.kind is EventKind.CHAT_BOUND and ev.seq > self.seq:
                self.chat_id = ev.chat_id  # a pooled workspace claimed by a chat
            self.seq = max(self.seq, ev.seq)  # news for the chat and the scheduler, not the state
            return None
        if ev.kind is EventKind.REQUEST_DEFERRED:
            self._apply_deferred(ev)
            return None
        if self.is_stale(ev):
            self._late_news(ev)
            return None
        before = self.state
        if ev.kind is EventKind.AGENT_UPDATED and ev.build_number > self.build_number:
            if all(e.seq != ev.seq for e in self._early):
                self._early.append(ev)  # its build's events are still on their way
            return None
        self._apply_one(ev)
        if self._early and not self.deleted:
            # Agent reports that arrived before their build: apply those whose build is now known.
            due = [e for e in self._early if e.build_number <= self.build_number]
            self._early = [e for e in self._early if e.build_number > self.build_number]
            for early in sorted(due, key=lambda e: e.seq):
                if not self.is_stale(early):
                    self._apply_one(early)
        if self.state is before:
            return None
        return StateChange(
            chat_id=self.chat_id,
            workspace_id=self.workspace_id,
            build_number=self.build_number,
            from_state=before,
            to_state=self.state,
            event=ev.kind,
            seq=ev.seq,
            at=ev.at,
            reason=self.reason,
            endpoints=self.endpoints,
        )

    def _apply_deferred(self, ev: StoreEvent) -> None:
        """A request stored behind the build in flight (or withdrawn): news, not state. It
        counts only for the latest build while it runs (its finish acted on it) and only if it is
        newer than what the tracker knows."""
        self.seq = max(self.seq, ev.seq)
        if (
            ev.build_number == self.build_number
            and self.status is not None
            and not self.status.finished
            and ev.seq > max(self.deferred_seq, self.floor)
        ):
            self.deferred, self.deferred_seq = ev.transition, ev.seq

    def _late_news(self, ev: StoreEvent) -> None:
        """How the previous build ended, delivered after the next build's news (reordered): stale
        for the machine, but a request that waited for it answers as it ended, superseded or not."""
        prev = self.previous
        if (
            prev is None
            or prev.finished
            or ev.kind is not EventKind.BUILD_FINISHED
            or ev.build_number != prev.number
            or ev.status is None
            or not ev.status.finished
        ):
            return
        starts_agent = ev.status is JobStatus.SUCCEEDED and ev.transition is Transition.START
        self.previous = attrs.evolve(
            prev,
            status=ev.status,
            error=ev.error,
            details=ev.details,
            has_agent=ev.has_agent,
            agent=AgentLifecycle.CREATED if starts_agent and ev.has_agent else prev.agent,
        )

    def _apply_one(self, ev: StoreEvent) -> None:
        kind = ev.kind
        if kind is EventKind.AGENT_UPDATED:
            self._apply_agent(ev)
        elif kind is EventKind.WORKSPACE_DELETED:
            self._send("workspace_deleted", ev)
            self.deleted = True
            self._early.clear()
        else:
            self._apply_build(ev)
        if ev.build_number == self.build_number:
            self._applied.add(ev.seq)
        self.seq = max(self.seq, ev.seq)

    def _apply_build(self, ev: StoreEvent) -> None:
        newer = ev.build_number > self.build_number
        if newer:
            # A new build: queued (or, delivered out of order, already further along).
            self.previous = self.latest if self.build_number else None
            self.build_number = ev.build_number
            self.build_id = ev.build_id
            self.transition = ev.transition
            self.status = JobStatus.PENDING
            self.error = None
            self.details = None
            self.reason = ev.reason
            self.has_agent = self.agent = None
            self.agent_seq = 0
            self.endpoints = {}
            self.deferred = None
            self._applied.clear()
            self._send("build_queued", ev)
        elif self.status is not None and self.status.finished:
            return  # a repeat of this build's news, or older news than its end
        if ev.kind is EventKind.BUILD_QUEUED:
            return
        status = ev.status
        if status is None:
            raise InvalidEventError(f"event {ev.seq} ({ev.kind.value}) carries no job status")
        if ev.kind is EventKind.BUILD_UPDATED:
            if status.in_progress:
                self.status = status
                self._send("build_updated", ev)
                return
            raise InvalidEventError(f"event {ev.seq}: build_updated with final status {status.value}")
        if status.in_progress:
            raise InvalidEventError(f"event {ev.seq}: build_finished with status {status.value}")
        self.status = status
        self.error = ev.error
        self.details = ev.details
        self.deferred = None  # the write that finished the build acted on it
        if status is JobStatus.SUCCEEDED and ev.transition is Transition.START:
            self.has_agent = ev.has_agent
            if ev.seq > self.agent_seq:  # a reordered newer agent report wins over the snapshot
                self.agent = AgentLifecycle.CREATED if ev.has_agent else None
                self.agent_seq = ev.seq
        self._send(_EVENT_FOR_STATUS[status], ev)

    def _apply_agent(self, ev: StoreEvent) -> None:
        if ev.agent is None:
            raise InvalidEventError(f"event {ev.seq} (agent_updated) carries no lifecycle state")
        if ev.build_number > self.build_number:
            raise InvalidEventError(
                f"event {ev.seq}: agent report for build {ev.build_number} before that build was known"
            )
        if ev.seq > self.agent_seq:
            self.agent, self.agent_seq, self.endpoints = ev.agent, ev.seq, ev.endpoints or {}
        self._send("agent_ready" if self.agent is AgentLifecycle.READY else "agent_not_ready", ev)

    def _send(self, event: str, ev: StoreEvent) -> None:
        """Move along the arc ``event`` takes from this state (the compiled :data:`TABLE`)."""
        arc = select(TABLE, self, event, ev)
        if arc is not None:
            self.state = arc.target
            return
        raise InvalidEventError(
            f"event {ev.seq} ({event}, build {ev.build_number}) is not allowed in state {self.state.value}"
        )

    # --- deciding requests ----------------------------------------------------------------

    def decide(self, request: Request) -> Decision:
        """Decide a request from the transition table and the build in flight.

        >>> t = Tracker("w1", "c1", state=WorkspaceState.STOPPED)
        >>> t.decide(Request.START)
        <Decision.FIRE: 'fire'>
        """
        state = self.state
        if state is WorkspaceState.BUILDING:
            # A build of the kind the request fires is joined; another kind is waited out, then
            # the request is decided again (a create during a delete build creates afresh).
            if self.transition is REQUEST_TRANSITION[request]:
                return Decision.WAIT
            return Decision.WAIT_THEN_RETRY
        if state in _SATISFIED[request]:
            return Decision.ALREADY
        if self.deleted and request is not Request.CREATE:
            return Decision.REFUSE
        return Decision.FIRE if _REQUEST_EVENT[request] in _ALLOWED[state] else Decision.REFUSE

    def allowed_events(self) -> frozenset[str]:
        """The ids of the table's events (storage events and requests) allowed in this state
        (whatever their guards say, as python-statemachine's ``allowed_events``)."""
        return _ALLOWED[self.state]

    @property
    def latest(self) -> BuildSummary:
        """What is known of the latest build."""
        return BuildSummary(
            self.build_number,
            self.build_id,
            self.transition,
            self.status,
            self.error,
            self.has_agent,
            self.agent,
            self.details,
        )

    def build(self, number: int) -> BuildSummary | None:
        """What is known of build ``number``: the latest or the one before it, else ``None``."""
        if number == self.build_number:
            return self.latest
        previous = self.previous
        return previous if previous is not None and previous.number == number else None

    def snapshot(self) -> dict[str, Any]:
        """A plain summary, for logs and the CLI."""
        return {
            "workspace_id": self.workspace_id,
            "state": self.state.value,
            "build_number": self.build_number,
            "transition": self.transition.value if self.transition else None,
            "status": self.status.value if self.status else None,
            "agent": self.agent.value if self.agent else None,
            "seq": self.seq,
        }
