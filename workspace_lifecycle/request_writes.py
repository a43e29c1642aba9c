"""The writes a request makes: a chat registered, a workspace created (or claimed from a pool),
a build requested or deferred behind the build in flight, an owner's limits; and how a writer
tells, after a write that may or may not have committed, whether the rows moved on.

Each is one compare-and-set decided from the rows its transaction read (see
:mod:`~workspace_lifecycle.writes`). Pure: no I/O, no clocks, no awaits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeGuard

from . import deadlines, pools
from ._replace import replace
from .errors import NotFoundError, OwnershipError, QuotaExceededError
from .limits import Limits, OwnerRow, Usage, counts_as_running, over_limit
from .machine import derive_state
from .values import (
    Build,
    Chat,
    Deferred,
    EventKind,
    JobStatus,
    Policy,
    Reason,
    Transition,
    Workspace,
    WorkspaceFacts,
    WorkspaceState,
    check_parameters,
)
from .write import Write, new_event, rearm

__all__ = [
    "build_moved_on",
    "check_quota",
    "claim_pooled",
    "create_landed",
    "create_workspace",
    "defer_request",
    "deferral_holds",
    "fill_pool",
    "rebound",
    "register_chat",
    "request_build",
    "set_limits",
]


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
    return replace(existing, policy=policy)


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
    if not _may_bind(chat, expected_workspace_id, replaced):
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
            new_event(EventKind.CHAT_BOUND, ws, None, at=at),
            new_event(EventKind.BUILD_QUEUED, ws, build, at=at, status=JobStatus.PENDING),
        ),
        build=build,
        queued=True,
        workspace=ws,
        chat=replace(chat, workspace_id=workspace_id),
    )


def _may_bind(
    chat: Chat | None, expected_workspace_id: str | None, replaced: WorkspaceFacts | None
) -> TypeGuard[Chat]:
    """The compare-and-set of a create (or a pool's claim): ``chat`` is still bound to
    ``expected_workspace_id``, and the workspace it would leave (``replaced``) may be left;
    :class:`~workspace_lifecycle.errors.NotFoundError` when there is no chat."""
    if chat is None:
        raise NotFoundError("no such chat")
    if chat.workspace_id != expected_workspace_id:
        return False
    return expected_workspace_id is None or (replaced is not None and _replaceable(replaced))


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
    events = [new_event(EventKind.BUILD_QUEUED, facts.workspace, build, at=at, status=JobStatus.PENDING)]
    workspace = None
    if facts.workspace.deadline is not None:
        workspace, disarmed = rearm(facts.workspace, None, at=at, build_number=build.number)
        events.append(disarmed)
    agent = facts.agent
    if transition is not Transition.START and agent is not None and agent.endpoints:
        # A workspace on its way down is reached nowhere: its endpoints go with this build.
        agent = replace(agent, endpoints={})
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
        new_event(EventKind.CHAT_BOUND, ws, None, at=at),  # a watcher of every chat follows it from here
        new_event(EventKind.BUILD_QUEUED, ws, build, at=at, status=JobStatus.PENDING),
    ]
    if ws.deadline is not None:
        events.append(rearm(ws, ws.deadline, at=at, build_number=1)[1])
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
    if not _may_bind(chat, expected_workspace_id, replaced):
        return None
    member = pools.choose(members, chat.chat_id, at)
    if member is None:
        return None
    # The claimed workspace becomes one more of the owner's, running: its limits apply.
    check_quota(usage, limits, adds_running=True, adds_workspace=True)
    latest = member.latest_build
    number = latest.number if latest else 0
    armed = deadlines.pushed_by_activity(derive_state(member), chat.policy, at)
    ws = replace(member.workspace, chat_id=chat.chat_id, owner=chat.owner, name=name)
    ws, rearmed = rearm(ws, armed, at=at, build_number=number)
    bound = new_event(EventKind.CHAT_BOUND, ws, None, at=at, build_number=number, details={"pool": pool})
    return Write(events=(bound, rearmed), workspace=ws, chat=replace(chat, workspace_id=ws.workspace_id))


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
    workspace = replace(ws, deferred=intent)
    event = new_event(
        EventKind.REQUEST_DEFERRED, ws, None, at=at, build_number=expected_build_number, transition=transition
    )
    return Write(events=(event,), workspace=workspace)
