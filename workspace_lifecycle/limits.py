"""Per-owner limits: how many workspaces an owner may have running, and in all. Pure.

Theory of operation
-------------------
A limit is decided where the slot is taken: inside the same transaction (the same
compare-and-set) as the write that would take it, on the owner's usage read in that
transaction. Two writes are checked: :func:`~workspace_lifecycle.writes.create_workspace`
(one more workspace, and one more running: its first build is a start) and a start
:func:`~workspace_lifecycle.writes.request_build` (one more running, unless the workspace
already counts as running). No other write raises a count, so no other write needs the
owner's rows: one that lowers a count (a stop, a failed start, a delete) read late only
makes a check refuse a slot that was being freed at that moment, never pass one that was
not free.

What counts
-----------
* **workspaces**: the owner's workspaces that are not deleted (one whose delete build is
  still in flight counts until it succeeds).
* **running**: those whose latest build is a *start* that is pending, running, canceling or
  succeeded: a start queued or in flight, or a workspace up (whatever its agent does). A
  workspace whose latest build is a stop or a delete (in flight or done), or a start that
  failed or was canceled, is not running.

The limits in force for an owner are the ones stored for the owner
(:meth:`~workspace_lifecycle.runtime.Lifecycle.set_limits`), field by field, else the
runtime's default (``Lifecycle(store, limits=...)``); ``None`` is unlimited.
"""

from __future__ import annotations

from typing import Any

import attrs

from . import checks
from .values import Build, JobStatus, Transition

__all__ = [
    "LIMITED",
    "Limits",
    "OwnerRow",
    "Quota",
    "Usage",
    "counts_as_running",
    "in_force",
    "over_limit",
]

#: The most a limit may be (a count, checked as every count is).
MOST = 1_000_000

#: The job statuses of a latest start build whose workspace counts as running.
RUNNING_STATUSES = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELING, JobStatus.SUCCEEDED})

#: The limits, by name, in the order they are checked.
LIMITED = ("workspaces", "running")


def _limit(name: str) -> Any:
    def convert(value: object) -> int | None:
        return None if value is None else checks.count(f"limits.{name}", value, most=MOST)

    return attrs.field(default=None, converter=convert)


@attrs.frozen
class Limits:
    """How many workspaces an owner may have ``running`` and in all (``workspaces``); ``None``
    is unlimited. A limit of 0 refuses every create (or start).

    >>> Limits(running=2, workspaces=5)
    Limits(running=2, workspaces=5)
    >>> Limits(running=-1)
    Traceback (most recent call last):
    ...
    ValueError: limits.running must be a non-negative integer, not -1
    """

    running: int | None = _limit("running")
    workspaces: int | None = _limit("workspaces")

    def over(self, default: Limits | None) -> Limits:
        """These limits, each unset one (``None``) taken from ``default``.

        >>> Limits(running=4).over(Limits(running=2, workspaces=5))
        Limits(running=4, workspaces=5)
        """
        if default is None:
            return self
        return Limits(
            self.running if self.running is not None else default.running,
            self.workspaces if self.workspaces is not None else default.workspaces,
        )

    def as_dict(self) -> dict[str, int | None]:
        return {"running": self.running, "workspaces": self.workspaces}


@attrs.frozen
class OwnerRow:
    """The row stored per owner: the limits set for the owner (``set_limits``)."""

    owner: str
    limits: Limits


def _stored(limits: Limits | None) -> Limits | None:
    """Limits with every field unset are no limits stored: the default applies either way."""
    return None if limits == Limits() else limits


@attrs.frozen
class Usage:
    """What an owner has, read in one snapshot with the limits stored for the owner
    (``None``: none stored, or all unset: the runtime's default applies).

    >>> Usage("al", limits=Limits()).limits is None
    True
    """

    owner: str
    running: int = 0
    workspaces: int = 0
    limits: Limits | None = attrs.field(default=None, converter=_stored)

    def as_dict(self, default: Limits | None = None) -> dict[str, Any]:
        """The usage and the limits in force (see :func:`in_force`), as the tools answer it."""
        limits = in_force(self, default)
        return {
            "owner": self.owner,
            "used": {"running": self.running, "workspaces": self.workspaces},
            "allowed": limits.as_dict(),
        }


@attrs.frozen
class Quota:
    """An owner over a limit: which one, what is used and what is allowed."""

    owner: str
    limit: str  # "running" or "workspaces"
    used: int
    allowed: int


def counts_as_running(latest: Build | None) -> bool:
    """Does a workspace whose latest build is ``latest`` count as running (see the module)?

    >>> from workspace_lifecycle.values import Build, JobStatus, Transition
    >>> counts_as_running(Build("b1", "w1", 1, Transition.START, JobStatus.PENDING))
    True
    >>> counts_as_running(Build("b2", "w1", 2, Transition.STOP, JobStatus.PENDING))
    False
    """
    return latest is not None and latest.transition is Transition.START and latest.status in RUNNING_STATUSES


def in_force(usage: Usage | None, default: Limits | None) -> Limits:
    """The limits in force: the owner's stored ones over the runtime's ``default``."""
    stored = None if usage is None else usage.limits
    if stored is None:
        return default or Limits()
    return stored.over(default)


def over_limit(
    usage: Usage, default: Limits | None, *, adds_running: bool, adds_workspace: bool
) -> Quota | None:
    """The limit one more workspace (``adds_workspace``) and one more running one
    (``adds_running``) would exceed for ``usage``'s owner, or ``None`` when both fit.

    >>> u = Usage("alice", running=2, workspaces=2)
    >>> over_limit(u, Limits(running=2), adds_running=True, adds_workspace=False)
    Quota(owner='alice', limit='running', used=2, allowed=2)
    >>> over_limit(u, Limits(running=3), adds_running=True, adds_workspace=True) is None
    True
    """
    limits = in_force(usage, default)
    if adds_workspace and limits.workspaces is not None and usage.workspaces + 1 > limits.workspaces:
        return Quota(usage.owner, "workspaces", usage.workspaces, limits.workspaces)
    if adds_running and limits.running is not None and usage.running + 1 > limits.running:
        return Quota(usage.owner, "running", usage.running, limits.running)
    return None
