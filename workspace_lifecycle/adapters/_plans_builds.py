"""The plans of :class:`~.store.DriverStore` for the provisioners' side of a build: claim it,
renew and expire its lease, finish it, report its agent, append to its log."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .. import writes
from ..errors import NotFoundError
from ..values import AgentLifecycle, Build, JobStatus
from ._plans import facts_of, then_id, usage_needed
from .driver import Plan, Read, Rows

__all__ = ["PENDING", "AppendLog", "Claim", "Expire", "Finish", "Renew", "ReportAgent"]


PENDING = Read.pending()


class Claim(Plan[Build | None]):
    op = "claim_build"
    __slots__ = ("_build", "clock", "lease_seconds", "worker")

    def __init__(self, worker: str, lease_seconds: float, clock: Callable[[], float]) -> None:
        super().__init__(PENDING)
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


class Renew(Plan[float]):
    op = "renew_lease"
    __slots__ = ("_until", "clock", "lease_seconds")

    def __init__(self, build_id: str, token: str, lease_seconds: float, clock: Callable[[], float]) -> None:
        # A renewal decides on the build and its workspace alone: no chat row to guard.
        super().__init__(Read.build(build_id, related=False), token)
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


class Expire(Plan[Build | None]):
    op = "expire_lease"
    __slots__ = ("_build", "clock", "new_id")

    def __init__(
        self, build_id: str, token: str, clock: Callable[[], float], new_id: Callable[[], str]
    ) -> None:
        super().__init__(Read.log(build_id), token)  # the failure it decides points at the logs
        self.clock, self.new_id = clock, new_id

    def decide(self, rows: Rows) -> writes.Write | None:
        self._build = None
        if rows.build is None or rows.workspace is None:
            return None
        assert self.lease is not None
        usage_needed(self, rows)
        policy = rows.chat.policy if rows.chat is not None else None
        write = writes.expire_lease(
            rows.build,
            rows.workspace,
            self.lease,
            at=self.clock(),
            policy=policy,
            log=rows.log,
            chat=rows.chat,
            then_build_id=then_id(rows, self.new_id),
            usage=rows.usage,
        )
        if write is not None:
            self._build = write.build
        return write

    def answer(self, head: int) -> Build | None:
        return self._build


class Finish(Plan[Build]):
    op = "finish_build"
    __slots__ = ("_done", "clock", "details", "error", "has_agent", "new_id", "status")

    def __init__(
        self,
        build_id: str,
        status: JobStatus,
        error: str | None,
        has_agent: bool,
        details: Mapping[str, Any] | None,
        lease: str | None,
        clock: Callable[[], float],
        new_id: Callable[[], str],
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
        self.new_id = new_id

    def decide(self, rows: Rows) -> writes.Write | None:
        if rows.build is None or rows.workspace is None:
            raise NotFoundError(f"no build {self.read.key!r}")
        usage_needed(self, rows)
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
            then_build_id=then_id(rows, self.new_id),
            usage=rows.usage,
        )
        assert write.build is not None
        self._done = write.build
        return write

    def answer(self, head: int) -> Build:
        return self._done


class ReportAgent(Plan[None]):
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
        facts = facts_of(rows, f"workspace {self.read.key!r} has no agent")
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


class AppendLog(Plan[None]):
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
