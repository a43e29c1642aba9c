"""Value types: the state enum, Coder's vocabularies, stored rows, events and results.

Every value is a frozen attrs class or an ``enum.Enum``; nothing here does I/O. Enum values are
the exact strings Coder uses (and the strings stored in every adapter), so a row read back is
parsed with :func:`parse_enum`, which names the row instead of raising a bare ``KeyError``.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from .checks import positive_seconds
from .errors import BuildConflictError, CorruptStateError

__all__ = [
    "Agent",
    "AgentLifecycle",
    "Build",
    "Chat",
    "DEADLINE_TRANSITION",
    "Deadline",
    "Deferred",
    "EventKind",
    "Hold",
    "JobStatus",
    "Lease",
    "Policy",
    "Reason",
    "StateChange",
    "StoreEvent",
    "ToolResult",
    "Transition",
    "Workspace",
    "WorkspaceFacts",
    "WorkspaceState",
    "check_details",
    "check_parameters",
    "dump_holds",
    "parse_deadline",
    "parse_deferred",
    "parse_enum",
    "parse_holds",
    "parse_lease",
    "parse_policy",
]

#: Bounds of build parameters (template parameters handed to the provisioner).
MAX_PARAMETERS = 64
MAX_PARAMETER_NAME = 128
MAX_PARAMETER_VALUE = 4096
#: Bounds of a failed build's structured details (what the provisioner tells the model).
MAX_DETAILS_BYTES = 16 * 1024
MAX_DETAILS_DEPTH = 8


class WorkspaceState(enum.Enum):
    """The six states of a chat's workspace."""

    NO_WORKSPACE = "no_workspace"
    STOPPED = "stopped"
    BUILDING = "building"
    RUNNING = "running"
    AGENT_READY = "agent_ready"
    FAILED = "failed"


class Transition(enum.Enum):
    """What a build does to its workspace (Coder's ``WorkspaceTransition``)."""

    START = "start"
    STOP = "stop"
    DELETE = "delete"


class JobStatus(enum.Enum):
    """The status of a build's provisioner job (Coder's ``ProvisionerJobStatus``)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELING = "canceling"
    CANCELED = "canceled"
    FAILED = "failed"

    @property
    def in_progress(self) -> bool:
        return self in _IN_PROGRESS

    @property
    def finished(self) -> bool:
        return self not in _IN_PROGRESS


_IN_PROGRESS = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.CANCELING})


class AgentLifecycle(enum.Enum):
    """The workspace agent's lifecycle state (Coder's ``WorkspaceAgentLifecycleState``)."""

    CREATED = "created"
    STARTING = "starting"
    READY = "ready"
    START_TIMEOUT = "start_timeout"
    START_ERROR = "start_error"
    SHUTTING_DOWN = "shutting_down"
    SHUTDOWN_TIMEOUT = "shutdown_timeout"
    SHUTDOWN_ERROR = "shutdown_error"
    OFF = "off"
    #: It was ready, then stopped answering its provisioner's probe (its process still runs);
    #: ``ready`` again once it answers. Coder's word for an agent that stopped answering.
    DISCONNECTED = "disconnected"

    @property
    def pending(self) -> bool:
        """Still on its way to ``ready`` (Coder keeps waiting in these)."""
        return self in (AgentLifecycle.CREATED, AgentLifecycle.STARTING)

    @property
    def was_ready(self) -> bool:
        """It reached ``ready`` (and may have stopped answering since): its end is ``off``."""
        return self in (AgentLifecycle.READY, AgentLifecycle.DISCONNECTED)


class EventKind(enum.Enum):
    """What a stored event records."""

    CHAT_BOUND = "chat_bound"  # a chat now points at a (new) workspace
    BUILD_QUEUED = "build_queued"
    BUILD_UPDATED = "build_updated"  # job status moved between in-progress statuses
    BUILD_FINISHED = "build_finished"
    AGENT_UPDATED = "agent_updated"
    WORKSPACE_DELETED = "workspace_deleted"
    DEADLINE_SET = "deadline_set"  # the workspace's next automatic action moved (or was disarmed)
    #: The armed deadline comes within its chat's ``warn_before``: once per armed deadline.
    DEADLINE_APPROACHING = "deadline_approaching"
    #: A request deferred behind the build in flight was stored on the workspace (its
    #: ``transition``), or withdrawn by a later request (``transition`` ``None``).
    REQUEST_DEFERRED = "request_deferred"


E = TypeVar("E", bound=enum.Enum)


def parse_enum(kind: type[E], value: object, *, table: str, key: object, column: str) -> E:
    """Parse a stored string into ``kind``; an unknown value is a :class:`CorruptStateError`."""
    try:
        return kind(value)
    except ValueError:
        raise CorruptStateError(table, key, column, value) from None


def _opt(kind: type[E]) -> Any:
    return attrs.validators.optional(attrs.validators.instance_of(kind))


_str = attrs.validators.instance_of(str)


class Reason(enum.Enum):
    """Why a build was fired: somebody asked, or a deadline passed."""

    REQUEST = "request"
    IDLE = "idle"
    RETENTION = "retention"


#: A duration of a policy: positive seconds, or ``None`` for never.
_seconds_or_none = positive_seconds(none="never")


@attrs.frozen
class Policy:
    """What happens to a chat's workspace between turns (seconds; ``None`` means never).

    ``warn_before``: a ``deadline_approaching`` event that many seconds before each idle stop
    and retention delete (shorter than both, so a warning always comes after the deadline was
    set); ``None``: no warning.

    >>> Policy(idle_stop_after=900)
    Policy(idle_stop_after=900, delete_after_stopped=None, warn_before=None)
    >>> Policy(idle_stop_after=-1)
    Traceback (most recent call last):
    ...
    ValueError: idle_stop_after must be a positive finite number of seconds or None (never), not -1
    >>> Policy(idle_stop_after=60, warn_before=60)
    Traceback (most recent call last):
    ...
    ValueError: warn_before (60) must be shorter than idle_stop_after (60)
    """

    idle_stop_after: float | None = attrs.field(default=None, validator=_seconds_or_none)
    delete_after_stopped: float | None = attrs.field(default=None, validator=_seconds_or_none)
    warn_before: float | None = attrs.field(default=None, validator=_seconds_or_none)

    @warn_before.validator
    def _shorter(self, attribute: attrs.Attribute[float | None], value: float | None) -> None:
        if value is None:
            return
        for name in ("idle_stop_after", "delete_after_stopped"):
            duration = getattr(self, name)
            if duration is not None and value >= duration:
                raise ValueError(f"{attribute.name} ({value!r}) must be shorter than {name} ({duration!r})")

    @property
    def never(self) -> bool:
        """Nothing ever happens automatically."""
        return self.idle_stop_after is None and self.delete_after_stopped is None


#: The build each deadline's reason fires: idle stops, retention deletes. The one table of it:
#: a reason missing here arms no deadline.
DEADLINE_TRANSITION: Mapping[Reason, Transition] = {
    Reason.IDLE: Transition.STOP,
    Reason.RETENTION: Transition.DELETE,
}


@attrs.frozen
class Deadline:
    """A workspace's next automatic action: at wall-clock time ``at``, for ``reason``.

    ``warn_at``: when a ``deadline_approaching`` event is due (``None``: never), computed from
    the chat's ``warn_before`` when the deadline was armed; ``warned``: that event was written
    (a pushed deadline is a new value, not warned yet).
    """

    at: float
    reason: Reason = attrs.field(validator=attrs.validators.in_(tuple(DEADLINE_TRANSITION)))
    warn_at: float | None = None
    warned: bool = False

    @property
    def transition(self) -> Transition:
        """The build the deadline fires (:data:`DEADLINE_TRANSITION`)."""
        return DEADLINE_TRANSITION[self.reason]

    def due(self, now: float) -> bool:
        """Has the deadline passed at ``now``? (At the deadline itself it has.)"""
        return self.at <= now


def parse_policy(
    idle_stop_after: object, delete_after_stopped: object, warn_before: object = None, *, key: object
) -> Policy:
    """A chat's policy from its stored columns; a bad value is a :class:`CorruptStateError`."""
    try:
        return Policy(
            idle_stop_after=idle_stop_after,  # type: ignore[arg-type]
            delete_after_stopped=delete_after_stopped,  # type: ignore[arg-type]
            warn_before=warn_before,  # type: ignore[arg-type]
        )
    except ValueError:
        raise CorruptStateError(
            "chats",
            key,
            "idle_stop_after/delete_after_stopped/warn_before",
            (idle_stop_after, delete_after_stopped, warn_before),
        ) from None


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def parse_deadline(
    at: object, reason: object, warn_at: object = None, warned: object = False, *, key: object
) -> Deadline | None:
    """A workspace's armed deadline from its stored columns (``at`` and ``reason`` both set, or
    neither; ``warn_at`` and ``warned`` only with them)."""
    if at is None and reason is None:
        return None
    if not _finite(at):
        raise CorruptStateError("workspaces", key, "deadline_at", at)
    kind = parse_enum(Reason, reason, table="workspaces", key=key, column="deadline_reason")
    if kind not in DEADLINE_TRANSITION:
        raise CorruptStateError("workspaces", key, "deadline_reason", reason)
    if warn_at is not None and not _finite(warn_at):
        raise CorruptStateError("workspaces", key, "deadline_warn_at", warn_at)
    if warned not in (True, False, 0, 1):  # SQLite stores booleans as integers
        raise CorruptStateError("workspaces", key, "deadline_warned", warned)
    return Deadline(
        float(at),  # type: ignore[arg-type]
        kind,
        None if warn_at is None else float(warn_at),  # type: ignore[arg-type]
        bool(warned),
    )


@attrs.frozen
class Deferred:
    """A request answered ``wait=False`` while another kind of build ran, stored on its
    workspace as intent: fire a ``transition`` build once build ``behind`` ends, if the table
    still allows it then. The write that finishes build ``behind`` acts on it (and clears it)
    in its own transaction, so no process needs to be alive to carry it out.
    ``requested_by`` is the owner whose request it is; ``running_limit`` the runtime's default
    limit of running workspaces when it was asked (the runtime that carries it out may be gone:
    the limit travels with the request), checked with the owner's stored limits when it fires.
    """

    transition: Transition = attrs.field(validator=attrs.validators.instance_of(Transition))
    behind: int = attrs.field(validator=attrs.validators.instance_of(int))
    requested_by: str = attrs.field(validator=_str)
    running_limit: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(int))
    )

    def record(self) -> dict[str, Any]:
        """The JSON object a store keeps (:func:`parse_deferred` reads it back)."""
        record: dict[str, Any] = {
            "transition": self.transition.value,
            "behind": self.behind,
            "by": self.requested_by,
        }
        if self.running_limit is not None:
            record["running"] = self.running_limit
        return record

    def stored(self) -> str:
        """:meth:`record` as JSON text."""
        return json.dumps(self.record())


def parse_deferred(value: object, *, key: object) -> Deferred | None:
    """A workspace's deferred request from its stored column (JSON text, or an already parsed
    object); a bad value is a :class:`CorruptStateError` naming the row.

    >>> parse_deferred(Deferred(Transition.START, 2, "alice").stored(), key="w1")
    Deferred(transition=<Transition.START: 'start'>, behind=2, requested_by='alice', running_limit=None)
    """
    if value is None:
        return None
    try:
        data = json.loads(value) if isinstance(value, str) else value
        if not isinstance(data, dict) or isinstance(data.get("behind"), bool):
            raise ValueError(value)
        running = data.get("running")
        if isinstance(running, bool):
            raise ValueError(value)
        return Deferred(Transition(data["transition"]), data["behind"], data["by"], running)
    except (ValueError, TypeError, KeyError):
        raise CorruptStateError("workspaces", key, "deferred", value) from None


@attrs.frozen
class Hold:
    """A turn holding a workspace (:meth:`~workspace_lifecycle.Lifecycle.turn`): its fencing
    ``token`` and when it lapses (``expires_at``, store time) unless its holder renews it.

    While a hold is live no idle stop fires; a hold whose holder died lapses at its expiry.
    """

    token: str = attrs.field(validator=_str)
    expires_at: float = attrs.field(converter=float)

    def due(self, now: float) -> bool:
        """Has the hold lapsed at ``now``? (At its expiry itself it has, as a lease.)

        >>> Hold("t", 100.0).due(99.9), Hold("t", 100.0).due(100.0)
        (False, True)
        """
        return self.expires_at <= now


def parse_holds(value: object, *, key: object) -> tuple[Hold, ...]:
    """A workspace's holds from their stored column: ``None`` (none) or a JSON array (text, or
    already decoded by the driver) of ``[token, expires_at]`` pairs; anything else is a
    :class:`CorruptStateError` naming the row."""
    if value is None:
        return ()
    try:
        pairs = json.loads(value) if isinstance(value, str) else value
        if not isinstance(pairs, list):
            raise ValueError(pairs)
        holds = []
        for pair in pairs:
            token, expires_at = pair
            if not isinstance(token, str) or isinstance(expires_at, bool):
                raise ValueError(pair)
            if not isinstance(expires_at, int | float) or not math.isfinite(expires_at):
                raise ValueError(pair)
            holds.append(Hold(token, expires_at))
        return tuple(holds)
    except (ValueError, TypeError):
        raise CorruptStateError("workspaces", key, "holds", value) from None


def dump_holds(holds: tuple[Hold, ...]) -> str | None:
    """The stored column of ``holds`` (:func:`parse_holds` reads it back); ``None`` for none."""
    if not holds:
        return None
    return json.dumps([[hold.token, hold.expires_at] for hold in holds])


@attrs.frozen
class Chat:
    """A chat and the workspace it is bound to (``None`` before ``create_workspace``)."""

    chat_id: str = attrs.field(validator=_str)
    owner: str = attrs.field(validator=_str)
    workspace_id: str | None = None
    #: What happens to the chat's workspace between turns (stored with the chat).
    policy: Policy = attrs.field(factory=lambda: Policy(), validator=attrs.validators.instance_of(Policy))


@attrs.frozen
class Workspace:
    workspace_id: str = attrs.field(validator=_str)
    chat_id: str = attrs.field(validator=_str)
    owner: str = attrs.field(validator=_str)
    name: str = attrs.field(validator=_str)
    deleted: bool = False
    #: The next automatic action (idle stop, retention delete), if one is armed.
    deadline: Deadline | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Deadline))
    )
    #: A ``wait=False`` request waiting out the build in flight (see :class:`Deferred`).
    deferred: Deferred | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(Deferred))
    )
    #: The turns holding it (:class:`Hold`), live or lapsed but not yet cleared.
    holds: tuple[Hold, ...] = ()

    @property
    def full_name(self) -> str:
        """``owner/name``, as Coder's ``Workspace.FullName()``."""
        return f"{self.owner}/{self.name}"


@attrs.frozen
class Build:
    """One workspace build and its provisioner job, as stored."""

    build_id: str = attrs.field(validator=_str)
    workspace_id: str = attrs.field(validator=_str)
    number: int = attrs.field(validator=attrs.validators.instance_of(int))
    transition: Transition = attrs.field(validator=attrs.validators.instance_of(Transition))
    status: JobStatus = attrs.field(validator=attrs.validators.instance_of(JobStatus))
    error: str | None = None
    has_agent: bool | None = None  # known once a start build succeeded
    worker: str | None = None
    #: Template parameters the build was asked with (strings; empty when none were given).
    parameters: Mapping[str, str] = attrs.field(factory=dict, eq=False, hash=False)
    #: What the provisioner attached when the build failed (validations, quota, next steps).
    details: Mapping[str, Any] | None = attrs.field(default=None, eq=False, hash=False)
    #: Why the build was fired: a request, or a deadline (idle stop, retention delete).
    reason: Reason = attrs.field(default=Reason.REQUEST, validator=attrs.validators.instance_of(Reason))
    #: The fencing token of the claim (set by ``claim_build``; kept once the build finished,
    #: so its worker can go on reporting the agent the build made; cleared when it expired or
    #: was finished without it).
    lease_token: str | None = None
    #: When the claim's lease runs out unless renewed (store time); ``None`` once finished.
    lease_expires_at: float | None = None

    @property
    def in_flight(self) -> bool:
        """Claimed and not finished: a worker holds it (``running`` or ``canceling``)."""
        return self.status in (JobStatus.RUNNING, JobStatus.CANCELING)

    @property
    def lease(self) -> Lease | None:
        """The claim's lease as a value, while it has one (a token and an expiry)."""
        if self.lease_token is None or self.lease_expires_at is None:
            return None
        return Lease(self.build_id, self.workspace_id, self.worker, self.lease_token, self.lease_expires_at)

    def finished_under(self, token: str) -> bool:
        """Did the holder of lease ``token`` finish this build? (Its lease then ends quietly:
        a refused renewal is no lost lease.) A build finished by anyone else, a reaper or a
        finish without the lease, dropped the token.

        >>> b = Build("b1", "w1", 1, Transition.START, JobStatus.SUCCEEDED, lease_token="t")
        >>> b.finished_under("t"), b.finished_under("u")
        (True, False)
        """
        return self.status.finished and self.lease_token == token

    @property
    def starts_agent(self) -> bool:
        """A succeeded start build: it says whether it produced an agent."""
        return self.status is JobStatus.SUCCEEDED and self.transition is Transition.START

    def finished_as(
        self,
        status: JobStatus,
        error: str | None,
        *,
        has_agent: bool,
        details: Mapping[str, Any] | None = None,
    ) -> Build:
        """This build finished with ``status``: the one rule every store's ``finish_build`` uses.

        Raises ``ValueError`` for a status that is not final or bad ``details``, and
        :class:`BuildConflictError` if the build already finished. The error and the details
        are kept only for a build that did not succeed; ``has_agent`` only for a succeeded start
        build.
        """
        if not status.finished:
            raise ValueError(f"finish_build takes a final status, not {status.value!r}")
        checked = check_details(details)
        if self.status.finished:
            raise BuildConflictError(f"build {self.build_id} already finished ({self.status.value})")
        failed = status is not JobStatus.SUCCEEDED
        starts_agent = not failed and self.transition is Transition.START
        return attrs.evolve(
            self,
            status=status,
            error=error if failed else None,
            details=checked if failed else None,
            has_agent=has_agent if starts_agent else None,
            lease_expires_at=None,  # a finished build holds no lease
        )


def parse_lease(token: object, expires_at: object, *, key: object) -> tuple[str | None, float | None]:
    """A build's stored lease columns (``lease_token``, ``lease_expires_at``), checked: a
    token is text, an expiry a finite number and never without a token; anything else raises
    :class:`~workspace_lifecycle.errors.CorruptStateError` naming the row."""
    if token is not None and (not isinstance(token, str) or not token):
        raise CorruptStateError("builds", key, "lease_token", token)
    if expires_at is None:
        return token, None
    if (
        isinstance(expires_at, bool)
        or not isinstance(expires_at, (int, float))
        or not math.isfinite(expires_at)
        or token is None
    ):
        raise CorruptStateError("builds", key, "lease_expires_at", expires_at)
    return token, float(expires_at)


@attrs.frozen
class Lease:
    """A claimed build's lease as stored: who holds it (``worker``, fencing ``token``) and
    until when (``expires_at``, store time), unless renewed."""

    build_id: str
    workspace_id: str
    worker: str | None
    token: str
    expires_at: float

    @classmethod
    def read(
        cls, build_id: str, workspace_id: str, worker: str | None, token: object, expires_at: object
    ) -> Lease:
        """A lease from a build row's columns (one with an expiry); corrupt ones raise
        :class:`~workspace_lifecycle.errors.CorruptStateError` naming the row."""
        checked_token, checked_expiry = parse_lease(token, expires_at, key=build_id)
        assert checked_token is not None and checked_expiry is not None, "a row with an expiry"
        return cls(build_id, workspace_id, worker, checked_token, checked_expiry)

    def due(self, now: float) -> bool:
        """Has the lease run out at ``now``? (At its expiry itself it has: the one comparison
        of a lease's end, for the store's expiry, a fencing check and a worker's own view.)

        >>> lease = Lease("b1", "w1", "worker", "t", expires_at=100.0)
        >>> lease.due(99.9), lease.due(100.0)
        (False, True)
        """
        return self.expires_at <= now

    def renewed(self, expires_at: float) -> Lease:
        """The same lease, running out at ``expires_at`` instead."""
        return attrs.evolve(self, expires_at=expires_at)


@attrs.frozen
class Agent:
    """The agent produced by a start build (one per workspace, the latest build's)."""

    workspace_id: str
    build_number: int
    lifecycle: AgentLifecycle = attrs.field(validator=attrs.validators.instance_of(AgentLifecycle))
    #: Where it can be reached (names to URLs, :func:`~workspace_lifecycle.endpoints.check_endpoints`).
    endpoints: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class WorkspaceFacts:
    """Everything the state depends on, read in one transaction, with the log's head then."""

    workspace: Workspace
    latest_build: Build | None
    agent: Agent | None
    seq: int

    @property
    def workspace_id(self) -> str:
        return self.workspace.workspace_id


@attrs.frozen
class StoreEvent:
    """One entry of a store's append-only event log.

    ``seq`` is the store's commit-ordered sequence number; ``build_number`` is the build the
    event belongs to (for an agent report: the workspace's latest build when it was reported).
    """

    seq: int
    kind: EventKind = attrs.field(validator=attrs.validators.instance_of(EventKind))
    workspace_id: str
    chat_id: str
    build_number: int = 0
    build_id: str | None = None
    transition: Transition | None = attrs.field(default=None, validator=_opt(Transition))
    status: JobStatus | None = attrs.field(default=None, validator=_opt(JobStatus))
    agent: AgentLifecycle | None = attrs.field(default=None, validator=_opt(AgentLifecycle))
    has_agent: bool | None = None
    error: str | None = None
    at: float = 0.0  # wall-clock time of the write, for latency reports
    details: Mapping[str, Any] | None = attrs.field(default=None, eq=False, hash=False)
    #: Build events: why the build was fired. ``deadline_set``: why the deadline is armed.
    reason: Reason | None = attrs.field(default=None, validator=_opt(Reason))
    #: ``deadline_set``: the wall-clock time of the armed deadline, ``None`` once disarmed.
    #: ``deadline_approaching``: the deadline it warns of.
    deadline: float | None = None
    #: ``deadline_set`` and ``deadline_approaching``: when the deadline's warning is due.
    warn_at: float | None = None
    #: ``agent_updated``: where the agent can be reached (``None``: the report named none).
    endpoints: Mapping[str, str] | None = attrs.field(default=None, eq=False, hash=False)

    @classmethod
    def about(
        cls,
        kind: EventKind,
        ws: Workspace,
        build: Build | None,
        *,
        seq: int,
        at: float,
        build_number: int = 0,
        **fields: Any,
    ) -> StoreEvent:
        """The event ``kind`` of ``ws``, carrying ``build``'s number, id, transition and reason
        (without a build: ``build_number``, e.g. the build an agent report belongs to)."""
        if build is not None:
            fields.setdefault("reason", build.reason)
            fields["transition"] = build.transition
        return cls(
            seq=seq,
            kind=kind,
            workspace_id=ws.workspace_id,
            chat_id=ws.chat_id,
            build_number=build.number if build else build_number,
            build_id=build.build_id if build else None,
            at=at,
            **fields,
        )

    def payload(self) -> dict[str, Any]:
        """The optional fields as a JSON-able dict (how adapters store them)."""
        out: dict[str, Any] = {}
        for name in ("build_id", "error", "has_agent", "details", "deadline", "warn_at", "endpoints"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name in ("transition", "status", "agent", "reason"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.value
        return out

    @classmethod
    def from_row(
        cls,
        *,
        seq: int,
        kind: str,
        workspace_id: str,
        chat_id: str,
        build_number: int,
        payload: str | dict[str, Any],
        at: float,
        table: str = "events",
    ) -> StoreEvent:
        """Rebuild an event from its stored columns, naming the row if a value is unknown."""
        try:
            data = json.loads(payload) if isinstance(payload, str) else dict(payload)
        except (ValueError, TypeError):
            raise CorruptStateError(table, seq, "payload", payload) from None

        def enum_or_none(k: type[E], name: str) -> E | None:
            raw = data.get(name)
            if raw is None:
                return None
            return parse_enum(k, raw, table=table, key=seq, column=f"payload.{name}")

        return cls(
            seq=seq,
            kind=parse_enum(EventKind, kind, table=table, key=seq, column="kind"),
            workspace_id=workspace_id,
            chat_id=chat_id,
            build_number=build_number,
            build_id=data.get("build_id"),
            transition=enum_or_none(Transition, "transition"),
            status=enum_or_none(JobStatus, "status"),
            agent=enum_or_none(AgentLifecycle, "agent"),
            has_agent=data.get("has_agent"),
            error=data.get("error"),
            details=_details_or_none(data.get("details"), table=table, key=seq),
            reason=enum_or_none(Reason, "reason"),
            deadline=_number_or_none(data.get("deadline"), table=table, key=seq),
            warn_at=_number_or_none(data.get("warn_at"), table=table, key=seq, column="payload.warn_at"),
            endpoints=_details_or_none(
                data.get("endpoints"), table=table, key=seq, column="payload.endpoints"
            ),
            at=at,
        )

    @property
    def armed(self) -> Deadline | None:
        """The deadline a ``deadline_set`` event arms (``None``: disarmed), or the one a
        ``deadline_approaching`` event leaves armed (warned); ``None`` for other events."""
        if self.deadline is None or self.reason is None:
            return None
        if self.kind is EventKind.DEADLINE_SET:
            return Deadline(self.deadline, self.reason, self.warn_at)
        if self.kind is EventKind.DEADLINE_APPROACHING:
            return Deadline(self.deadline, self.reason, self.warn_at, warned=True)
        return None


def _number_or_none(
    value: object, *, table: str, key: object, column: str = "payload.deadline"
) -> float | None:
    if value is None:
        return None
    if not _finite(value):
        raise CorruptStateError(table, key, column, value)
    return float(value)  # type: ignore[arg-type]


def _details_or_none(
    value: object, *, table: str, key: object, column: str = "payload.details"
) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CorruptStateError(table, key, column, value)
    return value


def check_parameters(parameters: object) -> dict[str, str]:
    """Build parameters as data: a mapping of string names to string values, bounded.

    >>> check_parameters({"region": "eu"})
    {'region': 'eu'}
    >>> check_parameters({"n": 3})
    Traceback (most recent call last):
    ...
    ValueError: parameter 'n' must be a string, not int
    """
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise ValueError(f"parameters must be an object of strings, not {type(parameters).__name__}")
    if len(parameters) > MAX_PARAMETERS:
        raise ValueError(f"at most {MAX_PARAMETERS} parameters, not {len(parameters)}")
    out: dict[str, str] = {}
    for name, value in parameters.items():
        if not isinstance(name, str) or not name or len(name) > MAX_PARAMETER_NAME:
            raise ValueError(
                f"a parameter name must be a string of 1 to {MAX_PARAMETER_NAME} characters, not {name!r:.80}"
            )
        if not isinstance(value, str):
            raise ValueError(f"parameter {name!r} must be a string, not {type(value).__name__}")
        if len(value) > MAX_PARAMETER_VALUE:
            raise ValueError(f"parameter {name!r} is longer than {MAX_PARAMETER_VALUE} characters")
        _check_text(f"parameter {name!r}", name + value)
        out[name] = value
    return out


def check_details(details: object) -> dict[str, Any] | None:
    """A failed build's details as data: a JSON object, bounded in size and depth.

    >>> check_details({"error_code": "INSUFFICIENT_QUOTA", "quota": {"budget": 10}})
    {'error_code': 'INSUFFICIENT_QUOTA', 'quota': {'budget': 10}}
    >>> check_details([1])
    Traceback (most recent call last):
    ...
    ValueError: details must be a JSON object (a dict), not list
    """
    if details is None:
        return None
    if not isinstance(details, Mapping):
        raise ValueError(f"details must be a JSON object (a dict), not {type(details).__name__}")
    _check_json(details, 0)
    try:
        text = json.dumps(details, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"details must be JSON: {exc}") from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DETAILS_BYTES:
        raise ValueError(f"details are larger than {MAX_DETAILS_BYTES} bytes of JSON")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _check_json(value: object, depth: int) -> None:
    if depth > MAX_DETAILS_DEPTH:
        raise ValueError(f"details are nested deeper than {MAX_DETAILS_DEPTH} levels")
    if value is None or isinstance(value, bool | int):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
            raise ValueError("details hold an integer too large for JSON")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("details hold a number that is not finite")
        return
    if isinstance(value, str):
        _check_text("details", value)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"details keys must be strings, not {type(key).__name__}")
            _check_text("details", key)
            _check_json(item, depth + 1)
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, depth + 1)
        return
    raise ValueError(f"details must be JSON; {type(value).__name__} is not")


def _check_text(what: str, text: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{what} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text (a lone surrogate)") from None


@attrs.frozen
class StateChange:
    """A workspace moved from one state to another because of ``event``."""

    chat_id: str
    workspace_id: str
    build_number: int
    from_state: WorkspaceState
    to_state: WorkspaceState
    event: EventKind | None  # None when a resync from the rows moved the state
    seq: int
    at: float
    #: Why the build this change belongs to was fired (``None`` when no build is known).
    reason: Reason | None = None
    #: Where the workspace is reached once the change is made (empty: nowhere, or not said).
    endpoints: Mapping[str, str] = attrs.field(factory=dict, eq=False, hash=False)


@attrs.frozen
class ToolResult:
    """What a tool call answers: exactly the text the model is shown, and its parsed form."""

    is_error: bool
    text: str
    data: dict[str, Any] = attrs.field(eq=False, hash=False)

    @classmethod
    def ok(cls, data: dict[str, Any]) -> ToolResult:
        return cls(is_error=False, text=json.dumps(data, sort_keys=True), data=dict(data))

    @classmethod
    def error(cls, sentence: str) -> ToolResult:
        return cls(is_error=True, text=sentence, data={"error": sentence})
