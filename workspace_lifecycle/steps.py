"""How a tool request proceeds, step by step, as data. Every answer is chosen here.

Theory of operation
-------------------
A request (``create_workspace``, ``start_workspace``, ``stop_workspace``,
``delete_workspace``) is a small machine of its own, :class:`Flow`, that reads the workspace's
:class:`~workspace_lifecycle.machine.Tracker` and says what to do next, as a value:

* :class:`Answer` -- the request is over; here is the tool result.
* :class:`Create` / :class:`Fire` -- execute this compare-and-set in the store, then report its
  :class:`~workspace_lifecycle.adapters.base.Outcome` with :meth:`Flow.created` /
  :meth:`Flow.fired`.
* :class:`WaitBuild` / :class:`WaitAgent` -- sleep until the condition holds for the tracker
  (the condition is a value with a pure ``holds(tracker)``), or until the timeout, then report
  with :meth:`Flow.waited`.
* :class:`Defer` -- store the request on the workspace as intent behind the build in flight
  (or withdraw the intent stored there), compare-and-set, then report with
  :meth:`Flow.deferred`: a ``wait=False`` request is answered once its intent is stored, and the
  store's write that finishes that build fires it (no process needs to stay alive for it).
* :class:`Track` -- the request is about another workspace from now on (a create lost to
  another caller's): hold that one's tracker and ask again.
* :class:`Restart` -- the chat moved to a new workspace under this request: read the chat again
  and start over from :func:`first_step` (a start never fires on a workspace no chat reaches).
* :class:`CatchUp` -- a compare-and-set lost: let the tracker catch up with the store (to
  ``seq``), then ask again.

The interpreter (:class:`~workspace_lifecycle.runtime.Lifecycle`) loops: ``step =
flow.next(tracker)``, execute it, report, repeat. It decides nothing; this module decides
everything, and does nothing: no I/O, no awaits, no clocks, no anyio. The answers' wording
comes from :mod:`~workspace_lifecycle.answers`, the table decisions from
:meth:`Tracker.decide <workspace_lifecycle.machine.Tracker.decide>`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from . import answers
from .machine import REQUEST_TRANSITION, BuildSummary, Decision, Request, Tracker
from .request_writes import create_landed
from .values import Build, Chat, JobStatus, ToolResult, Transition, Workspace, WorkspaceFacts, WorkspaceState

__all__ = [
    "Answer",
    "CatchUp",
    "Create",
    "Defer",
    "Fire",
    "Flow",
    "MAX_STATUS_WAIT_MS",
    "ReadBuild",
    "Restart",
    "Settled",
    "Step",
    "Track",
    "WaitAgent",
    "WaitBuild",
    "agent_status",
    "deferred_behind",
    "first_step",
    "reached",
    "request_transition",
    "status",
]

_LIVE = (WorkspaceState.RUNNING, WorkspaceState.AGENT_READY)
#: How often one request may follow its chat to a new workspace before it gives up.
MAX_MOVES = 3


def request_transition(request: Request) -> Transition:
    """The build transition ``request`` fires."""
    return REQUEST_TRANSITION[request]


# --- steps ------------------------------------------------------------------------------------


@attrs.frozen
class Answer:
    """The request is over: answer ``result``."""

    result: ToolResult


@attrs.frozen
class Create:
    """Create the chat's workspace (compare-and-set: the chat is still bound to ``expected``)."""

    expected_workspace_id: str | None
    parameters: Mapping[str, str] = attrs.field(factory=dict, eq=False)
    #: The warm pool to claim a ready workspace from before building one (``None``: build).
    pool: str | None = None


@attrs.frozen
class Fire:
    """Append a ``transition`` build (compare-and-set: the latest build is still ``expected``)."""

    transition: Transition
    expected_build_number: int
    parameters: Mapping[str, str] = attrs.field(factory=dict, eq=False)


@attrs.frozen
class WaitBuild:
    """Sleep until build ``number`` finished or a newer one exists (``build_timeout``)."""

    number: int

    def holds(self, tracker: Tracker) -> bool:
        return tracker.build_number > self.number or (
            tracker.build_number == self.number and tracker.status is not None and tracker.status.finished
        )


@attrs.frozen
class WaitAgent:
    """Sleep until build ``number``'s agent left ``created``/``starting`` (``agent_timeout``)."""

    number: int

    def holds(self, tracker: Tracker) -> bool:
        return (
            tracker.build_number != self.number
            or not tracker.has_agent
            or tracker.agent is None
            or not tracker.agent.pending
        )


@attrs.frozen
class Defer:
    """Store on the workspace the intent to fire a ``transition`` build once build ``number``
    ends (``None``: withdraw the intent stored there, a later request superseded it), if build
    ``number`` is still in flight (compare-and-set); report with :meth:`Flow.deferred`.

    ``result`` is the answer once the intent is stored (``wait=False``); ``None``: go on."""

    transition: Transition | None
    number: int
    result: ToolResult | None = None


@attrs.frozen
class Track:
    """From now on the request is about workspace ``workspace_id``: hold it and ask again."""

    workspace_id: str


@attrs.frozen
class ReadBuild:
    """Read build ``build_id`` from the store (how a superseded build ended, when the tracker
    did not learn it), then report it with :meth:`Flow.read`."""

    build_id: str


@attrs.frozen
class Restart:
    """The chat no longer points at the workspace this request was about: start over."""


@attrs.frozen
class CatchUp:
    """Wait until the tracker has applied every event up to ``seq``, then ask again."""

    seq: int


Step = Answer | Create | Fire | WaitBuild | WaitAgent | Defer | Track | Restart | CatchUp | ReadBuild


def first_step(
    request: Request,
    chat: Chat | None,
    owner: str,
    parameters: Mapping[str, str] | None = None,
    pool: str | None = None,
) -> Answer | Create | Track:
    """The first step of ``request`` for ``chat`` (``None`` if unknown), asked by ``owner``.

    Another owner's chat is answered exactly as an unknown one: existence is not leaked.

    >>> first_step(Request.START, None, "alice").result.text
    'chat has no workspace; use create_workspace first'
    >>> first_step(Request.CREATE, Chat("c1", "alice"), "alice")
    Create(expected_workspace_id=None, parameters={}, pool=None)
    """
    if chat is None or chat.owner != owner:
        sentence = answers.CHAT_NOT_FOUND if request is Request.CREATE else answers.NO_WORKSPACE
        return Answer(ToolResult.error(sentence))
    if chat.workspace_id is None:
        if request is Request.CREATE:
            return Create(None, dict(parameters or {}), pool)
        return Answer(ToolResult.error(answers.NO_WORKSPACE))
    return Track(chat.workspace_id)


# --- the flow of one request --------------------------------------------------------------------


@attrs.define
class Flow:
    """One request's progress: what it fired or joined, and what it waits for.

    The interpreter sets ``workspace`` (with :meth:`tracking`) whenever it holds a workspace's
    tracker for this flow. ``owner`` is who asks (stored with a deferred request).
    """

    request: Request
    wait: bool = True
    owner: str = ""
    #: Template parameters for a build this call fires (checked by the caller).
    parameters: Mapping[str, str] = attrs.field(factory=dict)
    fired_own: bool = False  # this call's compare-and-set appended the build it answers for
    workspace: Workspace | None = None
    #: The build this call answers for: ``own`` if it fired it (or lost to an identical build).
    number: int | None = None
    build_id: str | None = None
    own: bool = False
    raced: bool = False  # this call tried to fire and lost
    #: What the flow sleeps for, and whether that sleep timed out.
    waiting: WaitBuild | WaitAgent | None = None
    timed_out: bool = False
    moves: int = 0  # how often the request followed its chat to another workspace
    intents: int = 0  # how often it wrote the workspace's deferred request (bounded: no loop)
    #: A build read from the store because the tracker did not learn how it ended.
    stored: BuildSummary | None = None
    #: The warm pool a create claims from (``None``: none), and whether it did (``None``:
    #: not tried yet, or the chat had a workspace already).
    pool: str | None = None
    pooled: bool | None = None

    @property
    def verb(self) -> str:
        return self.request.value

    # --- reports from the interpreter -------------------------------------------------------

    def tracking(self, workspace: Workspace) -> None:
        """The interpreter now holds ``workspace``'s tracker for this flow."""
        if self.workspace is not None and workspace.workspace_id != self.workspace.workspace_id:
            self.moves += 1
            self.number = self.build_id = None
            self.own = self.raced = False
        self.workspace = workspace

    def restarted(self) -> None:
        """The interpreter is starting over from the chat (after :class:`Restart`)."""
        self.moves += 1
        self.workspace = None
        self.number = self.build_id = None
        self.own = self.raced = False

    def created(self, *, fired: bool, build: Build | None, facts: WorkspaceFacts, name: str) -> Step | None:
        step = self._created(fired=fired, build=build, facts=facts, name=name)
        return None if step is None else self._out(step)

    def _created(self, *, fired: bool, build: Build | None, facts: WorkspaceFacts, name: str) -> Step | None:
        """The :class:`Create` step's outcome; the interpreter tracks the workspace the chat is
        bound to now (this call's, or ``facts``' one, bound first by another caller). A create
        that lost to an identical one (:func:`create_landed`) joins its first build, over or not
        (its answer does not hang on how soon it was scheduled again); otherwise ``None``: decide
        again about the workspace bound now."""
        if not fired:
            if create_landed(facts, name):
                first = facts.latest_build
                assert first is not None
                self.number, self.build_id, self.own = first.number, first.build_id, False
                return CatchUp(facts.seq)
            return None
        assert build is not None
        self.fired_own = True
        if not self.wait:
            result = answers.not_waiting(
                self._ws(), WorkspaceState.BUILDING, build_id=build.build_id, request=self.verb, created=True
            )
            return Answer(result)
        return self._join(build.number, build.build_id, own=True)

    def claimed(self, build: Build) -> Step:
        """A :class:`Create` claimed a ready workspace of the pool, whose latest (start) build
        is ``build``: answer for it as for this call's own build, at once (it is over)."""
        self.pooled = True
        return self._join(build.number, build.build_id, own=True)

    def pool_empty(self) -> None:
        """The pool had no ready workspace: the create builds one the ordinary way."""
        self.pooled = False

    def fired(self, step: Fire, *, fired: bool, build: Build | None, facts: WorkspaceFacts) -> Step:
        """The :class:`Fire` step's outcome: this call's ``build``, or the ``facts`` that won."""
        return self._out(self._fired(step, fired=fired, build=build, facts=facts))

    def _fired(self, step: Fire, *, fired: bool, build: Build | None, facts: WorkspaceFacts) -> Step:
        if fired:
            assert build is not None
            self.fired_own = True
            if not self.wait:
                result = answers.not_waiting(
                    self._ws(), WorkspaceState.BUILDING, build_id=build.build_id, request=self.verb
                )
                return Answer(result)
            return self._join(build.number, build.build_id, own=True)
        self.raced = True
        won = facts.latest_build
        expected = step.expected_build_number
        if won is not None and won.number == expected + 1 and won.transition is step.transition:
            # Another caller fired the very build this one decided to fire: it is this call's
            # build too (same build_id), even if it already finished.
            self.number, self.build_id, self.own = won.number, won.build_id, True
            return CatchUp(facts.seq)
        if (
            not facts.workspace.deleted
            and (won.number if won else 0) == expected
            and (won is None or won.status.finished)
        ):
            # Nothing newer, yet refused: the chat points at another workspace now.
            if self.moves >= MAX_MOVES:
                return Answer(ToolResult.error(answers.WORKSPACE_REPLACED))
            return Restart()
        return CatchUp(facts.seq)

    def deferred(self, step: Defer, *, held: bool, facts: WorkspaceFacts) -> Step:
        """The :class:`Defer` step's outcome: ``held`` when build ``step.number`` was still in
        flight (the intent is stored, or withdrawn), with the ``facts`` the write left."""
        self.intents += 1
        if held and step.result is not None:
            return self._out(Answer(step.result))
        # Held: let the tracker learn this write, then decide on. Not held: the build ended
        # (and its finish acted on what was stored) or the workspace moved on: decide again.
        return CatchUp(facts.seq)

    def read(self, build: Build) -> None:
        """The :class:`ReadBuild` step's result."""
        self.stored = BuildSummary(
            build.number,
            build.build_id,
            build.transition,
            build.status,
            build.error,
            build.has_agent,
            None,
            build.details,
        )

    def refused(self, *, limit: str, used: int, allowed: int) -> Step:
        """The :class:`Create` or start :class:`Fire` was refused for the owner's limits: the
        request is over, answered as Coder's quota failure; no build was fired."""
        return self._out(Answer(answers.quota_exceeded(self.verb, limit=limit, used=used, allowed=allowed)))

    def waited(self, *, timed_out: bool) -> None:
        """The last :class:`WaitBuild` / :class:`WaitAgent` ended (``timed_out`` or not)."""
        self.timed_out = timed_out

    # --- deciding -------------------------------------------------------------------------------

    def next(self, tracker: Tracker) -> Step:
        """The next step, given the tracker as it is now."""
        return self._out(self._next(tracker))

    def _out(self, step: Step) -> Step:
        """Every answer of a call that gave parameters says whether a build of its own used them;
        every answer of a create that named a pool says whether it came from it."""
        if not isinstance(step, Answer) or step.result.is_error:
            return step
        data = step.result.data
        if self.parameters and not self.fired_own and self.pooled is not True:
            data = {**data, "parameters_applied": False}
        if self.pooled is not None:
            data = {**data, "pooled": self.pooled}
            if not self.pooled and "message" not in data:
                data["message"] = answers.pool_empty(self.pool or "")
        if data is step.result.data:
            return step
        return Answer(ToolResult.ok(data))

    def _next(self, tracker: Tracker) -> Step:
        waiting, self.waiting = self.waiting, None
        if isinstance(waiting, WaitAgent):
            return Answer(self._started(tracker, waiting.number))
        if self.number is not None:
            if waiting is None:  # joined another caller's identical build after a lost race
                if not self.wait:
                    return Answer(
                        answers.not_waiting(
                            self._ws(), tracker.state, build_id=self.build_id, request=self.verb
                        )
                    )
                return self._join(self.number, self.build_id, own=self.own)
            return self._answer_build(tracker)
        if waiting is not None and self.timed_out:  # another kind of build never ended
            return Answer(
                answers.timed_out(self.verb, own=False, build_id=tracker.build_id, status=tracker.status)
            )
        return self._decide(tracker)

    def _decide(self, tracker: Tracker) -> Step:
        request = self.request
        ws = self._ws()
        if tracker.deleted and request is not Request.CREATE:
            return Answer(ToolResult.error(answers.WORKSPACE_DELETED))
        decision = tracker.decide(request)
        if decision is Decision.REFUSE:
            return Answer(ToolResult.error(answers.NO_WORKSPACE))
        if decision is Decision.FIRE:
            if request is Request.CREATE:
                return Create(tracker.workspace_id, self.parameters, self.pool)
            return Fire(request_transition(request), tracker.build_number, self.parameters)
        if decision is Decision.ALREADY:
            return self._already(tracker)
        # A build is in flight.
        intent = self._intent(tracker, decision)
        if not self.wait:
            now = answers.not_waiting(ws, tracker.state, build_id=tracker.build_id, request=self.verb)
            if intent is not None:
                return attrs.evolve(intent, result=now)
            return Answer(now)
        if intent is not None:
            return intent
        if decision is Decision.WAIT:
            return self._join(tracker.build_number, tracker.build_id, own=self.raced)
        # WAIT_THEN_RETRY: wait for the other build to end, whatever its outcome; decide again.
        self.waiting = WaitBuild(tracker.build_number)
        return self.waiting

    def _intent(self, tracker: Tracker, decision: Decision) -> Defer | None:
        """What this request changes in the intent stored behind the build in flight, if
        anything: the latest request wins.

        * ``wait=False`` behind another kind of build: store this request (it replaces any).
        * ``wait=True`` behind another kind of build while another request is stored: store
          this one instead (it then waits, and joins the build the finish fires for it).
        * Joining a build of its own kind while another request is stored (a stop after a
          deferred start, during the stop build): withdraw it.

        A create is never stored: once a build it waits out ends, the workspace is stopped
        (nothing to create) or deleted (a new workspace, not a build of this one).
        """
        if self.request is Request.CREATE or self.intents >= MAX_MOVES:
            return None
        mine = request_transition(self.request)
        stored = tracker.deferred
        if (
            decision is Decision.WAIT_THEN_RETRY
            and stored is not mine
            and (not self.wait or stored is not None)
        ):
            return Defer(mine, tracker.build_number)
        if decision is Decision.WAIT and stored is not None:
            return Defer(None, tracker.build_number)
        return None

    def _join(self, number: int, build_id: str | None, *, own: bool) -> WaitBuild:
        """Answer for build ``number`` once it is over."""
        self.number, self.build_id, self.own = number, build_id, own
        self.timed_out = False
        self.waiting = WaitBuild(number)
        return self.waiting

    def _prefix(self) -> str:
        if self.request is Request.CREATE:
            return "workspace build failed" if self.own else "existing workspace build failed"
        return f"workspace {self.verb} build failed" if self.own else "waiting for in-progress build"

    def _known(self, tracker: Tracker, number: int) -> BuildSummary | None:
        """What is known of build ``number``: the tracker's news, or the row read from the store
        when the tracker never learnt how it ended."""
        build = tracker.build(number)
        stored = self.stored
        if (build is None or not build.finished) and stored is not None and stored.number == number:
            return stored
        return build

    def _answer_build(self, tracker: Tracker) -> Step:
        """Build ``self.number`` is over (or the wait for it timed out): answer for it."""
        number = self.number
        assert number is not None
        build = tracker.build(number)
        build_id = self.build_id or (build.build_id if build else None)
        prefix = self._prefix()
        if self.timed_out and build is not None and not build.finished:
            # The wait ran out, the build did not: say so, with what it is doing now.
            return Answer(answers.timed_out(self.verb, own=self.own, build_id=build_id, status=build.status))
        extra = _superseded(tracker, number)
        build = self._known(tracker, number)
        if build is None or not build.finished:
            # Superseded before this tracker learnt how it ended (its news was lost, or two
            # builds came since, or it was re-read from the rows): ask the store.
            if build_id is not None and self.stored is None:
                self.waiting = WaitBuild(number)  # answer for it again once it is read
                return ReadBuild(build_id)
            data = {"error": f"the outcome of build {number} is unknown: a newer build superseded it"}
            if build_id is not None:
                data["build_id"] = build_id
            return Answer(ToolResult.ok(data | extra))
        build_id = build.build_id
        self.build_id = build_id
        if build.status is not JobStatus.SUCCEEDED:
            reason = answers.build_failure_reason(build.status, build.error)
            return Answer(answers.build_failed(prefix, reason, build_id, extra, details=build.details))
        joined_create = self.request is Request.CREATE and not self.own  # Coder's existing-workspace answer
        if joined_create or self.request is Request.START or self.request is Request.CREATE:
            if extra:  # superseded: answer with what was known of its agent when the next came
                return Answer(self._started(tracker, number))
            if not joined_create and tracker.state not in _LIVE:
                return Answer(answers.build_failed(prefix, f"workspace is {tracker.state.value}", build_id))
            self.waiting = WaitAgent(number)
            return self.waiting
        return Answer(answers.done(self.verb, self._ws(), build_id=build_id, extra=extra))

    def _started(self, tracker: Tracker, number: int) -> ToolResult:
        """The wait for build ``number``'s agent ended: answer with the agent fields."""
        ws = self._ws()
        build = self._known(tracker, number)
        extra = _superseded(tracker, number)
        if build is None:
            agent: dict[str, Any] = {"agent_status": "not_ready"}
        elif extra and build.has_agent and (build.agent is None or build.agent.pending):
            # Another build came before the agent was ready: it will not become ready now.
            agent = {"agent_status": "not_ready"}
            if build.agent is not None:
                agent["lifecycle_state"] = build.agent.value
        else:
            agent = answers.agent_fields(
                has_agent=build.has_agent, lifecycle=build.agent, timed_out=self.timed_out
            )
        if number == tracker.build_number:
            agent |= reached(tracker)
        if self.request is Request.CREATE and not (self.own and self.number is not None):
            return answers.create_existing(ws, tracker.state, build_id=self.build_id, agent=agent | extra)
        return answers.done(self.verb, ws, build_id=self.build_id, agent=agent, extra=extra)

    def _already(self, tracker: Tracker) -> Step:
        """Nothing to fire: the workspace is already where the request leads."""
        ws = self._ws()
        state = tracker.state
        if not self.wait:
            return Answer(answers.not_waiting(ws, state, build_id=None, request=self.verb))
        if self.request is Request.CREATE and state is WorkspaceState.STOPPED:
            return Answer(answers.create_existing(ws, state, build_id=None, agent={}))
        if self.request in (Request.START, Request.CREATE):
            self.timed_out = False
            self.waiting = WaitAgent(tracker.build_number)
            return self.waiting
        return Answer(answers.done(self.verb, ws, build_id=None))

    def _ws(self) -> Workspace:
        assert self.workspace is not None, "the interpreter tracks a workspace before asking"
        return self.workspace


def deferred_behind(request: Request, facts: WorkspaceFacts) -> Build | None:
    """The build in flight that ``request`` with ``wait=False`` would be deferred behind (the
    :class:`Defer` step: stored on the workspace, fired by that build's finish), or ``None``.
    The flow decides, as for a real request.
    """
    flow = Flow(request, wait=False)
    flow.tracking(facts.workspace)
    step = flow.next(Tracker.from_facts(facts))
    return facts.latest_build if isinstance(step, Defer) and step.transition is not None else None


def _superseded(tracker: Tracker, number: int) -> dict[str, Any]:
    """``superseded_by`` when a newer build than ``number`` exists: the answer for ``number``
    stays true (it succeeded, or failed) and says what the workspace is doing now."""
    if tracker.build_number <= number or tracker.transition is None:
        return {}
    return {"superseded_by": {"transition": tracker.transition.value, "build_id": tracker.build_id}}


# --- the read-only status ---------------------------------------------------------------------

#: The longest a status call may wait for the workspace to settle (Coder's readiness tool: 30 s).
MAX_STATUS_WAIT_MS = 30_000


@attrs.frozen
class Settled:
    """No build in flight and no agent on its way to ready: nothing changes without a request."""

    def holds(self, tracker: Tracker) -> bool:
        if tracker.state is WorkspaceState.BUILDING:
            return False
        agent = tracker.agent
        return not (
            tracker.state is WorkspaceState.RUNNING
            and tracker.has_agent
            and agent is not None
            and agent.pending
        )


def status(tracker: Tracker | None, *, wait_expired: bool = False) -> ToolResult:
    """``workspace_status``: the state's name, why it is in it, the latest build, and whether a
    wait for it to settle ran out. Never an error: a chat without a workspace says so.

    >>> status(None).data["status"]
    'no_workspace'
    """
    if tracker is None or tracker.build_number == 0:
        return ToolResult.ok(
            {"status": "no_workspace", "reason": answers.NO_WORKSPACE, "wait_expired": wait_expired}
        )
    data: dict[str, Any] = {
        "status": tracker.state.value,
        "reason": _reason(tracker),
        "build_id": tracker.build_id,
        "wait_expired": wait_expired,
    }
    if tracker.transition is not None:
        data["transition"] = tracker.transition.value
    if tracker.state is WorkspaceState.FAILED:
        for key, value in (tracker.details or {}).items():
            data.setdefault(key, value)
    return ToolResult.ok(data | reached(tracker))


def reached(tracker: Tracker) -> dict[str, Any]:
    """``{"endpoints": {...}}``: where the workspace's agent is reached, while it runs and its
    provisioner said; else nothing (a stopped workspace is reached nowhere).

    >>> reached(Tracker("w1", "c1", state=WorkspaceState.AGENT_READY, endpoints={"http": "http://h:1"}))
    {'endpoints': {'http': 'http://h:1'}}
    """
    if tracker.state not in _LIVE or not tracker.endpoints or tracker.deleted:
        return {}
    return {"endpoints": dict(tracker.endpoints)}


def agent_status(tracker: Tracker) -> str | None:
    """The latest build's agent in a word, for a person: its lifecycle state, ``no_agent`` for
    a start build that succeeded without one, else ``None`` (no build, a deleted workspace, or
    no agent reported for the latest build).

    >>> agent_status(Tracker("w1", "c1", state=WorkspaceState.RUNNING, build_number=1, has_agent=False))
    'no_agent'
    >>> print(agent_status(Tracker("w1", "c1", state=WorkspaceState.STOPPED, build_number=2)))
    None
    """
    if tracker.build_number == 0 or tracker.deleted:
        return None
    if tracker.agent is not None:
        return tracker.agent.value
    if tracker.state in _LIVE and not tracker.has_agent:
        return "no_agent"
    return None


def _reason(tracker: Tracker) -> str:
    state = tracker.state
    transition = tracker.transition.value if tracker.transition else "unknown"
    if tracker.deleted:
        return "workspace was deleted"
    if state is WorkspaceState.BUILDING:
        status = tracker.status.value if tracker.status else "pending"
        if status == "pending":
            return f"{transition} build is pending: no provisioner has claimed it yet"
        return f"{transition} build is {status}"
    if state is WorkspaceState.FAILED:
        return f"{transition} build failed: {answers.build_failure_reason(tracker.status, tracker.error)}"
    if state is WorkspaceState.STOPPED:
        return "stop build succeeded"
    if state is WorkspaceState.AGENT_READY:
        return "agent is ready"
    if state is WorkspaceState.RUNNING:
        if not tracker.has_agent or tracker.agent is None:
            return "no_agent"
        return f"agent lifecycle is {tracker.agent.value}"
    return str(state.value)
