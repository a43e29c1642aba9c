"""The vocabulary of the rows: the state enum and Coder's words, each an ``enum.Enum``.

Enum values are the exact strings Coder uses (and the strings stored in every adapter), so a
row read back is parsed with :func:`parse_enum`, which names the row instead of raising a bare
``KeyError``. Nothing here does I/O; :mod:`~workspace_lifecycle.values` re-exports every name.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from .errors import CorruptStateError

__all__ = [
    "AgentLifecycle",
    "EventKind",
    "JobStatus",
    "Reason",
    "Transition",
    "WorkspaceState",
    "parse_enum",
]


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


class Reason(enum.Enum):
    """Why a build was fired: somebody asked, or a deadline passed."""

    REQUEST = "request"
    IDLE = "idle"
    RETENTION = "retention"
