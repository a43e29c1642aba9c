"""The writes of a build's worker and of its end: a build claimed, its lease renewed or expired,
the build finished (acting on the request deferred behind it), its agent's reports, its log.

Each is decided from the rows its transaction read (see :mod:`~workspace_lifecycle.writes`);
a worker's write is fenced by its lease. Pure: no I/O, no clocks, no awaits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from . import buildlogs, checks, deadlines, pools
from ._replace import replace
from .buildlogs import BuildLog
from .endpoints import check_endpoints
from .errors import BuildConflictError, LeaseLostError, NotFoundError, QuotaExceededError
from .limits import Limits, Usage
from .machine import Decision, Request, Tracker
from .request_writes import request_build
from .values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    EventKind,
    JobStatus,
    Policy,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
    lease_due,
)
from .write import Write, new_event, rearm

__all__ = [
    "append_log",
    "check_lease_seconds",
    "claim_build",
    "expire_lease",
    "finish_build",
    "needs_usage",
    "parse_lifecycle",
    "parse_status",
    "renew_lease",
    "report_agent",
]


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
    cleared = replace(write.workspace or ws, deferred=None)
    write = replace(write, workspace=cleared)
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
    return replace(
        write,
        events=write.events + fired.events,
        then=fired.build,
        workspace=fired.workspace or cleared,
        agent=fired.agent if fired.agent is not None else write.agent,
    )


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
    claimed = replace(
        build,
        status=JobStatus.RUNNING,
        worker=worker,
        lease_token=token,
        lease_expires_at=at + check_lease_seconds(lease_seconds),
    )
    return Write(
        events=(new_event(EventKind.BUILD_UPDATED, ws, claimed, at=at, status=JobStatus.RUNNING),),
        build=claimed,
    )


def _check_lease(build: Build, token: str, *, at: float) -> None:
    """Raise :class:`LeaseLostError` unless ``token`` is the lease of ``build``, still held at
    ``at`` (a build in flight whose lease has not run out, or a finished one it finished)."""
    if build.lease_token != token:
        raise LeaseLostError(
            f"build {build.build_id} is not held under this lease (it expired, or the token is another's)"
        )
    expires_at = build.lease_expires_at  # no Lease value made: this runs on every write of a worker
    if build.in_flight and (expires_at is None or lease_due(expires_at, at)):
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
    return Write(events=(), build=replace(build, lease_expires_at=at + seconds))


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
    return replace(write, build=replace(write.build, lease_token=None))


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
        done = replace(done, details={**hint, **(done.details or {})})
    if lease is None and done.lease_token is not None:
        # Finished by another party, not under its lease: its worker lost the lease (it can
        # no longer finish, report or renew with it, and holding() stops its work).
        done = replace(done, lease_token=None)
    events = [
        new_event(
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
        workspace = replace(ws, deleted=True, deadline=None)
        events.append(new_event(EventKind.WORKSPACE_DELETED, workspace, done, at=at))
        return workspace
    # A pooled workspace nobody claimed keeps the deadline it was born with (its time to
    # live): its holder has no policy of its own.
    unclaimed = pools.pool_of(ws.chat_id) is not None
    armed = ws.deadline if unclaimed else deadlines.after_finish(done, policy or Policy(), at)
    if armed == ws.deadline:
        return None
    workspace, event = rearm(ws, armed, at=at, build_number=done.number)
    events.append(event)
    return workspace


def needs_usage(ws: Workspace) -> bool:
    """Whether finishing ``ws``'s build in flight needs its owner's usage: a start deferred
    behind it may take a running slot more (:func:`finish_build` checks it against the owner's
    stored limits).

    >>> from workspace_lifecycle.values import Deferred
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
            new_event(
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
