""":class:`DriverStore`: the store interface written once, over a :class:`~.driver.Driver`.

Every write of :class:`~workspace_lifecycle.adapters.base.Store` is here, once, as a
:class:`~.driver.Plan`: the rows it reads, the pure decision of
:mod:`workspace_lifecycle.writes` it calls on them, and the answer it gives. A plan is one
slotted object per call (no closures: a write in flight keeps as few objects alive as it can). The driver runs
the plan inside its transaction; this class handles, in one place, the two outcomes that are
not an answer: a decision to write nothing (answered from the rows read) and a guard that found
the rows changed (read and decide again, up to :data:`MAX_DECISIONS` times).

Adding a write is a pure decision in :mod:`~workspace_lifecycle.writes`, one method here, and
nothing in a driver unless it reads rows no :class:`~.driver.ReadKind` names yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from .. import pools, skew, writes
from ..buildlogs import check_lines
from ..endpoints import check_endpoints
from ..errors import NotFoundError, StoreBusyError
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
from .driver import RETRY, Driver, LogRead, Plan, Read, Rows

__all__ = ["MAX_DECISIONS", "DriverStore", "as_driver_store"]

T = TypeVar("T")

#: Reads and decisions one write may take while other writers keep changing its rows.
MAX_DECISIONS = 200


def _new_id() -> str:
    return str(uuid.uuid4())


def _facts(rows: Rows, missing: str) -> WorkspaceFacts:
    if rows.facts is None:
        raise NotFoundError(missing)
    return rows.facts


class _ReadAgain(Exception):
    """A plan found it must read more than it asked for (``read``): decide again on those."""

    def __init__(self, read: Read) -> None:
        self.read = read


def _usage_needed(plan: Plan[Any], rows: Rows) -> None:
    """A finish acts on a start deferred behind the build: it needs the owner's usage too."""
    ws = rows.workspace
    if not plan.read.usage and ws is not None and ws.deferred is not None and writes.needs_usage(ws):
        # The limits that apply: those stored for the owner, and the one the request carries.
        raise _ReadAgain(attrs.evolve(plan.read, usage=True, limited=ws.deferred.running_limit is not None))


def _then_id(rows: Rows) -> str | None:
    """The id of the build a finish may queue for a request deferred behind it (only then)."""
    return _new_id() if rows.workspace is not None and rows.workspace.deferred is not None else None


class _Request(Plan[Outcome]):
    """A plan answered with an :class:`Outcome`: the build it appended (if any), with the facts
    as the write left them (or as read, when it wrote nothing)."""

    __slots__ = ("_facts", "_write")

    def _decided(self, facts: WorkspaceFacts, write: writes.Write | None) -> writes.Write | None:
        self._facts, self._write = facts, write
        return write

    def answer(self, head: int) -> Outcome:
        write, facts = self._write, self._facts
        if write is None:
            return Outcome(fired=False, build=None, facts=facts)
        return Outcome(
            fired=write.build is not None, build=write.build, facts=writes.applied(facts, write, head)
        )


class _RegisterChat(Plan[Chat]):
    op = "register_chat"
    __slots__ = ("_chat", "chat_id", "default", "owner", "policy")

    def __init__(self, chat_id: str, owner: str, policy: Policy | None, default: Policy) -> None:
        super().__init__(Read.of_chat(chat_id, related=False))
        self.chat_id, self.owner, self.policy, self.default = chat_id, owner, policy, default

    def decide(self, rows: Rows) -> writes.Write | None:
        existing = rows.chat
        chat = writes.register_chat(
            existing, self.chat_id, self.owner, policy=self.policy, default=self.default
        )
        if chat is None:
            assert existing is not None
            self._chat = existing
            return None
        self._chat = chat
        return writes.Write(events=(), chat=chat)

    def answer(self, head: int) -> Chat:
        return self._chat


class _CreateWorkspace(_Request):
    op = "create_workspace"
    __slots__ = ("chat_id", "clock", "expected", "limits", "name", "parameters")

    def __init__(
        self,
        chat_id: str,
        name: str,
        expected: str | None,
        parameters: Mapping[str, str] | None,
        limits: Limits | None,
        clock: Callable[[], float],
    ) -> None:
        # One workspace more: the owner's limits (the runtime's, or only those stored: Read.limited).
        super().__init__(Read.of_chat(chat_id, usage=True, limited=limits is not None))
        self.chat_id, self.name, self.expected, self.parameters, self.limits, self.clock = (
            chat_id,
            name,
            expected,
            parameters,
            limits,
            clock,
        )

    def decide(self, rows: Rows) -> writes.Write | None:
        chat = rows.chat
        if chat is None:
            raise NotFoundError(f"no chat {self.chat_id!r}")
        bound = rows.facts  # the workspace the chat is bound to now, if any
        write = writes.create_workspace(
            chat,
            expected_workspace_id=self.expected,
            workspace_id=_new_id(),
            build_id=_new_id(),
            name=self.name,
            at=self.clock(),
            parameters=self.parameters,
            replaced=bound if self.expected is not None else None,
            usage=rows.usage,
            limits=self.limits,
        )
        if write is None:
            if bound is None:
                raise NotFoundError(f"chat {self.chat_id!r} has no workspace")
            return self._decided(bound, None)
        assert write.workspace is not None
        return self._decided(WorkspaceFacts(write.workspace, None, None, 0), write)


class _ClaimPooled(Plan[PoolClaim]):
    op = "claim_pooled"
    __slots__ = ("_claim", "_write", "clock", "expected", "limits", "name", "pool")

    def __init__(
        self,
        chat_id: str,
        pool: str,
        name: str,
        expected: str | None,
        limits: Limits | None,
        clock: Callable[[], float],
    ) -> None:
        # A claim gives the owner a (running) workspace more: it counts its usage.
        read = Read.pool(pools.holder_id(pool), chat_id)
        super().__init__(attrs.evolve(read, usage=True, limited=limits is not None))
        self.pool, self.name, self.expected, self.clock, self.limits = pool, name, expected, clock, limits

    def decide(self, rows: Rows) -> writes.Write | None:
        chat = rows.chat
        if chat is None:
            raise NotFoundError(f"no chat {self.read.claimant!r}")
        bound = rows.facts
        write = writes.claim_pooled(
            chat,
            rows.members,
            pool=self.pool,
            expected_workspace_id=self.expected,
            replaced=bound if self.expected is not None else None,
            name=self.name,
            at=self.clock(),
            usage=rows.usage,
            limits=self.limits,
        )
        self._write = write
        if write is None:
            if chat.workspace_id == self.expected:  # nothing ready: the caller builds one
                self._claim = PoolClaim(False, None)
                return None
            if bound is None:
                raise NotFoundError(f"chat {self.read.claimant!r} has no workspace")
            self._claim = PoolClaim(False, bound)  # lost to another create
            return None
        assert write.workspace is not None
        claimed = write.workspace.workspace_id
        self._claim = PoolClaim(True, next(m for m in rows.members if m.workspace_id == claimed))
        return write

    def answer(self, head: int) -> PoolClaim:
        claim, write = self._claim, self._write
        if write is None or claim.facts is None:
            return claim
        return PoolClaim(True, writes.applied(claim.facts, write, head))


class _FillPool(Plan[WorkspaceFacts | None]):
    op = "fill_pool"
    __slots__ = ("_facts", "clock", "pool")

    def __init__(self, pool: pools.Pool, clock: Callable[[], float]) -> None:
        super().__init__(Read.pool(pool.holder))
        self.pool, self.clock = pool, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        write = writes.fill_pool(
            rows.chat, rows.members, self.pool, workspace_id=_new_id(), build_id=_new_id(), at=self.clock()
        )
        self._facts = None
        if write is not None:
            assert write.workspace is not None
            self._facts = WorkspaceFacts(write.workspace, write.build, None, 0)
        return write

    def answer(self, head: int) -> WorkspaceFacts | None:
        facts = self._facts
        return None if facts is None else attrs.evolve(facts, seq=head)


class _PoolMembers(Plan[Sequence[WorkspaceFacts]]):
    op = "pool_members"
    __slots__ = ("_members",)

    def __init__(self, pool: str) -> None:
        super().__init__(Read.pool(pools.holder_id(pool)))

    def decide(self, rows: Rows) -> writes.Write | None:
        self._members = rows.members
        return None

    def answer(self, head: int) -> Sequence[WorkspaceFacts]:
        return self._members


class _RequestBuild(_Request):
    op = "request_build"
    __slots__ = ("clock", "expected", "limits", "parameters", "transition")

    def __init__(
        self,
        workspace_id: str,
        transition: Transition,
        expected: int,
        parameters: Mapping[str, str] | None,
        limits: Limits | None,
        clock: Callable[[], float],
    ) -> None:
        # Only a start may take a slot more: only a start reads (and serialises on) the owner.
        # Without the runtime's limits only an owner's stored ones apply (Read.limited).
        super().__init__(
            Read.workspace(workspace_id, usage=transition is Transition.START, limited=limits is not None)
        )
        self.transition, self.expected, self.parameters, self.clock = transition, expected, parameters, clock
        self.limits = limits

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = _facts(rows, f"no workspace {self.read.key!r}")
        write = writes.request_build(
            facts,
            chat=rows.chat,
            transition=self.transition,
            expected_build_number=self.expected,
            build_id=_new_id(),
            at=self.clock(),
            parameters=self.parameters,
            usage=rows.usage,
            limits=self.limits,
        )
        return self._decided(facts, write)


class _FireDeadline(_Request):
    op = "fire_deadline"
    __slots__ = ("clock", "expected")

    def __init__(self, workspace_id: str, expected: Deadline, clock: Callable[[], float]) -> None:
        super().__init__(Read.workspace(workspace_id))
        self.expected, self.clock = expected, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = _facts(rows, f"no workspace {self.read.key!r}")
        write = writes.fire_deadline(
            facts, chat=rows.chat, expected=self.expected, build_id=_new_id(), at=self.clock()
        )
        return self._decided(facts, write)


class _WarnDeadline(_Request):
    """Answered with ``fired`` true when this call wrote the warning."""

    op = "warn_deadline"
    __slots__ = ("clock", "expected")

    def __init__(self, workspace_id: str, expected: Deadline, clock: Callable[[], float]) -> None:
        super().__init__(Read.workspace(workspace_id))
        self.expected, self.clock = expected, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = _facts(rows, f"no workspace {self.read.key!r}")
        return self._decided(facts, writes.warn_deadline(facts, expected=self.expected, at=self.clock()))

    def answer(self, head: int) -> Outcome:
        outcome = super().answer(head)
        return Outcome(fired=self._write is not None, build=None, facts=outcome.facts)


class _Defer(Plan[Deferral]):
    op = "defer_request"
    __slots__ = ("_deferral", "by", "clock", "expected", "running_limit", "transition")

    def __init__(
        self,
        workspace_id: str,
        transition: Transition | None,
        expected: int,
        by: str,
        running_limit: int | None,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(Read.workspace(workspace_id, related=False))
        self.transition, self.expected, self.by, self.clock = transition, expected, by, clock
        self.running_limit = running_limit

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = _facts(rows, f"no workspace {self.read.key!r}")
        write = writes.defer_request(
            facts,
            transition=self.transition,
            expected_build_number=self.expected,
            requested_by=self.by,
            running_limit=self.running_limit,
            at=self.clock(),
        )
        self._deferral = (writes.deferral_holds(facts, self.expected), facts, write)
        return write

    def answer(self, head: int) -> Deferral:
        held, facts, write = self._deferral
        return Deferral(held, facts if write is None else writes.applied(facts, write, head))


class _HoldTurn(Plan[float | None]):
    op = "hold_turn"
    __slots__ = ("_until", "clock", "hold_seconds", "renew")

    def __init__(
        self, workspace_id: str, token: str, renew: bool, hold_seconds: float, clock: Callable[[], float]
    ) -> None:
        # The workspace's row alone: the holds are in it, so its guard covers them.
        super().__init__(Read.workspace(workspace_id, related=False), token)
        self.renew, self.hold_seconds, self.clock = renew, hold_seconds, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = _facts(rows, f"no workspace {self.read.key!r}")
        assert self.lease is not None
        write = writes.hold_turn(
            facts, self.lease, renew=self.renew, at=self.clock(), hold_seconds=self.hold_seconds
        )
        self._until = None
        if write is not None and write.workspace is not None:
            self._until = max(hold.expires_at for hold in write.workspace.holds if hold.token == self.lease)
        return write

    def answer(self, head: int) -> float | None:
        return self._until


class _ReleaseTurn(Plan[bool]):
    op = "release_turn"
    __slots__ = ("_released", "clock")

    def __init__(self, workspace_id: str, token: str, clock: Callable[[], float]) -> None:
        super().__init__(Read.workspace(workspace_id), token)  # the chat's policy arms the countdown
        self.clock = clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = _facts(rows, f"no workspace {self.read.key!r}")
        assert self.lease is not None
        policy = rows.chat.policy if rows.chat is not None else Policy()
        write = writes.release_turn(facts, self.lease, policy, at=self.clock())
        self._released = write is not None
        return write

    def answer(self, head: int) -> bool:
        return self._released


class _Touch(Plan[Deadline | None]):
    op = "touch"
    __slots__ = ("_armed", "clock")

    def __init__(self, workspace_id: str, clock: Callable[[], float]) -> None:
        super().__init__(Read.workspace(workspace_id))
        self.clock = clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = _facts(rows, f"no workspace {self.read.key!r}")
        write = writes.touch(facts, rows.chat.policy if rows.chat is not None else Policy(), at=self.clock())
        self._armed = (
            facts.workspace.deadline if write is None or write.workspace is None else write.workspace.deadline
        )
        return write

    def answer(self, head: int) -> Deadline | None:
        return self._armed


class _Claim(Plan[Build | None]):
    op = "claim_build"
    __slots__ = ("_build", "clock", "lease_seconds", "worker")

    def __init__(self, worker: str, lease_seconds: float, clock: Callable[[], float]) -> None:
        super().__init__(_PENDING)
        self.worker, self.lease_seconds, self.clock = worker, lease_seconds, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        if rows.build is None or rows.workspace is None:
            self._build = None
            return None
        write = writes.claim_build(
            rows.build,
            rows.workspace,
            worker=self.worker,
            at=self.clock(),
            token=uuid.uuid4().hex,
            lease_seconds=self.lease_seconds,
        )
        self._build = write.build
        return write

    def answer(self, head: int) -> Build | None:
        return self._build


class _Renew(Plan[float]):
    op = "renew_lease"
    __slots__ = ("_until", "clock", "lease_seconds")

    def __init__(self, build_id: str, token: str, lease_seconds: float, clock: Callable[[], float]) -> None:
        super().__init__(Read.build(build_id), token)
        self.lease_seconds, self.clock = lease_seconds, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        if rows.build is None or rows.workspace is None:
            raise NotFoundError(f"no build {self.read.key!r}")
        assert self.lease is not None
        write = writes.renew_lease(
            rows.build, rows.workspace, self.lease, at=self.clock(), lease_seconds=self.lease_seconds
        )
        assert write.build is not None and write.build.lease_expires_at is not None
        self._until = write.build.lease_expires_at
        return write

    def answer(self, head: int) -> float:
        return self._until


class _Expire(Plan[Build | None]):
    op = "expire_lease"
    __slots__ = ("_build", "clock")

    def __init__(self, build_id: str, token: str, clock: Callable[[], float]) -> None:
        super().__init__(Read.log(build_id), token)  # the failure it decides points at the logs
        self.clock = clock

    def decide(self, rows: Rows) -> writes.Write | None:
        self._build = None
        if rows.build is None or rows.workspace is None:
            return None
        assert self.lease is not None
        _usage_needed(self, rows)
        policy = rows.chat.policy if rows.chat is not None else None
        write = writes.expire_lease(
            rows.build,
            rows.workspace,
            self.lease,
            at=self.clock(),
            policy=policy,
            log=rows.log,
            chat=rows.chat,
            then_build_id=_then_id(rows),
            usage=rows.usage,
        )
        if write is not None:
            self._build = write.build
        return write

    def answer(self, head: int) -> Build | None:
        return self._build


class _Finish(Plan[Build]):
    op = "finish_build"
    __slots__ = ("_done", "clock", "details", "error", "has_agent", "status")

    def __init__(
        self,
        build_id: str,
        status: JobStatus,
        error: str | None,
        has_agent: bool,
        details: Mapping[str, Any] | None,
        lease: str | None,
        clock: Callable[[], float],
    ) -> None:
        # A build that did not succeed reads its log too: its answer says that logs exist.
        read = Read.build(build_id) if status is JobStatus.SUCCEEDED else Read.log(build_id)
        super().__init__(read, lease)
        self.status, self.error, self.has_agent, self.details, self.clock = (
            status,
            error,
            has_agent,
            details,
            clock,
        )

    def decide(self, rows: Rows) -> writes.Write | None:
        if rows.build is None or rows.workspace is None:
            raise NotFoundError(f"no build {self.read.key!r}")
        _usage_needed(self, rows)
        write = writes.finish_build(
            rows.build,
            rows.workspace,
            self.status,
            self.error,
            has_agent=self.has_agent,
            at=self.clock(),
            details=self.details,
            policy=rows.chat.policy if rows.chat is not None else None,
            lease=self.lease,
            log=rows.log,
            chat=rows.chat,
            then_build_id=_then_id(rows),
            usage=rows.usage,
        )
        assert write.build is not None
        self._done = write.build
        return write

    def answer(self, head: int) -> Build:
        return self._done


class _ReportAgent(Plan[None]):
    op = "report_agent"
    __slots__ = ("clock", "endpoints", "lifecycle")

    def __init__(
        self,
        workspace_id: str,
        lifecycle: AgentLifecycle,
        lease: str | None,
        endpoints: Mapping[str, str] | None,
        clock: Callable[[], float],
    ) -> None:
        # Without a lease the report decides on the workspace and its agent alone.
        super().__init__(Read.workspace(workspace_id, related=False, latest=lease is not None), lease)
        self.lifecycle, self.endpoints, self.clock = lifecycle, endpoints, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = _facts(rows, f"workspace {self.read.key!r} has no agent")
        return writes.report_agent(
            facts.agent,
            facts.workspace,
            self.lifecycle,
            at=self.clock(),
            latest=facts.latest_build,
            lease=self.lease,
            endpoints=self.endpoints,
        )

    def answer(self, head: int) -> None:
        return None


class _AppendLog(Plan[None]):
    op = "append_log"
    __slots__ = ("clock", "dropped", "lines")

    def __init__(
        self, build_id: str, lines: list[str], lease: str | None, dropped: int, clock: Callable[[], float]
    ) -> None:
        super().__init__(Read.log(build_id), lease)
        self.lines, self.dropped, self.clock = lines, dropped, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        if rows.build is None:
            raise NotFoundError(f"no build {self.read.key!r}")
        return writes.append_log(
            rows.build, rows.log, self.lines, at=self.clock(), lease=self.lease, dropped=self.dropped
        )

    def answer(self, head: int) -> None:
        return None


class _SetLimits(Plan[None]):
    op = "set_limits"
    __slots__ = ("limits",)

    def __init__(self, owner: str, limits: Limits) -> None:
        super().__init__(Read.owner(owner))
        self.limits = limits

    def decide(self, rows: Rows) -> writes.Write | None:
        return writes.set_limits(self.read.key, self.limits)

    def answer(self, head: int) -> None:
        return None


_PENDING = Read.pending()


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

    async def open(self) -> None:
        await self.driver.open()

    async def aclose(self) -> None:
        await self.driver.aclose()

    async def _transact(self, plan: Plan[T]) -> T:
        """Run ``plan`` until it is answered (a lost guard reads and decides again)."""
        for _ in range(MAX_DECISIONS):
            try:
                result = await self.driver.transact(plan)
            except _ReadAgain as more:
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
        return await self._transact(_RegisterChat(chat_id, owner, policy, default_policy or Policy()))

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
            _CreateWorkspace(chat_id, name, expected_workspace_id, parameters, limits, self.driver.clock)
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
            _ClaimPooled(chat_id, pool, name, expected_workspace_id, limits, self.driver.clock)
        )

    async def fill_pool(self, pool: pools.Pool) -> WorkspaceFacts | None:
        return await self._transact(_FillPool(pool, self.driver.clock))

    async def pool_members(self, pool: str) -> Sequence[WorkspaceFacts]:
        return await self._transact(_PoolMembers(pool))

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
            _RequestBuild(
                workspace_id, transition, expected_build_number, parameters, limits, self.driver.clock
            )
        )

    async def set_limits(self, owner: str, limits: Limits) -> None:
        if not isinstance(limits, Limits):
            raise ValueError(f"limits must be a workspace_lifecycle.Limits, not {limits!r}")
        await self._transact(_SetLimits(owner, limits))

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
            _Defer(
                workspace_id,
                transition,
                expected_build_number,
                requested_by,
                running_limit,
                self.driver.clock,
            )
        )

    async def touch(self, workspace_id: str) -> Deadline | None:
        return await self._transact(_Touch(workspace_id, self.driver.clock))

    async def fire_deadline(self, workspace_id: str, expected: Deadline) -> Outcome:
        return await self._transact(_FireDeadline(workspace_id, expected, self.driver.clock))

    async def hold_turn(
        self,
        workspace_id: str,
        token: str,
        *,
        renew: bool = False,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
    ) -> float | None:
        return await self._transact(_HoldTurn(workspace_id, token, renew, hold_seconds, self.driver.clock))

    async def release_turn(self, workspace_id: str, token: str) -> bool:
        return await self._transact(_ReleaseTurn(workspace_id, token, self.driver.clock))

    async def claim_build(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Build | None:
        lease_seconds = writes.check_lease_seconds(lease_seconds)
        return await self._transact(_Claim(worker, lease_seconds, self.driver.clock))

    async def renew_lease(
        self, build_id: str, token: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> float:
        return await self._transact(_Renew(build_id, token, lease_seconds, self.driver.clock))

    async def expire_lease(self, build_id: str, token: str) -> Build | None:
        return await self._transact(_Expire(build_id, token, self.driver.clock))

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
            _Finish(build_id, status, error, has_agent, details, lease, self.driver.clock)
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
        await self._transact(_ReportAgent(workspace_id, lifecycle, lease, checked, self.driver.clock))

    async def append_log(
        self, build_id: str, lines: Sequence[str], *, lease: str | None = None, dropped: int = 0
    ) -> None:
        checked = check_lines(lines)
        if checked or dropped:
            await self._transact(_AppendLog(build_id, checked, lease, dropped, self.driver.clock))

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
        return await self._transact(_WarnDeadline(workspace_id, expected, self.driver.clock))

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
