"""workspace-lifecycle: a chat's workspace as an explicit, event-driven state machine.

The public names are re-exported here; everything else is private to its module.
"""

from ._holds import Turn as Turn
from .adapters import open_store as open_store
from .adapters.base import DEFAULT_HOLD_SECONDS as DEFAULT_HOLD_SECONDS
from .adapters.base import DEFAULT_LEASE_SECONDS as DEFAULT_LEASE_SECONDS
from .adapters.base import ArmedDeadlines as ArmedDeadlines
from .adapters.base import ChatRow as ChatRow
from .adapters.base import Deferral as Deferral
from .adapters.base import Outcome as Outcome
from .adapters.base import Store as Store
from .adapters.driver import RETRY as RETRY
from .adapters.driver import Driver as Driver
from .adapters.driver import Plan as Plan
from .adapters.driver import Read as Read
from .adapters.driver import ReadKind as ReadKind
from .adapters.driver import Rows as Rows
from .adapters.driver import WrappedDriver as WrappedDriver
from .adapters.memory import MemoryStore as MemoryStore
from .adapters.store import DriverStore as DriverStore
from .buildlogs import BuildLog as BuildLog
from .clock import Clock as Clock
from .clock import VirtualClock as VirtualClock
from .clock import WallClock as WallClock
from .deadlines import STANDALONE_POLICY as STANDALONE_POLICY
from .deadlines import in_words as deadline_in_words
from .errors import BuildConflictError as BuildConflictError
from .errors import CallerError as CallerError
from .errors import CorruptStateError as CorruptStateError
from .errors import CursorExpiredError as CursorExpiredError
from .errors import HoldLostError as HoldLostError
from .errors import InvalidEventError as InvalidEventError
from .errors import LeaseLostError as LeaseLostError
from .errors import NotFoundError as NotFoundError
from .errors import OwnershipError as OwnershipError
from .errors import QuotaExceededError as QuotaExceededError
from .errors import StoreBusyError as StoreBusyError
from .errors import StoreClosedError as StoreClosedError
from .errors import StoreError as StoreError
from .errors import StoreUnavailableError as StoreUnavailableError
from .errors import TransientStoreError as TransientStoreError
from .errors import UnsupportedBackendError as UnsupportedBackendError
from .errors import WorkspaceLifecycleError as WorkspaceLifecycleError
from .limits import Limits as Limits
from .limits import Usage as Usage
from .machine import Decision as Decision
from .machine import Request as Request
from .machine import Tracker as Tracker
from .machine import WorkspaceMachine as WorkspaceMachine
from .machine import derive_state as derive_state
from .pools import Pool as Pool
from .process_provisioner import ProcessProvisioner as ProcessProvisioner
from .process_provisioner import UnusableRoot as UnusableRoot
from .process_provisioner import WorkspaceRefused as WorkspaceRefused
from .provisioner import Held as Held
from .provisioner import SimulatedFailure as SimulatedFailure
from .provisioner import SimulatedProvisioner as SimulatedProvisioner
from .provisioner import claims as claims
from .provisioner import holding as holding
from .provisioner import quota_failure as quota_failure
from .provisioner import validation_failure as validation_failure
from .reaper import LeaseReaper as LeaseReaper
from .runtime import Lifecycle as Lifecycle
from .skew import ClockSkew as ClockSkew
from .tools import dispatch_tool as dispatch_tool
from .tools import tool_definitions as tool_definitions
from .values import Agent as Agent
from .values import AgentLifecycle as AgentLifecycle
from .values import Build as Build
from .values import Chat as Chat
from .values import Deadline as Deadline
from .values import Deferred as Deferred
from .values import EventKind as EventKind
from .values import Hold as Hold
from .values import JobStatus as JobStatus
from .values import Lease as Lease
from .values import Policy as Policy
from .values import Reason as Reason
from .values import StateChange as StateChange
from .values import StoreEvent as StoreEvent
from .values import ToolResult as ToolResult
from .values import Transition as Transition
from .values import Workspace as Workspace
from .values import WorkspaceFacts as WorkspaceFacts
from .values import WorkspaceState as WorkspaceState

__version__ = "0.3.0.dev0"  # the one source of the version: pyproject.toml reads it

__all__ = [
    "DEFAULT_HOLD_SECONDS",
    "DEFAULT_LEASE_SECONDS",
    "RETRY",
    "Driver",
    "DriverStore",
    "Plan",
    "Read",
    "ReadKind",
    "Rows",
    "WrappedDriver",
    "STANDALONE_POLICY",
    "Agent",
    "ArmedDeadlines",
    "AgentLifecycle",
    "Build",
    "BuildConflictError",
    "BuildLog",
    "CallerError",
    "Chat",
    "ChatRow",
    "Clock",
    "ClockSkew",
    "CorruptStateError",
    "CursorExpiredError",
    "Deadline",
    "Deferral",
    "Deferred",
    "Decision",
    "EventKind",
    "Held",
    "InvalidEventError",
    "JobStatus",
    "Hold",
    "HoldLostError",
    "Lease",
    "LeaseLostError",
    "LeaseReaper",
    "Lifecycle",
    "Limits",
    "MemoryStore",
    "NotFoundError",
    "Outcome",
    "OwnershipError",
    "Policy",
    "Pool",
    "ProcessProvisioner",
    "QuotaExceededError",
    "Reason",
    "Request",
    "SimulatedFailure",
    "SimulatedProvisioner",
    "StateChange",
    "Store",
    "StoreBusyError",
    "StoreClosedError",
    "StoreError",
    "StoreEvent",
    "StoreUnavailableError",
    "ToolResult",
    "Tracker",
    "TransientStoreError",
    "Transition",
    "Turn",
    "UnsupportedBackendError",
    "UnusableRoot",
    "Usage",
    "VirtualClock",
    "WallClock",
    "Workspace",
    "WorkspaceFacts",
    "WorkspaceLifecycleError",
    "WorkspaceMachine",
    "WorkspaceRefused",
    "WorkspaceState",
    "claims",
    "deadline_in_words",
    "derive_state",
    "dispatch_tool",
    "holding",
    "open_store",
    "quota_failure",
    "tool_definitions",
    "validation_failure",
]
