"""The writes between turns: a deadline fired or warned of, activity that pushes the idle
deadline, and the holds of a turn taken, renewed and released.

Each is one compare-and-set decided from the rows its transaction read (see
:mod:`~workspace_lifecycle.writes`; what arms, pushes and fires a deadline is
:mod:`~workspace_lifecycle.deadlines`). Pure: no I/O, no clocks, no awaits.
"""

from __future__ import annotations

from . import checks, deadlines
from ._replace import replace
from .errors import HoldLostError
from .machine import DEADLINE_REQUEST, Decision, Tracker, derive_state
from .request_writes import request_build
from .values import Chat, Deadline, EventKind, Hold, Policy, Reason, WorkspaceFacts
from .write import Write, new_event, rearm

__all__ = [
    "fire_deadline",
    "hold_turn",
    "release_turn",
    "touch",
    "warn_deadline",
]


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
            kept = replace(ws, holds=deadlines.live_holds(ws.holds, at))
            workspace, event = rearm(kept, later, at=at, build_number=number)
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
    workspace, disarmed = rearm(ws, None, at=at, build_number=number)
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
    warned = replace(expected, warned=True)
    event = new_event(
        EventKind.DEADLINE_APPROACHING,
        ws,
        None,
        at=at,
        build_number=latest.number if latest else 0,
        deadline=expected.at,
        reason=expected.reason,
        warn_at=expected.warn_at,
    )
    return Write(events=(event,), workspace=replace(ws, deadline=warned))


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
    workspace, event = rearm(ws, armed, at=at, build_number=latest.number if latest else 0)
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

    >>> from workspace_lifecycle.values import Workspace
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
    return Write(events=(), workspace=replace(ws, holds=(*kept, Hold(token, at + seconds))))


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
    workspace = replace(ws, holds=kept)
    if kept:
        return Write(events=(), workspace=workspace)
    armed = deadlines.pushed_by_activity(derive_state(facts), policy, at)
    if armed is None or armed == ws.deadline:
        return Write(events=(), workspace=workspace)
    latest = facts.latest_build
    workspace, event = rearm(workspace, armed, at=at, build_number=latest.number if latest else 0)
    return Write(events=(event,), workspace=workspace)
