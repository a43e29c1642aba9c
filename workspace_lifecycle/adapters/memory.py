"""The in-memory store: one process, nothing kept. For tests and for users who keep nothing.

:class:`MemoryDriver` runs each plan without an await between its read and its write, so on
one event loop it is a transaction: that is what makes its compare-and-set exact (its guard
never finds the rows changed). Works on asyncio and trio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

import attrs

from .. import writes
from ..buildlogs import BuildLog
from ..errors import CursorExpiredError, NotFoundError, StoreClosedError
from ..limits import Limits, Usage, counts_as_running
from ..values import Agent, Build, Chat, JobStatus, Lease, StoreEvent, Workspace, WorkspaceFacts
from .base import ArmedDeadlines, ChatRow, Doorbell
from .driver import Driver, LogRead, Plan, Read, ReadKind, Retry, Rows
from .store import DriverStore

__all__ = ["MemoryDriver", "MemoryStore"]

T = TypeVar("T")


class MemoryDriver(Driver):
    """Chats, workspaces, builds, agents and the event log in dictionaries."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.url = "memory://"
        self.clock = clock
        self._closed = False
        self._chats: dict[str, Chat] = {}
        self._workspaces: dict[str, Workspace] = {}
        self._builds: dict[str, Build] = {}
        self._pending: dict[str, None] = {}  # ids of pending builds, oldest first (claim order)
        self._latest: dict[str, str] = {}  # workspace id -> latest build id
        self._agents: dict[str, Agent] = {}  # workspace id -> agent
        self._leased: dict[str, None] = {}  # ids of builds in flight under a lease
        self._logs: dict[str, BuildLog] = {}  # build id -> its log
        self._numbers: dict[tuple[str, int], str] = {}  # (workspace id, build number) -> build id
        self._limits: dict[str, Limits] = {}  # owner -> the limits stored for it
        self._by_owner: dict[str, dict[str, None]] = {}  # owner -> ids of its workspaces
        self._bound: dict[str, dict[str, None]] = {}  # chat id -> ids of its live workspaces
        self._events: list[StoreEvent] = []
        self._pruned_through = 0  # every event with seq <= this was pruned
        self._doorbell = Doorbell()

    async def aclose(self) -> None:
        self._closed = True
        self._doorbell.ring()

    def _check(self) -> None:
        if self._closed:
            raise StoreClosedError("the memory store is closed")

    # --- writes ----------------------------------------------------------------------------------

    immediate = True  # a plan runs with no await between its read and its write

    async def transact(self, plan: Plan[T]) -> T | Retry:
        return self.transact_now(plan)

    def transact_now(self, plan: Plan[T]) -> T | Retry:
        self._check()
        read = plan.read
        rows = self._read_rows(read)
        if read.usage:
            self._count(read, rows)
        write = plan.decide(rows)
        return plan.answer(0 if write is None else self._persist(write))

    def _count(self, read: Read, rows: Rows) -> None:
        """The owner's usage into ``rows`` (no await between this read and the write: the
        owner is serialised)."""
        owner = read.key if read.kind is ReadKind.OWNER else self._owner_of(rows)
        # No limit can refuse (none stored, none of the caller's): nothing to count.
        counted = owner is not None and (read.limited or owner in self._limits)
        rows.usage = self._usage(owner) if counted and owner is not None else None

    @staticmethod
    def _owner_of(rows: Rows) -> str | None:
        if rows.chat is not None:
            return rows.chat.owner
        return None if rows.workspace is None else rows.workspace.owner

    def _usage(self, owner: str) -> Usage:
        """The owner's counts, over its workspaces only (an index, not every workspace)."""
        running = workspaces = 0
        for workspace_id in self._by_owner.get(owner, ()):
            if self._workspaces[workspace_id].deleted:
                continue
            workspaces += 1
            latest = self._latest.get(workspace_id)
            running += counts_as_running(None if latest is None else self._builds[latest])
        return Usage(owner, running, workspaces, self._limits.get(owner))

    def _read_rows(self, read: Read) -> Rows:
        kind = read.kind
        if kind is ReadKind.OWNER:
            return Rows()
        if kind is ReadKind.WORKSPACE:
            facts = self._facts_or_none(read.key)
            if facts is None:
                return Rows()
            ws = facts.workspace
            return Rows(self._chats.get(ws.chat_id) if read.related else None, facts, None, ws)
        if kind is ReadKind.BUILD or kind is ReadKind.LOG:
            build = self._builds.get(read.key)
            if build is None:
                return Rows()
            ws = self._workspaces[build.workspace_id]
            log = self._logs.get(build.build_id) if kind is ReadKind.LOG else None
            return Rows(self._chats.get(ws.chat_id), None, build, ws, log)
        if kind is ReadKind.POOL:
            members = tuple(
                facts
                for workspace_id in self._bound.get(read.key, ())
                if (facts := self._facts_or_none(workspace_id)) is not None
            )
            if not read.claimant:
                return Rows(self._chats.get(read.key), members=members)
            rows = self._read_rows(Read.of_chat(read.claimant))
            rows.members = members
            return rows
        if kind is ReadKind.PENDING:
            build = self._oldest_pending()
            return (
                Rows() if build is None else Rows(build=build, workspace=self._workspaces[build.workspace_id])
            )
        chat = self._chats.get(read.key)
        bound = chat.workspace_id if chat is not None and read.related else None
        return Rows(chat, None if bound is None else self._facts_or_none(bound))

    def _oldest_pending(self) -> Build | None:
        """Oldest pending first, without scanning every build ever made (a claim per build
        would otherwise cost O(builds), quadratic over a run). Entries that left ``pending``
        are dropped as they come up."""
        while self._pending:
            build = self._builds[next(iter(self._pending))]
            if build.status is JobStatus.PENDING:
                return build
            del self._pending[build.build_id]
        return None

    def _persist(self, write: writes.Write) -> int:
        """Apply one decided write: its rows, then its events numbered in order; the head."""
        if write.workspace is not None:
            ws = write.workspace
            old = self._workspaces.get(ws.workspace_id)
            # The indexes change only when the chat, owner or deletion does (a touch changes none).
            if old is None or old.chat_id != ws.chat_id or old.deleted != ws.deleted or old.owner != ws.owner:
                if old is not None and old.chat_id in self._bound:
                    self._bound[old.chat_id].pop(ws.workspace_id, None)
                if not ws.deleted:
                    self._bound.setdefault(ws.chat_id, {})[ws.workspace_id] = None
                self._by_owner.setdefault(ws.owner, {})[ws.workspace_id] = None
            self._workspaces[ws.workspace_id] = ws
        if write.owner is not None:
            self._limits[write.owner.owner] = write.owner.limits
        if write.chat is not None:
            self._chats[write.chat.chat_id] = write.chat
        for build, queued in ((write.build, write.queued), (write.then, True)):
            if build is None:
                continue
            self._builds[build.build_id] = build
            if queued:
                self._latest[build.workspace_id] = build.build_id
                self._numbers[build.workspace_id, build.number] = build.build_id
                self._pending[build.build_id] = None
            elif build.status is not JobStatus.PENDING:
                self._pending.pop(build.build_id, None)
            if build.lease_expires_at is not None:
                self._leased[build.build_id] = None
            else:
                self._leased.pop(build.build_id, None)
        if write.agent is not None:
            self._agents[write.agent.workspace_id] = write.agent
        if write.log is not None:
            self._logs[write.log.build_id] = write.log
        events = write.events
        if not events:
            return self._doorbell.head
        seq = self._doorbell.head
        for event in events:
            seq += 1
            self._events.append(_numbered(event, seq))
        self._doorbell.saw(seq)
        return seq

    def _facts_or_none(self, workspace_id: str) -> WorkspaceFacts | None:
        ws = self._workspaces.get(workspace_id)
        if ws is None:
            return None
        build_id = self._latest.get(workspace_id)
        return WorkspaceFacts(
            workspace=ws,
            latest_build=self._builds[build_id] if build_id else None,
            agent=self._agents.get(workspace_id),
            seq=self._doorbell.head,
        )

    # --- reads -----------------------------------------------------------------------------------

    async def get_chat(self, chat_id: str) -> Chat | None:
        self._check()
        return self._chats.get(chat_id)

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        self._check()
        facts = self._facts_or_none(workspace_id)
        if facts is None:
            raise NotFoundError(f"no workspace {workspace_id!r}")
        return facts

    async def get_build(self, build_id: str) -> Build:
        self._check()
        build = self._builds.get(build_id)
        if build is None:
            raise NotFoundError(f"no build {build_id!r}")
        return build

    async def armed_deadlines(self) -> ArmedDeadlines:
        self._check()
        return ArmedDeadlines(
            self._doorbell.head,
            {ws.workspace_id: ws.deadline for ws in self._workspaces.values() if ws.deadline is not None},
        )

    async def list_chats(self) -> Sequence[ChatRow]:
        self._check()
        return [
            ChatRow(chat, self._facts_or_none(chat.workspace_id) if chat.workspace_id else None)
            for chat in self._chats.values()
        ]

    async def next_lease_expiry(self, *, skip: Collection[str] = ()) -> Lease | None:
        self._check()
        first: Lease | None = None
        for build_id in self._leased:  # only the builds in flight, never every build
            if build_id in skip:
                continue
            build = self._builds[build_id]
            assert build.lease_token is not None and build.lease_expires_at is not None
            if first is None or build.lease_expires_at < first.expires_at:
                first = Lease(
                    build_id, build.workspace_id, build.worker, build.lease_token, build.lease_expires_at
                )
        return first

    async def read_log(self, workspace_id: str, number: int | None = None) -> LogRead | None:
        self._check()
        build_id = (
            self._latest.get(workspace_id) if number is None else self._numbers.get((workspace_id, number))
        )
        if build_id is None:
            return None
        return self._builds[build_id], self._logs.get(build_id)

    async def read_usage(self, owner: str) -> Usage:
        self._check()
        return self._usage(owner)

    # --- the event log ---------------------------------------------------------------------------

    async def head(self) -> int:
        self._check()
        return self._doorbell.head

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        self._check()
        if after < self._pruned_through:
            raise CursorExpiredError(after, self._pruned_through + 1)
        # Events are appended in seq order, so the wanted ones start at a computable index.
        first = self._events[0].seq if self._events else self._doorbell.head + 1
        start = max(0, after - first + 1)
        return self._events[start : start + limit]

    async def wait_for_change(self, after: int) -> None:
        self._check()
        await self._doorbell.sleep(after)
        self._check()

    async def prune_events(self, older_than: float) -> int:
        self._check()
        dropped = 0
        for event in self._events:  # a prefix: events are appended in time order
            if event.at >= older_than:
                break
            dropped += 1
        if dropped:
            self._pruned_through = self._events[dropped - 1].seq
            self._events = self._events[dropped:]
        return dropped


class MemoryStore(DriverStore):
    """The store over a :class:`MemoryDriver`.

    >>> store = MemoryStore()
    >>> store.url
    'memory://'
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(MemoryDriver(clock=clock))


_EVENT_FIELDS = tuple(field.name for field in attrs.fields(StoreEvent))


def _numbered(event: StoreEvent, seq: int) -> StoreEvent:
    """``event`` numbered ``seq``: the event itself when it is a decision's fresh one (``seq``
    0, made for this write and held by nobody else: numbering it in place costs a twentieth of a
    copy), else ``attrs.evolve(event, seq=seq)`` without re-running the validators (its other
    fields were validated when it was made, and ``seq`` is the store's own counter)."""
    if event.seq == 0:
        object.__setattr__(event, "seq", seq)
        return event
    numbered = object.__new__(StoreEvent)
    for name in _EVENT_FIELDS:
        object.__setattr__(numbered, name, getattr(event, name))
    object.__setattr__(numbered, "seq", seq)
    return numbered
