"""The :class:`Write` every store write decides, and what the write modules share.

A write is a read, a decision and a write inside one transaction (:mod:`~workspace_lifecycle.writes`
tells the whole story): the decision returns a :class:`Write`, the rows it changes and the events
it appends, which the adapter persists. :func:`applied` is the same write applied to the values;
:func:`new_event` and :func:`rearm` make the events the write modules append. Pure: no I/O, no
clocks, no awaits.
"""

from __future__ import annotations

import attrs

from ._replace import replace
from .buildlogs import BuildLog
from .limits import OwnerRow
from .values import Agent, Build, Chat, Deadline, EventKind, StoreEvent, Workspace, WorkspaceFacts

__all__ = [
    "Write",
    "applied",
    "new_event",
    "rearm",
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


def new_event(
    kind: EventKind, ws: Workspace, build: Build | None, *, at: float, build_number: int = 0, **fields: object
) -> StoreEvent:
    """The event ``kind`` of ``ws`` (and ``build``) a write appends; the store numbers it."""
    return StoreEvent.about(kind, ws, build, seq=0, at=at, build_number=build_number, **fields)


def rearm(
    ws: Workspace, armed: Deadline | None, *, at: float, build_number: int
) -> tuple[Workspace, StoreEvent]:
    """``ws`` with ``armed`` as its deadline, and the ``deadline_set`` event that says so."""
    return replace(ws, deadline=armed), new_event(
        EventKind.DEADLINE_SET,
        ws,
        None,
        at=at,
        build_number=build_number,
        deadline=armed.at if armed else None,
        reason=armed.reason if armed else None,
        warn_at=armed.warn_at if armed else None,
    )
