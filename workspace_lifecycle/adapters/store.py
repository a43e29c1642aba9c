""":class:`DriverStore`: the store interface written once, over a :class:`~.driver.Driver`.

Every write of :class:`~workspace_lifecycle.adapters.base.Store` is here, once, as a
:class:`~.driver.Plan`: the rows it reads, the pure decision of
:mod:`workspace_lifecycle.writes` it calls on them, and the answer it gives. A plan is one
slotted object per call (no closures: a write in flight keeps as few objects alive as it can). The driver runs
the plan inside its transaction; this class handles, in one place, the two outcomes that are
not an answer: a decision to write nothing (answered from the rows read) and a guard that found
the rows changed (read and decide again, up to :data:`MAX_DECISIONS` times).

The plans live beside this module, by concern: ``_plans_requests.py`` (a chat's requests),
``_plans_pools.py`` (warm pools), ``_plans_between_turns.py`` (deadlines, turns, touches),
``_plans_builds.py`` (a provisioner's claims, leases, finishes, agents, logs), and what they share
in ``_plans.py``. Adding a write is a pure decision in :mod:`~workspace_lifecycle.writes`, one
plan there, one method here, and nothing in a driver unless it reads rows no
:class:`~.driver.ReadKind` names yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

from .. import pools, skew, writes
from ..buildlogs import check_lines
from ..endpoints import check_endpoints
from ..errors import StoreBusyError
from ..limits import Limits, Usage
from ..skew import ClockSkew
from ..values import (
    AgentLifecycle,
    Build,
    Chat,
    Deadline,
    JobStatus,
    Lease,
    Policy,
    StoreEvent,
    Transition,
    WorkspaceFacts,
)
from ._plans import ReadAgain
from ._plans_between_turns import FireDeadline, HoldTurn, ReleaseTurn, Touch, WarnDeadline
from ._plans_builds import AppendLog, Claim, Expire, Finish, Renew, ReportAgent
from ._plans_pools import ClaimPooled, FillPool, PoolMembers
from ._plans_requests import CreateWorkspace, Defer, RegisterChat, RequestBuild, SetLimits
from .base import (
    DEFAULT_HOLD_SECONDS,
    DEFAULT_LEASE_SECONDS,
    ArmedDeadlines,
    ChatRow,
    Deferral,
    Outcome,
    PoolClaim,
    Store,
    Topic,
)
from .driver import RETRY, Driver, LogRead, Plan, Retry

__all__ = ["MAX_DECISIONS", "DriverStore", "as_driver_store"]

T = TypeVar("T")

#: Reads and decisions one write may take while other writers keep changing its rows.
MAX_DECISIONS = 200


#: The plain reads :class:`DriverStore` passes to its driver unchanged.
_PASSED_THROUGH = (
    "get_chat",
    "workspace_facts",
    "get_build",
    "read_log",
    "armed_deadlines",
    "list_chats",
    "head",
    "read_events",
)


def _new_id() -> str:
    return str(uuid.uuid4())


class DriverStore(Store):
    """A :class:`~workspace_lifecycle.adapters.base.Store` over ``driver``: the decisions here,
    the rows and the I/O there.

    >>> from workspace_lifecycle.adapters.memory import MemoryDriver
    >>> DriverStore(MemoryDriver()).url
    'memory://'
    """

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.url = driver.url
        # The reads the driver answers as they are: its methods, bound once (each call then
        # saves a coroutine of ours). A subclass that overrides one keeps its own.
        # A driver whose transaction never waits runs a plan without a coroutine. (A driver
        # written to the protocol without subclassing Driver may lack either: it is not immediate,
        # and a read it lacks fails when called, as it would without this binding.)
        self._now = driver.transact_now if getattr(driver, "immediate", False) else None
        for name in _PASSED_THROUGH:
            read = getattr(driver, name, None)
            if read is not None and getattr(type(self), name) is getattr(DriverStore, name):
                setattr(self, name, read)

    async def open(self) -> None:
        await self.driver.open()

    async def aclose(self) -> None:
        await self.driver.aclose()

    async def _transact(self, plan: Plan[T]) -> T:
        """Run ``plan`` until it is answered (a lost guard reads and decides again)."""
        result: T | Retry
        for _ in range(MAX_DECISIONS):
            try:
                if self._now is not None:
                    result = self._now(plan)
                else:
                    result = await self.driver.transact(plan)
            except ReadAgain as more:
                plan.read = more.read
                continue
            if result is not RETRY:
                return result  # type: ignore[return-value]
        raise StoreBusyError(
            f"a write ({plan.op}) found its rows changed by other writers {MAX_DECISIONS} times in a row"
        )

    # --- the writes: one plan each -------------------------------------------------------------

    async def register_chat(
        self,
        chat_id: str,
        owner: str,
        *,
        policy: Policy | None = None,
        default_policy: Policy | None = None,
    ) -> Chat:
        return await self._transact(RegisterChat(chat_id, owner, policy, default_policy or Policy()))

    async def create_workspace(
        self,
        chat_id: str,
        name: str,
        *,
        expected_workspace_id: str | None,
        parameters: Mapping[str, str] | None = None,
        limits: Limits | None = None,
    ) -> Outcome:
        return await self._transact(
            CreateWorkspace(
                chat_id, name, expected_workspace_id, parameters, limits, self.driver.clock, _new_id
            )
        )

    async def claim_pooled(
        self,
        chat_id: str,
        pool: str,
        name: str,
        *,
        expected_workspace_id: str | None,
        limits: Limits | None = None,
    ) -> PoolClaim:
        return await self._transact(
            ClaimPooled(chat_id, pool, name, expected_workspace_id, limits, self.driver.clock)
        )

    async def fill_pool(self, pool: pools.Pool) -> WorkspaceFacts | None:
        return await self._transact(FillPool(pool, self.driver.clock, _new_id))

    async def pool_members(self, pool: str) -> Sequence[WorkspaceFacts]:
        return await self._transact(PoolMembers(pool))

    async def request_build(
        self,
        workspace_id: str,
        transition: Transition,
        *,
        expected_build_number: int,
        parameters: Mapping[str, str] | None = None,
        limits: Limits | None = None,
    ) -> Outcome:
        return await self._transact(
            RequestBuild(
                workspace_id,
                transition,
                expected_build_number,
                parameters,
                limits,
                self.driver.clock,
                _new_id,
            )
        )

    async def set_limits(self, owner: str, limits: Limits) -> None:
        if not isinstance(limits, Limits):
            raise ValueError(f"limits must be a workspace_lifecycle.Limits, not {limits!r}")
        await self._transact(SetLimits(owner, limits))

    async def usage(self, owner: str) -> Usage:
        return await self.driver.read_usage(owner)

    async def defer_request(
        self,
        workspace_id: str,
        transition: Transition | None,
        *,
        expected_build_number: int,
        requested_by: str,
        running_limit: int | None = None,
    ) -> Deferral:
        return await self._transact(
            Defer(
                workspace_id,
                transition,
                expected_build_number,
                requested_by,
                running_limit,
                self.driver.clock,
            )
        )

    async def touch(self, workspace_id: str) -> Deadline | None:
        return await self._transact(Touch(workspace_id, self.driver.clock))

    async def fire_deadline(self, workspace_id: str, expected: Deadline) -> Outcome:
        return await self._transact(FireDeadline(workspace_id, expected, self.driver.clock, _new_id))

    async def hold_turn(
        self,
        workspace_id: str,
        token: str,
        *,
        renew: bool = False,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
    ) -> float | None:
        return await self._transact(HoldTurn(workspace_id, token, renew, hold_seconds, self.driver.clock))

    async def release_turn(self, workspace_id: str, token: str) -> bool:
        return await self._transact(ReleaseTurn(workspace_id, token, self.driver.clock))

    async def claim_build(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Build | None:
        lease_seconds = writes.check_lease_seconds(lease_seconds)
        return await self._transact(Claim(worker, lease_seconds, self.driver.clock))

    async def renew_lease(
        self, build_id: str, token: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> float:
        return await self._transact(Renew(build_id, token, lease_seconds, self.driver.clock))

    async def expire_lease(self, build_id: str, token: str) -> Build | None:
        return await self._transact(Expire(build_id, token, self.driver.clock, _new_id))

    async def finish_build(
        self,
        build_id: str,
        status: JobStatus | str,
        error: str | None = None,
        *,
        has_agent: bool = True,
        details: Mapping[str, Any] | None = None,
        lease: str | None = None,
    ) -> Build:
        status = writes.parse_status(status)
        return await self._transact(
            Finish(build_id, status, error, has_agent, details, lease, self.driver.clock, _new_id)
        )

    async def report_agent(
        self,
        workspace_id: str,
        lifecycle: AgentLifecycle | str,
        *,
        lease: str | None = None,
        endpoints: Mapping[str, str] | None = None,
    ) -> None:
        lifecycle = writes.parse_lifecycle(lifecycle)
        checked = None if endpoints is None else check_endpoints(endpoints)
        await self._transact(ReportAgent(workspace_id, lifecycle, lease, checked, self.driver.clock))

    async def append_log(
        self, build_id: str, lines: Sequence[str], *, lease: str | None = None, dropped: int = 0
    ) -> None:
        checked = check_lines(lines)
        if checked or dropped:
            await self._transact(AppendLog(build_id, checked, lease, dropped, self.driver.clock))

    # --- reads, the event log and interest: the driver's own -----------------------------------

    async def read_log(self, workspace_id: str, number: int | None = None) -> LogRead | None:
        return await self.driver.read_log(workspace_id, number)

    async def get_chat(self, chat_id: str) -> Chat | None:
        return await self.driver.get_chat(chat_id)

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        return await self.driver.workspace_facts(workspace_id)

    async def get_build(self, build_id: str) -> Build:
        return await self.driver.get_build(build_id)

    async def warn_deadline(self, workspace_id: str, expected: Deadline) -> Outcome:
        return await self._transact(WarnDeadline(workspace_id, expected, self.driver.clock))

    async def armed_deadlines(self) -> ArmedDeadlines:
        return await self.driver.armed_deadlines()

    async def measure_clock_skew(self) -> ClockSkew | None:
        clock = self.driver.clock
        sent = clock()
        server = await self.driver.server_time()
        if server is None:
            return None
        return skew.measure(sent=sent, store=server, received=clock())

    async def list_chats(self) -> Sequence[ChatRow]:
        return await self.driver.list_chats()

    async def next_lease_expiry(self, *, skip: Collection[str] = ()) -> Lease | None:
        return await self.driver.next_lease_expiry(skip=skip)

    async def head(self) -> int:
        return await self.driver.head()

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        return await self.driver.read_events(after, limit)

    async def wait_for_change(self, after: int) -> None:
        await self.driver.wait_for_change(after)

    async def prune_events(self, older_than: float) -> int:
        return await self.driver.prune_events(older_than)

    def take_interest(self, topic: Topic) -> None:
        self.driver.take_interest(topic)

    def drop_interest(self, topic: Topic) -> None:
        self.driver.drop_interest(topic)


def as_driver_store(store: Store) -> DriverStore:
    """``store`` as the :class:`DriverStore` a wrapper wraps the driver of, or a clear
    ``TypeError`` (every store of this library is one)."""
    if not isinstance(store, DriverStore):
        raise TypeError(
            f"{type(store).__name__} is not built on a driver: wrappers wrap a DriverStore's driver"
            " (every store of this library is one; docs/stores.md shows a driver of your own)"
        )
    return store
