"""Value types: stored rows, events and results, and every value of the core by one name.

Every value is a frozen attrs class or an ``enum.Enum``; nothing here does I/O. The rows
(:class:`Chat`, :class:`Workspace`, :class:`Build`, :class:`Agent`, :class:`Lease`), the facts
and events read from them and the results handed back live here; the rest lives by concern and
is re-exported, so ``from workspace_lifecycle.values import X`` reaches every value:

* :mod:`~workspace_lifecycle.vocabulary`: the state enum and Coder's words (``enum.Enum``
  values are the stored strings, parsed back with :func:`parse_enum`);
* :mod:`~workspace_lifecycle.between_turns`: :class:`Policy`, :class:`Deadline`,
  :class:`Deferred`, :class:`Hold` and the parsers of their columns;
* :mod:`~workspace_lifecycle.build_data`: a build's parameters and failure details, bounded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from .between_turns import (
    DEADLINE_TRANSITION,
    Deadline,
    Deferred,
    Hold,
    Policy,
    dump_holds,
    finite,
    parse_deadline,
    parse_deferred,
    parse_holds,
    parse_policy,
)
from .build_data import MAX_DETAILS_BYTES as MAX_DETAILS_BYTES
from .build_data import MAX_DETAILS_DEPTH as MAX_DETAILS_DEPTH
from .build_data import MAX_PARAMETER_NAME as MAX_PARAMETER_NAME
from .build_data import MAX_PARAMETER_VALUE as MAX_PARAMETER_VALUE
from .build_data import MAX_PARAMETERS as MAX_PARAMETERS
from .build_data import check_details, check_parameters
from .errors import BuildConflictError, CorruptStateError
from .vocabulary import (
    AgentLifecycle,
    E,
    EventKind,
    JobStatus,
    Reason,
    Transition,
    WorkspaceState,
    parse_enum,
)

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
    "lease_due",
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


def _opt(kind: type[E]) -> Any:
    return attrs.validators.optional(attrs.validators.instance_of(kind))


_str = attrs.validators.instance_of(str)


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


def lease_due(expires_at: float, now: float) -> bool:
    """Has a lease that runs out at ``expires_at`` run out at ``now``? The one comparison of a
    lease's end (:meth:`Lease.due`, and a fencing check on a build's columns): at its expiry itself it has."""
    return expires_at <= now


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
        return lease_due(self.expires_at, now)

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
    if not finite(value):
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
