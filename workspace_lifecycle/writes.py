"""What each store write changes, decided from the rows it read. Pure: the stores persist it.

Theory of operation
-------------------
Every write of the store interface is a read, a decision and a write inside one transaction.
The read and the write are the adapter's (SQL, dictionaries); the decision is here, once, for
every adapter: whether a compare-and-set holds, which rows a finished build changes, which
events the write appends. An adapter reads the rows its transaction locked, calls one function
of this module, and persists the :class:`Write` it returns, numbering the events in commit
order. It repeats no rule.

The functions take everything as values: the ids of the rows to insert (the adapter makes
them) and the wall-clock time to stamp on the events. No I/O, no clocks, no awaits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs

from . import buildlogs, checks, deadlines, pools
from .buildlogs import BuildLog
from .endpoints import check_endpoints
from .errors import (
    BuildConflictError,
    HoldLostError,
    LeaseLostError,
    NotFoundError,
    OwnershipError,
    QuotaExceededError,
)
from .limits import Limits, OwnerRow, Usage, counts_as_running, over_limit
from .machine import DEADLINE_REQUEST, Decision, Request, Tracker, derive_state
from .values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    Deadline,
    Deferred,
    EventKind,
    Hold,
    JobStatus,
    Policy,
    Reason,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
    WorkspaceState,
    check_parameters,
)

__all__ = [
    "Write",
    "append_log",
    "applied",
    "build_moved_on",
    "check_lease_seconds",
    "claim_build",
    "claim_pooled",
    "create_landed",
    "create_workspace",
    "defer_request",
    "deferral_holds",
    "expire_lease",
    "fill_pool",
    "finish_build",
    "fire_deadline",
    "hold_turn",
    "parse_lifecycle",
    "parse_status",
    "check_quota",
    "rebound",
    "register_chat",
    "release_turn",
    "renew_lease",
    "report_agent",
    "request_build",
    "set_limits",
    "touch",
    "warn_deadline",
]


@attrs.frozen
class Write:
    """The rows one write changes and the events it appends (their ``seq`` is the store's to set).

    ``workspace`` is inserted or updated (a new workspace, or one marked deleted); ``chat`` is
    the chat row as it is after the write (bound to a new workspace, or with a new policy);
    a workspace's ``deadline`` is part of its row; ``build`` is inserted when
    ``queued`` (it becomes its workspace's latest build and waits to be claimed) and updated
    otherwise; ``agent`` is upserted (the agent a start build produced, or its new lifecycle);
    ``log`` is a build's log, upserted; ``owner`` is an owner's row (its limits), upserted. ``then`` is a build queued by the same write after
    ``build`` finished (the request deferred behind it): inserted, it becomes the latest.
    """

    events: tuple[StoreEvent, ...]
    build: Build | None = None
    queued: bool = False
    then: Build | None = None
    workspace: Workspace | None = None
    chat: Chat | None = None
    agent: Agent | None = None
    #: A build's log as it is after the write (upserted whole; it changes no state).
    log: BuildLog | None = None
    #: An owner's row as it is after the write (upserted whole; it changes no state).
    owner: OwnerRow | None = None


def applied(facts: WorkspaceFacts, write: Write, head: int) -> WorkspaceFacts:
    """The facts ``facts`` become once ``write`` (decided on them) committed with its last event
    at ``head``: what every store persists, applied to the values instead of the rows.

    A queued build becomes the latest; an update of the latest build replaces it; the
    workspace and the agent are replaced when the write carries them.
    """
    latest, build = facts.latest_build, write.build
    if build is not None and (write.queued or (latest is not None and latest.build_id == build.build_id)):
        latest = build
    if write.then is not None:
        latest = write.then
    return WorkspaceFacts(
        write.workspace or facts.workspace,
        latest,
        write.agent if write.agent is not None else facts.agent,
        head if write.events else facts.seq,
    )


def _event(
    kind: EventKind, ws: Workspace, build: Build | None, *, at: float, build_number: int = 0, **fields: object
) -> StoreEvent:
    return StoreEvent.about(kind, ws, build, seq=0, at=at, build_number=build_number, **fields)


def _rearm(
    ws: Workspace, armed: Deadline | None, *, at: float, build_number: int
) -> tuple[Workspace, StoreEvent]:
    """``ws`` with ``armed`` as its deadline, and the ``deadline_set`` event that says so."""
    return attrs.evolve(ws, deadline=armed), _event(
        EventKind.DEADLINE_SET,
        ws,
        None,
        at=at,
        build_number=build_number,
        deadline=armed.at if armed else None,
        reason=armed.reason if armed else None,
        warn_at=armed.warn_at if armed else None,
    )


def register_chat(
    existing: Chat | None, chat_id: str, owner: str, *, policy: Policy | None, default: Policy
) -> Chat | None:
    """The chat row to write, or ``None`` if the stored one stays as it is.

    A new chat gets ``policy`` or, without one, ``default``; an existing chat keeps its policy
    unless ``policy`` is given. Another owner's chat raises :class:`OwnershipError`.

    >>> register_chat(None, "c1", "alice", policy=None, default=Policy(idle_stop_after=60)).policy
    Policy(idle_stop_after=60, delete_after_stopped=None, warn_before=None)
    """
    if existing is None:
        return Chat(chat_id, owner, policy=policy if policy is not None else default)
    if existing.owner != owner:
        raise OwnershipError(f"chat {chat_id!r} is registered to another owner")
    if policy is None or policy == existing.policy:
        return None
    return attrs.evolve(existing, policy=policy)


def create_workspace(
    chat: Chat | None,
    *,
    expected_workspace_id: str | None,
    workspace_id: str,
    build_id: str,
    name: str,
    at: float,
    parameters: Mapping[str, str] | None = None,
    replaced: WorkspaceFacts | None = None,
    usage: Usage | None = None,
    limits: Limits | None = None,
) -> Write | None:
    """Bind ``chat`` to a new workspace with its first (start) build, or ``None`` if the
    compare-and-set fails: the chat is no longer bound to ``expected_workspace_id``, or the
    workspace it would replace (``replaced``, read in the same transaction) runs or is being
    started: it would run bound to no chat, out of every tool's reach.

    With the owner's ``usage`` (read in the same transaction), a workspace more and a running
    one more must fit its limits (its stored ones over ``limits``, the runtime's default), or
    :class:`~workspace_lifecycle.errors.QuotaExceededError` is raised and nothing is written.

    >>> chat = Chat("c1", "alice")
    >>> w = create_workspace(chat, expected_workspace_id=None, workspace_id="w1", build_id="b1", name="dev", at=0)
    >>> [e.kind.value for e in w.events], w.chat.workspace_id
    (['chat_bound', 'build_queued'], 'w1')
    >>> create_workspace(chat, expected_workspace_id="w0", workspace_id="w1", build_id="b1", name="dev", at=0)
    """
    if chat is None:
        raise NotFoundError("no such chat")
    if chat.workspace_id != expected_workspace_id:
        return None
    if expected_workspace_id is not None and (replaced is None or not _replaceable(replaced)):
        return None
    check_quota(usage, limits, adds_running=True, adds_workspace=True)
    ws = Workspace(workspace_id, chat.chat_id, chat.owner, name)
    build = Build(
        build_id,
        workspace_id,
        1,
        Transition.START,
        JobStatus.PENDING,
        parameters=check_parameters(parameters),
    )
    return Write(
        events=(
            _event(EventKind.CHAT_BOUND, ws, None, at=at),
            _event(EventKind.BUILD_QUEUED, ws, build, at=at, status=JobStatus.PENDING),
        ),
        build=build,
        queued=True,
        workspace=ws,
        chat=attrs.evolve(chat, workspace_id=workspace_id),
    )


def _replaceable(facts: WorkspaceFacts) -> bool:
    """May a chat leave this workspace for a new one? Only if, unbound, it costs nothing more:
    it is stopped, failed or deleted, or its build in flight stops or deletes it. A workspace
    that runs, or whose start build is in flight, would run bound to no chat."""
    state = derive_state(facts)
    if state is WorkspaceState.BUILDING:
        latest = facts.latest_build
        return latest is not None and latest.transition is not Transition.START
    return state not in (WorkspaceState.RUNNING, WorkspaceState.AGENT_READY)


def request_build(
    facts: WorkspaceFacts,
    *,
    chat: Chat | None,
    transition: Transition,
    expected_build_number: int,
    build_id: str,
    at: float,
    parameters: Mapping[str, str] | None = None,
    reason: Reason = Reason.REQUEST,
    usage: Usage | None = None,
    limits: Limits | None = None,
) -> Write | None:
    """Append build ``expected_build_number + 1``, or ``None`` if the compare-and-set fails.

    It holds while the workspace is not deleted, its latest build is still number
    ``expected_build_number`` and finished, and, for a start build, its ``chat`` (the row as
    read in the same transaction) still points at it
    to it: a workspace its chat has replaced may be stopped or deleted (that only saves money)
    but never started again, or it would run bound to no chat, out of every tool's reach.

    A deadline armed on the workspace is disarmed: the build's end arms the next one.

    A start with the owner's ``usage`` (read in the same transaction) must fit its limits
    (see :func:`check_quota`) unless the workspace already counts as running.
    """
    latest = facts.latest_build
    number = latest.number if latest else 0
    if (
        facts.workspace.deleted
        or number != expected_build_number
        or (latest is not None and latest.status.in_progress)
        or (transition is Transition.START and (chat is None or chat.workspace_id != facts.workspace_id))
    ):
        return None
    if transition is Transition.START:
        check_quota(usage, limits, adds_running=not counts_as_running(latest), adds_workspace=False)
    build = Build(
        build_id,
        facts.workspace_id,
        number + 1,
        transition,
        JobStatus.PENDING,
        parameters=check_parameters(parameters),
        reason=reason,
    )
    events = [_event(EventKind.BUILD_QUEUED, facts.workspace, build, at=at, status=JobStatus.PENDING)]
    workspace = None
    if facts.workspace.deadline is not None:
        workspace, disarmed = _rearm(facts.workspace, None, at=at, build_number=build.number)
        events.append(disarmed)
    agent = facts.agent
    if transition is not Transition.START and agent is not None and agent.endpoints:
        # A workspace on its way down is reached nowhere: its endpoints go with this build.
        agent = attrs.evolve(agent, endpoints={})
    else:
        agent = None
    return Write(events=tuple(events), build=build, queued=True, workspace=workspace, agent=agent)


def check_quota(
    usage: Usage | None, limits: Limits | None, *, adds_running: bool, adds_workspace: bool
) -> None:
    """Raise :class:`~workspace_lifecycle.errors.QuotaExceededError` when a write that adds a
    workspace (``adds_workspace``) or a running one (``adds_running``) would take the owner of
    ``usage`` over its limits (see :mod:`workspace_lifecycle.limits`); ``usage`` ``None``: the
    write was decided without the owner's rows (no check).

    >>> check_quota(Usage("al", running=1), Limits(running=1), adds_running=True, adds_workspace=False)
    Traceback (most recent call last):
    ...
    workspace_lifecycle.errors.QuotaExceededError: owner 'al' has 1 running workspaces of the 1 allowed
    """
    if usage is None:
        return
    quota = over_limit(usage, limits, adds_running=adds_running, adds_workspace=adds_workspace)
    if quota is not None:
        raise QuotaExceededError(quota.owner, quota.limit, quota.used, quota.allowed)


def set_limits(owner: str, limits: Limits) -> Write:
    """Store ``limits`` for ``owner`` (replacing any stored before); no event: limits change no
    workspace's state, and are read where they are checked.

    >>> set_limits("alice", Limits(running=4)).owner
    OwnerRow(owner='alice', limits=Limits(running=4, workspaces=None))
    """
    if not isinstance(limits, Limits):
        raise ValueError(f"limits must be a workspace_lifecycle.Limits, not {limits!r}")
    return Write(events=(), owner=OwnerRow(owner, limits))


def fill_pool(
    holder: Chat | None,
    members: Sequence[WorkspaceFacts],
    pool: pools.Pool,
    *,
    workspace_id: str,
    build_id: str,
    at: float,
) -> Write | None:
    """One more workspace for ``pool`` (its ``members`` as read in the same transaction), or
    ``None`` when it has its size already (ready or on their way): a new workspace bound to the
    pool's ``holder`` row (inserted with the first fill) with its start build, queued like any
    other, and born with the pool's time to live (:func:`~workspace_lifecycle.pools.ttl_deadline`).

    >>> w = fill_pool(None, [], pools.Pool("p", size=1), workspace_id="w1", build_id="b1", at=0)
    >>> [e.kind.value for e in w.events], w.chat.chat_id == pools.holder_id("p"), w.workspace.owner
    (['chat_bound', 'build_queued'], True, '')
    >>> fill_pool(None, [], pools.Pool("p", size=0), workspace_id="w1", build_id="b1", at=0)
    """
    if pools.shortfall(pool, members, at) == 0:
        return None
    chat = Chat(pool.holder, "", None) if holder is None else None
    ws = Workspace(workspace_id, pool.holder, "", pool.name, deadline=pools.ttl_deadline(pool.ttl, at))
    build = Build(build_id, workspace_id, 1, Transition.START, JobStatus.PENDING, parameters=pool.parameters)
    events = [
        _event(EventKind.CHAT_BOUND, ws, None, at=at),  # a watcher of every chat follows it from here
        _event(EventKind.BUILD_QUEUED, ws, build, at=at, status=JobStatus.PENDING),
    ]
    if ws.deadline is not None:
        events.append(_rearm(ws, ws.deadline, at=at, build_number=1)[1])
    return Write(events=tuple(events), build=build, queued=True, workspace=ws, chat=chat)


def claim_pooled(
    chat: Chat | None,
    members: Sequence[WorkspaceFacts],
    *,
    pool: str,
    expected_workspace_id: str | None,
    replaced: WorkspaceFacts | None,
    name: str,
    at: float,
    usage: Usage | None = None,
    limits: Limits | None = None,
) -> Write | None:
    """Bind ``chat`` to a ready member of ``pool`` (:func:`~workspace_lifecycle.pools.choose`),
    or ``None``: the compare-and-set of :func:`create_workspace` fails (the chat is no longer
    bound to ``expected_workspace_id``), or no member is ready. The member takes the chat's
    id, owner and ``name``, and the deadline the chat's policy arms for a running workspace
    instead of its time to live; the ``chat_bound`` event names the pool.

    The member is read in the same transaction, so two claims never take the same one: the
    second reads it bound to the first chat (no longer a member) and takes another.
    """
    if chat is None:
        raise NotFoundError("no such chat")
    if chat.workspace_id != expected_workspace_id:
        return None
    if expected_workspace_id is not None and (replaced is None or not _replaceable(replaced)):
        return None
    member = pools.choose(members, chat.chat_id, at)
    if member is None:
        return None
    # The claimed workspace becomes one more of the owner's, running: its limits apply.
    check_quota(usage, limits, adds_running=True, adds_workspace=True)
    latest = member.latest_build
    number = latest.number if latest else 0
    armed = deadlines.pushed_by_activity(derive_state(member), chat.policy, at)
    ws = attrs.evolve(member.workspace, chat_id=chat.chat_id, owner=chat.owner, name=name)
    ws, rearmed = _rearm(ws, armed, at=at, build_number=number)
    bound = _event(EventKind.CHAT_BOUND, ws, None, at=at, build_number=number, details={"pool": pool})
    return Write(events=(bound, rearmed), workspace=ws, chat=attrs.evolve(chat, workspace_id=ws.workspace_id))


# --- after a write that may or may not have committed ---------------------------------------
#
# A write that failed on a transient error may have committed (an error after COMMIT). Every
# write is a compare-and-set, so its writer re-reads the rows and decides with these: the rows
# moved on (this write landed, or another caller's did: either way the compare-and-set would
# now fail), or they did not (the same write again is safe).


def build_moved_on(facts: WorkspaceFacts, expected_build_number: int) -> bool:
    """After a ``request_build`` expecting build ``expected_build_number`` failed: did the rows
    move on (the workspace was deleted, or its latest build is another)?

    >>> ws = Workspace("w1", "c1", "alice", "dev")
    >>> b2 = Build("b2", "w1", 2, Transition.STOP, JobStatus.PENDING)
    >>> build_moved_on(WorkspaceFacts(ws, b2, None, seq=5), 1), build_moved_on(WorkspaceFacts(ws, b2, None, seq=5), 2)
    (True, False)
    """
    latest = facts.latest_build
    return facts.workspace.deleted or (latest is not None and latest.number != expected_build_number)


def rebound(chat: Chat | None, expected_workspace_id: str | None) -> str | None:
    """After a ``create_workspace`` expecting the chat bound to ``expected_workspace_id``
    failed: the workspace the chat is bound to now if the rows moved on, else ``None`` (the
    same write again is safe)."""
    if chat is None or chat.workspace_id is None or chat.workspace_id == expected_workspace_id:
        return None
    return chat.workspace_id


def create_landed(facts: WorkspaceFacts, name: str) -> bool:
    """Is the workspace the chat was :func:`rebound` to the very one a ``create_workspace`` of
    ``name`` asked for (its write committed before the error, or an identical create won)?
    Then the caller answers as its creator, about its first build."""
    first = facts.latest_build
    return facts.workspace.name == name and first is not None and first.number == 1


def fire_deadline(
    facts: WorkspaceFacts, *, chat: Chat | None, expected: Deadline, build_id: str, at: float
) -> Write | None:
    """Fire the workspace's armed deadline ``expected`` at wall-clock time ``at``: its build
    (idle: stop, retention: delete), with the deadline's reason.

    A compare-and-set: ``None`` (nothing written) unless the stored deadline is still exactly
    ``expected`` and is due at ``at``. A deadline whose action the table no longer allows is
    disarmed instead of fired. An idle deadline of a workspace a turn holds (its holds, read in
    the same transaction) is put off instead (:func:`~workspace_lifecycle.deadlines.held_past`):
    no idle stop fires while a hold is live.
    """
    ws = facts.workspace
    if ws.deleted or ws.deadline != expected or not expected.due(at):
        return None
    request = DEADLINE_REQUEST[expected.reason]
    latest = facts.latest_build
    number = latest.number if latest else 0
    if expected.reason is Reason.IDLE and ws.holds:
        later = deadlines.held_past(ws.holds, chat.policy if chat is not None else Policy(), at)
        if later is not None:
            # Lapsed holds go: the deadline put off carries their latest end.
            kept = attrs.evolve(ws, holds=deadlines.live_holds(ws.holds, at))
            workspace, event = _rearm(kept, later, at=at, build_number=number)
            return Write(events=(event,), workspace=workspace)
    if Tracker.from_facts(facts).decide(request) is Decision.FIRE:
        fired = request_build(
            facts,
            chat=chat,
            transition=expected.transition,
            expected_build_number=number,
            build_id=build_id,
            at=at,
            reason=expected.reason,
        )
        if fired is not None:
            return fired
    workspace, disarmed = _rearm(ws, None, at=at, build_number=number)
    return Write(events=(disarmed,), workspace=workspace)


def warn_deadline(facts: WorkspaceFacts, *, expected: Deadline, at: float) -> Write | None:
    """Warn, at wall-clock time ``at``, that the workspace's armed deadline ``expected`` comes
    soon: a ``deadline_approaching`` event, and the deadline marked warned in the same row.

    A compare-and-set: ``None`` (nothing written) unless the stored deadline is still exactly
    ``expected`` (not pushed, not disarmed, not warned by another replica) and its warning is
    due at ``at`` (:func:`~workspace_lifecycle.deadlines.due_action`): once per armed deadline,
    never early, never once the deadline itself passed.
    """
    ws = facts.workspace
    if ws.deleted or ws.deadline != expected or deadlines.due_action(expected, at) is not deadlines.Due.WARN:
        return None
    latest = facts.latest_build
    warned = attrs.evolve(expected, warned=True)
    event = _event(
        EventKind.DEADLINE_APPROACHING,
        ws,
        None,
        at=at,
        build_number=latest.number if latest else 0,
        deadline=expected.at,
        reason=expected.reason,
        warn_at=expected.warn_at,
    )
    return Write(events=(event,), workspace=attrs.evolve(ws, deadline=warned))


def deferral_holds(facts: WorkspaceFacts, expected_build_number: int) -> bool:
    """The compare-and-set of :func:`defer_request`: the workspace is not deleted and build
    ``expected_build_number`` is its latest and still in flight (its finish will act on the
    intent). Otherwise the caller decides again on the rows as they are."""
    latest = facts.latest_build
    return (
        not facts.workspace.deleted
        and latest is not None
        and latest.number == expected_build_number
        and not latest.status.finished
    )


def defer_request(
    facts: WorkspaceFacts,
    *,
    transition: Transition | None,
    expected_build_number: int,
    requested_by: str,
    at: float,
    running_limit: int | None = None,
) -> Write | None:
    """Store on the workspace the intent to fire a ``transition`` build once build
    ``expected_build_number`` ends (``None``: withdraw the intent stored there; a later
    request superseded it), with its ``request_deferred`` event. It replaces any intent stored
    before: the latest request wins. ``None`` (nothing written) unless :func:`deferral_holds`,
    or when the stored intent is already this one.

    >>> ws = Workspace("w1", "c1", "alice", "dev")
    >>> stop = Build("b2", "w1", 2, Transition.STOP, JobStatus.RUNNING)
    >>> w = defer_request(WorkspaceFacts(ws, stop, None, seq=5), transition=Transition.START,
    ...                   expected_build_number=2, requested_by="alice", at=0)
    >>> w.workspace.deferred, [e.kind.value for e in w.events]
    (Deferred(transition=<Transition.START: 'start'>, behind=2, requested_by='alice', running_limit=None), ['request_deferred'])
    """
    if not deferral_holds(facts, expected_build_number):
        return None
    ws = facts.workspace
    intent = (
        None
        if transition is None
        else Deferred(transition, expected_build_number, requested_by, running_limit)
    )
    if intent == ws.deferred or (intent is None and ws.deferred is None):
        return None
    workspace = attrs.evolve(ws, deferred=intent)
    event = _event(
        EventKind.REQUEST_DEFERRED, ws, None, at=at, build_number=expected_build_number, transition=transition
    )
    return Write(events=(event,), workspace=workspace)


#: The request a deferred transition stands for (a deferred create is never stored: see steps).
_DEFERRED_REQUEST = {
    Transition.START: Request.START,
    Transition.STOP: Request.STOP,
    Transition.DELETE: Request.DELETE,
}


def _act_on_deferred(
    write: Write,
    ws: Workspace,
    chat: Chat | None,
    *,
    then_build_id: str | None,
    at: float,
    usage: Usage | None = None,
) -> Write:
    """``write`` finished the build a request was deferred behind: clear the intent and, if
    the table allows the request in the state the finish leaves (decided as the request itself
    would decide it), queue its build in the same write."""
    intent = ws.deferred
    done = write.build
    if intent is None or done is None:
        return write
    cleared = attrs.evolve(write.workspace or ws, deferred=None)
    write = attrs.evolve(write, workspace=cleared)
    if intent.behind != done.number or then_build_id is None:
        return write
    after = WorkspaceFacts(cleared, done, write.agent, 0)
    if Tracker.from_facts(after).decide(_DEFERRED_REQUEST[intent.transition]) is not Decision.FIRE:
        return write
    try:
        fired = request_build(
            after,
            chat=chat,
            transition=intent.transition,
            expected_build_number=done.number,
            build_id=then_build_id,
            at=at,
            usage=usage,
            limits=None if intent.running_limit is None else Limits(running=intent.running_limit),
        )
    except QuotaExceededError:  # the owner is at a stored limit now: the start is dropped
        return write
    if fired is None:  # a start whose chat moved on to another workspace
        return write
    return attrs.evolve(
        write,
        events=write.events + fired.events,
        then=fired.build,
        workspace=fired.workspace or cleared,
        agent=fired.agent if fired.agent is not None else write.agent,
    )


def touch(facts: WorkspaceFacts, policy: Policy, *, at: float) -> Write | None:
    """Activity at ``at``: push the idle deadline of a running workspace to ``at +
    idle_stop_after``; ``None`` (nothing written) if that sets nothing new."""
    ws = facts.workspace
    if ws.deleted:
        return None
    armed = deadlines.pushed_by_activity(derive_state(facts), policy, at)
    if armed is None or armed == ws.deadline:
        return None
    latest = facts.latest_build
    workspace, event = _rearm(ws, armed, at=at, build_number=latest.number if latest else 0)
    return Write(events=(event,), workspace=workspace)


def hold_turn(
    facts: WorkspaceFacts, token: str, *, renew: bool, at: float, hold_seconds: float
) -> Write | None:
    """A turn takes (``renew`` false) or renews the hold ``token`` on the workspace: it now
    lapses ``hold_seconds`` after ``at``. Holds lapsed at ``at`` are cleared on the way (the
    new expiry outlasts them). ``None`` (nothing held) for a deleted workspace.

    Fenced like a lease: a renewal of a hold that lapsed (or was cleared) raises
    :class:`HoldLostError`; an idle stop may have fired in the meantime, and the holder learns it.
    It appends no event: holding changes no deadline (a fire finds the holds in the row).

    >>> ws = Workspace("w1", "c1", "alice", "dev")
    >>> w = hold_turn(WorkspaceFacts(ws, None, None, 0), "t1", renew=False, at=100.0, hold_seconds=30)
    >>> w.workspace.holds, w.events
    ((Hold(token='t1', expires_at=130.0),), ())
    """
    ws = facts.workspace
    seconds = checks.seconds("hold_seconds", hold_seconds)
    mine = next((hold for hold in ws.holds if hold.token == token), None)
    if renew and (ws.deleted or mine is None or mine.due(at)):
        raise HoldLostError(
            f"the turn's hold on workspace {ws.workspace_id!r} lapsed before it was renewed"
            " (an idle stop may have fired meanwhile)"
        )
    if ws.deleted:
        return None
    kept = tuple(hold for hold in ws.holds if hold.token != token and not hold.due(at))
    return Write(events=(), workspace=attrs.evolve(ws, holds=(*kept, Hold(token, at + seconds))))


def release_turn(facts: WorkspaceFacts, token: str, policy: Policy, *, at: float) -> Write | None:
    """The turn holding the workspace with ``token`` ended at ``at``: its hold goes, and if no
    live hold is left the idle countdown starts now (the idle deadline is armed at ``at +
    idle_stop_after``, for a running workspace). ``None`` when the hold is not there (it lapsed
    and was cleared: its countdown started at its expiry).
    """
    ws = facts.workspace
    if ws.deleted or not any(hold.token == token for hold in ws.holds):
        return None
    kept = tuple(hold for hold in ws.holds if hold.token != token and not hold.due(at))
    workspace = attrs.evolve(ws, holds=kept)
    if kept:
        return Write(events=(), workspace=workspace)
    armed = deadlines.pushed_by_activity(derive_state(facts), policy, at)
    if armed is None or armed == ws.deadline:
        return Write(events=(), workspace=workspace)
    latest = facts.latest_build
    workspace, event = _rearm(workspace, armed, at=at, build_number=latest.number if latest else 0)
    return Write(events=(event,), workspace=workspace)


def check_lease_seconds(lease_seconds: object) -> float:
    """A lease's duration: a positive finite number of seconds (``ValueError`` otherwise)."""
    return checks.seconds("lease_seconds", lease_seconds)


def claim_build(
    build: Build, ws: Workspace, *, worker: str, at: float, token: str, lease_seconds: float
) -> Write:
    """``worker`` takes the pending ``build``: it is now running, under a lease (fencing
    ``token``, made by the adapter) that runs out ``lease_seconds`` after ``at`` unless renewed."""
    if build.status is not JobStatus.PENDING:
        raise BuildConflictError(f"build {build.build_id} is {build.status.value}, not pending")
    claimed = attrs.evolve(
        build,
        status=JobStatus.RUNNING,
        worker=worker,
        lease_token=token,
        lease_expires_at=at + check_lease_seconds(lease_seconds),
    )
    return Write(
        events=(_event(EventKind.BUILD_UPDATED, ws, claimed, at=at, status=JobStatus.RUNNING),),
        build=claimed,
    )


def _check_lease(build: Build, token: str, *, at: float) -> None:
    """Raise :class:`LeaseLostError` unless ``token`` is the lease of ``build``, still held at
    ``at`` (a build in flight whose lease has not run out, or a finished one it finished)."""
    if build.lease_token != token:
        raise LeaseLostError(
            f"build {build.build_id} is not held under this lease (it expired, or the token is another's)"
        )
    lease = build.lease
    if build.in_flight and (lease is None or lease.due(at)):
        raise LeaseLostError(f"the lease on build {build.build_id} expired; its worker must stop")


def renew_lease(build: Build | None, ws: Workspace, token: str, *, at: float, lease_seconds: float) -> Write:
    """The holder of ``build``'s lease extends it to ``at + lease_seconds`` (a heartbeat).

    It appends no event: nobody waits on a renewal. Raises :class:`LeaseLostError` when the
    lease is not held (expired, another token, or the build finished).
    """
    if build is None:
        raise NotFoundError("no such build")
    seconds = check_lease_seconds(lease_seconds)
    _check_lease(build, token, at=at)
    if not build.in_flight:
        raise LeaseLostError(f"build {build.build_id} finished ({build.status.value}); its lease is over")
    return Write(events=(), build=attrs.evolve(build, lease_expires_at=at + seconds))


def expire_lease(
    build: Build | None,
    ws: Workspace,
    token: str,
    *,
    at: float,
    policy: Policy | None = None,
    log: BuildLog | None = None,
    chat: Chat | None = None,
    then_build_id: str | None = None,
    usage: Usage | None = None,
) -> Write | None:
    """The lease ``token`` on ``build`` ran out: fail the build, once. ``None`` (nothing to
    write) unless the build is still in flight under that very lease and it is due at ``at``:
    a renewal, another expiry or a finish got there first."""
    if build is None or not build.in_flight or build.lease_token != token:
        return None
    lease = build.lease
    if lease is None or not lease.due(at):
        return None
    reason = (
        f"provisioner worker {build.worker or 'unknown'} lost its lease on the build:"
        " it sent no heartbeat before the lease ran out"
    )
    write = finish_build(
        build,
        ws,
        JobStatus.FAILED,
        reason,
        has_agent=False,
        at=at,
        policy=policy,
        log=log,
        chat=chat,
        then_build_id=then_build_id,
        usage=usage,
    )
    assert write.build is not None
    return attrs.evolve(write, build=attrs.evolve(write.build, lease_token=None))


def finish_build(
    build: Build | None,
    ws: Workspace,
    status: JobStatus | str,
    error: str | None,
    *,
    has_agent: bool,
    at: float,
    details: Mapping[str, Any] | None = None,
    policy: Policy | None = None,
    lease: str | None = None,
    log: BuildLog | None = None,
    chat: Chat | None = None,
    then_build_id: str | None = None,
    usage: Usage | None = None,
) -> Write:
    """``build`` finished with ``status``: the build row, the agent a succeeded start build
    produced (in ``created``), the deleted mark a succeeded delete build sets, the deadline the
    chat's ``policy`` arms (:func:`~workspace_lifecycle.deadlines.after_finish`), and their
    events.

    A request deferred behind the build (the workspace's :class:`~workspace_lifecycle.values.Deferred`)
    is acted on in the same write: its intent is cleared and, when the table allows it in the
    state the finish leaves, its build (``then_build_id``, made by the adapter) is queued
    (``Write.then``; a start also needs ``chat`` still bound to the workspace, and must fit
    the owner's stored limits: with the owner's ``usage`` read in the same transaction, see
    :func:`needs_usage`; a start over a limit is dropped with the intent).

    A build that did not succeed and has a ``log`` says so in its details (``logs``: how many
    lines and how to read them), so every answer about it points the model at them.

    Raises ``ValueError`` for a status that is not final or bad ``details``,
    :class:`NotFoundError` for no build,
    :class:`BuildConflictError` for a build that already finished, and
    :class:`LeaseLostError` when ``lease`` (the worker's fencing token) is given and no longer
    held (checked first: a worker that lost its lease learns that, whatever became of the build).
    """
    if build is None:
        raise NotFoundError("no such build")
    if lease is not None:
        _check_lease(build, lease, at=at)
    done = build.finished_as(parse_status(status), error, has_agent=has_agent, details=details)
    hint = buildlogs.failure_hint(log) if done.status is not JobStatus.SUCCEEDED else {}
    if hint:
        done = attrs.evolve(done, details={**hint, **(done.details or {})})
    if lease is None and done.lease_token is not None:
        # Finished by another party, not under its lease: its worker lost the lease (it can
        # no longer finish, report or renew with it, and holding() stops its work).
        done = attrs.evolve(done, lease_token=None)
    events = [
        _event(
            EventKind.BUILD_FINISHED,
            ws,
            done,
            at=at,
            status=done.status,
            error=done.error,
            has_agent=done.has_agent,
            details=done.details,
        )
    ]
    agent = None
    if done.starts_agent and has_agent:
        agent = Agent(ws.workspace_id, done.number, AgentLifecycle.CREATED)
    workspace = _workspace_after(done, ws, policy, at, events)
    write = Write(events=tuple(events), build=done, workspace=workspace, agent=agent)
    return _act_on_deferred(write, ws, chat, then_build_id=then_build_id, at=at, usage=usage)


def _workspace_after(
    done: Build, ws: Workspace, policy: Policy | None, at: float, events: list[StoreEvent]
) -> Workspace | None:
    """The workspace row once ``done`` finished (``None``: unchanged), its events appended to
    ``events``: deleted by a succeeded delete, else its deadline re-armed by the chat's policy."""
    if done.status is JobStatus.SUCCEEDED and done.transition is Transition.DELETE:
        workspace = attrs.evolve(ws, deleted=True, deadline=None)
        events.append(_event(EventKind.WORKSPACE_DELETED, workspace, done, at=at))
        return workspace
    # A pooled workspace nobody claimed keeps the deadline it was born with (its time to
    # live): its holder has no policy of its own.
    unclaimed = pools.pool_of(ws.chat_id) is not None
    armed = ws.deadline if unclaimed else deadlines.after_finish(done, policy or Policy(), at)
    if armed == ws.deadline:
        return None
    workspace, event = _rearm(ws, armed, at=at, build_number=done.number)
    events.append(event)
    return workspace


def needs_usage(ws: Workspace) -> bool:
    """Whether finishing ``ws``'s build in flight needs its owner's usage: a start deferred
    behind it may take a running slot more (:func:`finish_build` checks it against the owner's
    stored limits).

    >>> needs_usage(Workspace("w1", "c1", "al", "dev", deferred=Deferred(Transition.START, 2, "al")))
    True
    """
    return ws.deferred is not None and ws.deferred.transition is Transition.START


def report_agent(
    agent: Agent | None,
    ws: Workspace,
    lifecycle: AgentLifecycle | str,
    *,
    at: float,
    latest: Build | None = None,
    lease: str | None = None,
    endpoints: Mapping[str, str] | None = None,
) -> Write:
    """The agent of ``ws`` reports ``lifecycle``; a workspace without one raises NotFoundError.

    ``endpoints`` (names to URLs, checked by :func:`~workspace_lifecycle.endpoints.check_endpoints`)
    replace the agent's; without them it keeps those it has.

    With ``lease`` (the fencing token of the build that made the agent), the report holds only
    while that build is the workspace's ``latest`` and made this agent: a worker whose build was
    superseded (a stop, a new start) or whose lease expired gets :class:`LeaseLostError`, and a
    late report of an old process cannot change the agent of a newer build.
    """
    if agent is None:
        raise NotFoundError(f"workspace {ws.workspace_id!r} has no agent")
    if lease is not None:
        if latest is None or latest.number != agent.build_number or latest.lease_token != lease:
            raise LeaseLostError(
                f"workspace {ws.workspace_id!r}: this lease is not the one of the build that made its"
                " agent (a newer build replaced it, or the lease expired)"
            )
        _check_lease(latest, lease, at=at)
    reached = agent.endpoints if endpoints is None else check_endpoints(endpoints)
    reported = Agent(agent.workspace_id, agent.build_number, parse_lifecycle(lifecycle), reached)
    return Write(
        events=(
            _event(
                EventKind.AGENT_UPDATED,
                ws,
                None,
                at=at,
                build_number=agent.build_number,
                agent=reported.lifecycle,
                endpoints=dict(reached) if reached else None,
            ),
        ),
        agent=reported,
    )


def append_log(
    build: Build | None,
    log: BuildLog | None,
    lines: list[str],
    *,
    at: float,
    lease: str | None = None,
    dropped: int = 0,
) -> Write:
    """Append ``lines`` to ``build``'s ``log`` (:func:`~workspace_lifecycle.buildlogs.appended`
    bounds it); ``dropped`` counts lines the writer dropped itself. With ``lease``, only its
    holder may append (:class:`LeaseLostError` otherwise, as for any write of the build's worker):
    a build it finished under the lease still takes the output of the process it started.
    It appends no event: a log changes no state.
    """
    if build is None:
        raise NotFoundError("no such build")
    if lease is not None:
        _check_lease(build, lease, at=at)
    lost = checks.count("dropped", dropped, most=2**53)
    return Write(events=(), log=buildlogs.appended(log, build.build_id, lines, dropped=lost))


def parse_status(value: JobStatus | str) -> JobStatus:
    """A job status given as the enum or its string value (``"succeeded"``)."""
    return _parse(JobStatus, value, "job status")


def parse_lifecycle(value: AgentLifecycle | str) -> AgentLifecycle:
    """An agent lifecycle state given as the enum or its string value (``"ready"``)."""
    return _parse(AgentLifecycle, value, "agent lifecycle state")


_E = TypeVar("_E", JobStatus, AgentLifecycle)


def _parse(kind: type[_E], value: object, what: str) -> _E:
    if type(value) is kind:
        return value
    try:
        return kind(value)
    except (ValueError, TypeError):
        names = ", ".join(m.value for m in kind)
        raise ValueError(f"unknown {what} {value!r}; use one of: {names}") from None
