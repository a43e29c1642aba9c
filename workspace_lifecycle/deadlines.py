"""Between turns: policies, durable deadlines and the decisions about them. Pure.

Theory of operation
-------------------
A chat's :class:`Policy` says what happens to its workspace while nobody uses it: stop it
after ``idle_stop_after`` seconds without activity, delete it after it stayed stopped for
``delete_after_stopped`` seconds. The policy is stored with the chat, so every replica and
every restart applies the same one.

A workspace has at most one armed :class:`Deadline`: the time of its next automatic action and
why (``idle`` fires a stop build, ``retention`` a delete build). The deadline is a stored value
of the workspace row, written by the same transaction as the event that sets it, and every
change of it is a ``deadline_set`` event in the log, so each replica learns it like any other
news. The writes that move it (:mod:`~workspace_lifecycle.writes`) decide with this module:

* a start build that succeeds arms the idle deadline (``at + idle_stop_after``);
* a stop build that succeeds arms the retention deadline (``at + delete_after_stopped``);
* activity (:func:`pushed_by_activity`) pushes the idle deadline of a running workspace;
* any build queued disarms it (its end arms the next one), and so does a failed build: a failed
  workspace waits for a person or the agent, not for a timer;
* the end of the last turn holding the workspace (:class:`~workspace_lifecycle.values.Hold`)
  arms the idle deadline afresh (``end + idle_stop_after``).

A turn holds the workspace while it runs: an idle deadline that comes due while a hold is live
does not fire but is put off to the holds' latest expiry plus ``idle_stop_after``
(:func:`held_past`). Holds are renewed while held, so a turn that ends arms the deadline at its
end, and one whose holder died stops holding at its expiry: the countdown then starts from there.

Firing a deadline is a compare-and-set like every request: it holds only while the stored
deadline is exactly the one the firing replica saw and is due at the time it fires, so with any
number of replicas a passed deadline fires one build, and a deadline extended in the meantime
fires nothing.

Warnings
--------
A chat whose policy has ``warn_before`` gets a ``deadline_approaching`` event that many seconds
before each idle stop and retention delete. The warning's time is part of the armed deadline
(``Deadline.warn_at``, set with it by :func:`after_finish` and :func:`pushed_by_activity`), so
the scheduler that wakes for the deadline wakes for its warning the same way
(:func:`wake_at`, :func:`due_action`). Writing the warning is a compare-and-set on the stored
deadline, which records that it warned (``Deadline.warned``): with any number of replicas one
warning per armed deadline, and none once the deadline was pushed or disarmed (a touch after
the warning arms a new deadline, whose own warning comes in its own time).
:func:`in_words` tells the next deadline to a model in its tool answers.

Deadlines are wall-clock times (seconds since the epoch), as the events' ``at``: a replica
whose clock runs ahead fires early by that much, one whose clock runs behind fires late; the
store's row is the same for all of them, and a process started after a deadline passed fires it
at once.

Rules for this module: no I/O, no awaits, no clocks, no anyio.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from .values import Build, Deadline, Hold, JobStatus, Policy, Reason, Transition, WorkspaceState

#: The policy a new chat gets from the processes this package runs on its own (the command
#: line's ``create``, the MCP server): stop after 30 minutes without activity, never delete.
#:
#: Why: such a chat is somebody trying the library or a desktop client's chat, and nobody is
#: there to stop what it started. 30 minutes outlasts a pause between turns (a start costs one
#: build), and lies between the platforms users compare us with (Daytona stops a sandbox after
#: 15 idle minutes, Coder bumps a workspace's deadline by an hour of activity). Deleting loses
#: the workspace's files, so it is never a default: ``--delete-after-stopped`` asks for it.
#: A bare :class:`~workspace_lifecycle.Lifecycle` keeps ``Policy()`` (nothing automatic): the
#: program that embeds it knows its own costs and users, and says what it wants.
STANDALONE_POLICY = Policy(idle_stop_after=1800)

__all__ = [
    "STANDALONE_POLICY",
    "TOUCH_SLACK",
    "Due",
    "after_finish",
    "armed",
    "due_action",
    "in_words",
    "held_past",
    "live_holds",
    "pushed_by_activity",
    "touch_due",
    "wake_at",
]

#: A touch within this many seconds of the last one that moved the deadline writes nothing (at
#: most a tenth of ``idle_stop_after``): an idle stop may come that much early, never late.
TOUCH_SLACK = 1.0


def after_finish(build: Build, policy: Policy, at: float) -> Deadline | None:
    """The deadline a finished build leaves armed, by the chat's ``policy``.

    >>> from workspace_lifecycle.values import Build
    >>> b = Build("b1", "w1", 1, Transition.START, JobStatus.SUCCEEDED)
    >>> after_finish(b, Policy(idle_stop_after=60), at=1000.0)
    Deadline(at=1060.0, reason=<Reason.IDLE: 'idle'>, warn_at=None, warned=False)
    >>> after_finish(b, Policy(idle_stop_after=60, warn_before=10), at=1000.0).warn_at
    1050.0
    """
    if build.status is not JobStatus.SUCCEEDED:
        return None
    if build.transition is Transition.START and policy.idle_stop_after is not None:
        return armed(at + policy.idle_stop_after, Reason.IDLE, policy)
    if build.transition is Transition.STOP and policy.delete_after_stopped is not None:
        return armed(at + policy.delete_after_stopped, Reason.RETENTION, policy)
    return None


def armed(at: float, reason: Reason, policy: Policy) -> Deadline:
    """The deadline at ``at`` for ``reason``, with its warning ``policy.warn_before`` earlier
    (none without ``warn_before``)."""
    warn = policy.warn_before
    return Deadline(at, reason, None if warn is None else at - warn)


_RUNNING = frozenset({WorkspaceState.RUNNING, WorkspaceState.AGENT_READY})


def pushed_by_activity(state: WorkspaceState, policy: Policy, at: float) -> Deadline | None:
    """The idle deadline activity at ``at`` sets, or ``None`` if activity sets none here (the
    workspace does not run, or the chat never stops for idleness)."""
    if state not in _RUNNING or policy.idle_stop_after is None:
        return None
    return armed(at + policy.idle_stop_after, Reason.IDLE, policy)


def touch_due(known: Deadline | None, policy: Policy, now: float) -> bool:
    """Should a touch at ``now`` write, given the deadline this process ``known`` to be armed?

    Not when the armed idle deadline already lies within the slack before where the touch would
    put it (``now + idle_stop_after``): repeated touches within :data:`TOUCH_SLACK` (or a tenth
    of ``idle_stop_after``) of each other coalesce into the first. One armed later than that
    (the chat's policy was shortened) or earlier is moved. With no known deadline it writes
    (the store decides).

    >>> p = Policy(idle_stop_after=60)
    >>> touch_due(Deadline(1060.0, Reason.IDLE), p, now=1000.5), touch_due(Deadline(1060.0, Reason.IDLE), p, now=1002)
    (False, True)
    >>> touch_due(Deadline(4600.0, Reason.IDLE), p, now=1000)  # armed by a longer policy
    True
    """
    idle = policy.idle_stop_after
    if idle is None:
        return False
    if known is None or known.reason is not Reason.IDLE:
        return True
    target = now + idle
    return not target - min(TOUCH_SLACK, idle / 10) <= known.at <= target


class Due(enum.Enum):
    """What an armed deadline asks for at a given time."""

    WARN = "warn"  # write its deadline_approaching event
    FIRE = "fire"  # fire it (its build)


def _warning_pending(deadline: Deadline) -> bool:
    return deadline.warn_at is not None and not deadline.warned and deadline.warn_at < deadline.at


def wake_at(deadline: Deadline, margin: float = 0.0) -> float:
    """When a scheduler should look at ``deadline`` next: its warning's time while that is
    pending, else the deadline itself plus ``margin`` (the skew margin, see
    :func:`~workspace_lifecycle.skew.act_margin`; a warning keeps none: it only tells).

    >>> d = Deadline(1060.0, Reason.IDLE, warn_at=1000.0)
    >>> wake_at(d), wake_at(Deadline(1060.0, Reason.IDLE, warn_at=1000.0, warned=True))
    (1000.0, 1060.0)
    >>> wake_at(d, margin=2.0), wake_at(Deadline(1060.0, Reason.IDLE), margin=2.0)
    (1000.0, 1062.0)
    """
    if _warning_pending(deadline):
        assert deadline.warn_at is not None
        return deadline.warn_at
    return deadline.at + margin


def due_action(deadline: Deadline, now: float, margin: float = 0.0) -> Due | None:
    """What ``deadline`` asks for at ``now``: fire once it passed by ``margin`` (the skew
    margin, see :func:`~workspace_lifecycle.skew.act_margin`; a warning not given by then is
    skipped: it would come after the fact), warn once its warning time passed, else nothing.

    >>> d = Deadline(1060.0, Reason.IDLE, warn_at=1000.0)
    >>> due_action(d, 999.0), due_action(d, 1000.0), due_action(d, 1060.0)
    (None, <Due.WARN: 'warn'>, <Due.FIRE: 'fire'>)
    >>> due_action(Deadline(1060.0, Reason.IDLE), 1061.0, margin=2.0), due_action(d, 1062.0, margin=2.0)
    (None, <Due.FIRE: 'fire'>)
    """
    if deadline.at + margin <= now:  # as wake_at adds it: the time it wakes for is due
        return Due.FIRE
    if _warning_pending(deadline) and wake_at(deadline) <= now:
        return Due.WARN
    return None


_ACTION = {Reason.IDLE: "idle stop", Reason.RETENTION: "retention delete"}


def _span(seconds: float) -> str:
    if seconds < 90:
        whole = max(1, round(seconds))
        return f"{whole} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 36 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


def in_words(deadline: Deadline | None, now: float) -> str | None:
    """The next automatic action in words, for a model deciding whether to keep the workspace
    with a touch (``None``: nothing is armed).

    >>> in_words(Deadline(1120.0, Reason.IDLE), now=1000.0)
    'idle stop in 2 min'
    >>> in_words(Deadline(1000.0 + 3 * 86400, Reason.RETENTION), now=1000.0)
    'retention delete in 3 days'
    >>> in_words(Deadline(990.0, Reason.IDLE), now=1000.0)
    'idle stop due now'
    """
    if deadline is None:
        return None
    action = _ACTION[deadline.reason]
    left = deadline.at - now
    if left <= 0:
        return f"{action} due now"
    return f"{action} in {_span(left)}"


def live_holds(holds: Iterable[Hold], now: float) -> tuple[Hold, ...]:
    """The holds that have not lapsed at ``now``."""
    return tuple(hold for hold in holds if not hold.due(now))


def held_past(holds: Iterable[Hold], policy: Policy, now: float) -> Deadline | None:
    """The idle deadline a workspace's ``holds`` put off an idle stop due at ``now`` to, or
    ``None`` when they hold nothing: the latest expiry among them plus ``idle_stop_after``, if
    that is still ahead. A live hold always holds (its expiry is ahead); a lapsed one holds until
    ``idle_stop_after`` after it lapsed (the countdown of a turn whose holder died).

    >>> p = Policy(idle_stop_after=60)
    >>> held_past([Hold("t", 1030.0)], p, now=1000.0)
    Deadline(at=1090.0, reason=<Reason.IDLE: 'idle'>, warn_at=None, warned=False)
    >>> held_past([Hold("t", 930.0)], p, now=1000.0) is None  # lapsed more than 60 s ago
    True
    """
    ends = [hold.expires_at for hold in holds]
    if not ends:
        return None
    at = max(ends) + (policy.idle_stop_after or 0.0)
    # Put off, it is a new deadline: its warning (the policy's warn_before) comes anew too.
    return armed(at, Reason.IDLE, policy) if at > now else None
