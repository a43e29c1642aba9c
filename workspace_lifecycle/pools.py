"""Warm pools: workspaces built before any chat asks for one, and the decisions about them. Pure.

Theory of operation
-------------------
A :class:`Pool` is declared with a name, a size, the build parameters of its workspaces and a
time to live. Its workspaces are ordinary workspaces, built by the ordinary build path (a
provisioner sees a pending start build like any other), bound to no chat: they belong to the
pool's *holder*, a row of the chats table whose id (:func:`holder_id`) no caller can register
(ids are refused with a control character in them) and whose owner is empty (so no owner's
limits count a pooled workspace before a chat claims it).

Three decisions, all here and all on values read in one transaction:

* **which to claim** (:func:`choose`): a ready member (its start build succeeded and its agent
  is ready, or it has none) whose time to live has not run out. Concurrent claimers of one pool
  spread over the ready members by their chat id, so that most of them do not all try the
  first one; the claim's compare-and-set (:func:`~workspace_lifecycle.writes.claim_pooled`)
  makes sure each member goes to exactly one chat whatever they choose.
* **when to replenish** (:func:`shortfall`): while fewer than ``size`` members are ready or on
  their way (a start build in flight), build the difference. The fill's own write
  (:func:`~workspace_lifecycle.writes.fill_pool`) decides again on the rows it read, so
  replicas that replenish at once never build more than ``size``.
* **when to expire** (:func:`ttl_deadline`): a member is born with a ``retention`` deadline
  ``ttl`` seconds later, a stored deadline like any other: the deadline scheduler of any replica
  fires its delete build exactly once, and its end is the news that wakes the pool's keeper to
  replace it. A claim re-arms the deadline by the claiming chat's policy.

A member that failed or stopped is of no use to a chat: :func:`retired` names it, and the keeper
deletes it (one compare-and-set delete build), which the replacement does not wait for.

Rules for this module: no I/O, no awaits, no clocks, no anyio.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence

import attrs

from . import checks
from .machine import derive_state
from .values import (
    AgentLifecycle,
    Deadline,
    EventKind,
    JobStatus,
    Reason,
    StoreEvent,
    Transition,
    WorkspaceFacts,
    WorkspaceState,
    check_parameters,
)

__all__ = [
    "HOLDER_PREFIX",
    "Pool",
    "PoolCounts",
    "choose",
    "claimed_from",
    "counts",
    "holder_id",
    "is_ready",
    "pool_of",
    "next_expiry",
    "pool_of_event",
    "retired",
    "wakes_keeper",
    "shortfall",
    "ttl_deadline",
]

#: The prefix of a pool holder's chat id: a control character, which
#: :func:`~workspace_lifecycle.checks.identifier` refuses in every id a caller passes.
HOLDER_PREFIX = "\x1fpool:"

#: The most workspaces one pool keeps (a pool is a cache, not a fleet).
MAX_POOL_SIZE = 1000


def _size(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    checks.count("size", value, most=MAX_POOL_SIZE)


def _name(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    checks.identifier("pool name", value, most=64)


def _ttl(value: object) -> float | None:
    return None if value is None else checks.seconds("ttl", value)


@attrs.frozen
class Pool:
    """A warm pool: ``size`` workspaces built with ``parameters``, each rebuilt ``ttl`` seconds
    after it was queued unless a chat claimed it first (``None``: kept until claimed).

    >>> Pool("default", size=2, parameters={"image": "py"}, ttl=3600)
    Pool(name='default', size=2, parameters={'image': 'py'}, ttl=3600.0)
    >>> Pool("default", size=-1)
    Traceback (most recent call last):
    ...
    ValueError: size must be a non-negative integer, not -1
    """

    name: str = attrs.field(validator=_name)
    size: int = attrs.field(validator=_size)
    parameters: Mapping[str, str] = attrs.field(factory=dict, converter=check_parameters, eq=False)
    ttl: float | None = attrs.field(default=None, converter=_ttl)

    @property
    def holder(self) -> str:
        """The chat id its unclaimed workspaces are bound to (:func:`holder_id`)."""
        return holder_id(self.name)


def holder_id(pool: str) -> str:
    """The chat id of ``pool``'s holder row.

    >>> holder_id("default") == HOLDER_PREFIX + "default"
    True
    """
    return HOLDER_PREFIX + pool


def pool_of(chat_id: str) -> str | None:
    """The pool whose holder ``chat_id`` is, or ``None`` for a chat.

    >>> pool_of(holder_id("gpu")), pool_of("chat-1")
    ('gpu', None)
    """
    return chat_id[len(HOLDER_PREFIX) :] if chat_id.startswith(HOLDER_PREFIX) else None


def claimed_from(event: StoreEvent) -> str | None:
    """The pool a ``chat_bound`` event's workspace was claimed from (``None``: a new one)."""
    if event.kind is not EventKind.CHAT_BOUND or event.details is None:
        return None
    pool = event.details.get("pool")
    return pool if isinstance(pool, str) else None


def pool_of_event(event: StoreEvent) -> str | None:
    """The pool an event is news for: one about a member (its builds, its agent, its deletion),
    or the claim that took a member (a ``chat_bound`` event that names the pool)."""
    return pool_of(event.chat_id) or claimed_from(event)


def wakes_keeper(event: StoreEvent) -> str | None:
    """The pool whose keeper ``event`` may give work to (a member claimed, failed, stopped,
    being deleted or gone), or ``None``: news that only brings a member closer to ready (its
    start build queued, claimed by a provisioner or succeeded, its agent starting or ready, its
    deadline set) changes no decision of the keeper's, so it sleeps on."""
    if event.kind is EventKind.CHAT_BOUND:  # a claim (a fill binds a member to its holder)
        return claimed_from(event)
    pool = pool_of(event.chat_id)
    if pool is None:
        return None
    kind = event.kind
    if kind is EventKind.DEADLINE_SET or kind is EventKind.BUILD_UPDATED:
        return None
    if kind is EventKind.BUILD_QUEUED and event.transition is Transition.START:
        return None
    if (
        kind is EventKind.BUILD_FINISHED
        and event.transition is Transition.START
        and event.status is JobStatus.SUCCEEDED
    ):
        return None
    if kind is EventKind.AGENT_UPDATED and event.agent in _COMING_UP:
        return None
    return pool


_COMING_UP = (AgentLifecycle.CREATED, AgentLifecycle.STARTING, AgentLifecycle.READY)


def next_expiry(members: Iterable[WorkspaceFacts], at: float) -> float | None:
    """When the next member not yet expired at ``at`` expires (the keeper's next deadline)."""
    due = [
        m.workspace.deadline.at
        for m in members
        if m.workspace.deadline is not None and not m.workspace.deleted and not m.workspace.deadline.due(at)
    ]
    return min(due, default=None)


def ttl_deadline(ttl: float | None, at: float) -> Deadline | None:
    """The deadline a member is born with at ``at``: deleted (and so replaced) ``ttl`` later."""
    return None if ttl is None else Deadline(at + ttl, Reason.RETENTION)


def is_ready(facts: WorkspaceFacts, at: float) -> bool:
    """May a chat claim this member at ``at``? Its start build succeeded, its agent is ready or
    it has none, it is not deleted, and its time to live has not run out."""
    ws = facts.workspace
    if ws.deleted or (ws.deadline is not None and ws.deadline.due(at)):
        return False
    state = derive_state(facts)
    if state is WorkspaceState.AGENT_READY:
        return True
    latest = facts.latest_build
    return state is WorkspaceState.RUNNING and latest is not None and latest.has_agent is False


def _warming(facts: WorkspaceFacts) -> bool:
    """On its way to ready: a start build in flight, or an agent still starting."""
    latest = facts.latest_build
    if facts.workspace.deleted or latest is None or latest.transition is not Transition.START:
        return False
    if latest.status.in_progress:
        return True
    agent = facts.agent
    return (
        latest.status is JobStatus.SUCCEEDED
        and agent is not None
        and agent.build_number == latest.number
        and agent.lifecycle in (AgentLifecycle.CREATED, AgentLifecycle.STARTING)
    )


def _live(facts: WorkspaceFacts, at: float) -> bool:
    return is_ready(facts, at) or (_warming(facts) and not _expired(facts, at))


def _expired(facts: WorkspaceFacts, at: float) -> bool:
    deadline = facts.workspace.deadline
    return deadline is not None and deadline.due(at)


def choose(members: Sequence[WorkspaceFacts], chat_id: str, at: float) -> WorkspaceFacts | None:
    """The member a claim by ``chat_id`` at ``at`` takes, or ``None`` when none is ready.

    Claimers spread over the ready members by a hash of their chat id (stable across
    processes), so concurrent claims mostly take different members.

    >>> choose([], "chat-1", 0.0) is None
    True
    """
    ready = sorted((m for m in members if is_ready(m, at)), key=lambda m: m.workspace_id)
    if not ready:
        return None
    return ready[zlib.crc32(chat_id.encode("utf-8", "surrogatepass")) % len(ready)]


def shortfall(pool: Pool, members: Iterable[WorkspaceFacts], at: float) -> int:
    """How many workspaces to build now: ``size`` less the members ready or on their way."""
    return max(0, pool.size - sum(1 for m in members if _live(m, at)))


def retired(members: Iterable[WorkspaceFacts], at: float) -> list[WorkspaceFacts]:
    """Members of no use to any chat that nothing is deleting yet, whose delete build is the
    keeper's to fire: failed or stopped, or past their time to live (the deadline scheduler
    fires that delete too when it runs; the delete's compare-and-set lets one of them win),
    with no build in flight. A member whose agent failed to start counts as failed."""
    out = []
    for m in members:
        latest = m.latest_build
        if m.workspace.deleted or latest is None or latest.status.in_progress:
            continue
        if latest.transition is Transition.DELETE:
            continue  # a delete that failed: left to a person (it would fail again)
        if _expired(m, at) or not (is_ready(m, at) or _warming(m)):
            out.append(m)
    return out


@attrs.frozen
class PoolCounts:
    """A pool at a glance, for ``pool status`` and the answers: members ready to claim, on
    their way, and of no use (failed, stopped, expired or being deleted)."""

    name: str
    size: int
    ready: int
    warming: int
    other: int

    def as_dict(self) -> dict[str, object]:
        return {
            "pool": self.name,
            "size": self.size,
            "ready": self.ready,
            "warming": self.warming,
            "other": self.other,
        }


def counts(pool: Pool, members: Iterable[WorkspaceFacts], at: float) -> PoolCounts:
    """How ``pool``'s members stand at ``at``."""
    ready = warming = other = 0
    for m in members:
        if m.workspace.deleted:
            continue
        if is_ready(m, at):
            ready += 1
        elif _live(m, at):
            warming += 1
        else:
            other += 1
    return PoolCounts(pool.name, pool.size, ready, warming, other)
