"""The in-memory store: one process, nothing kept. For tests and for users who keep nothing.

Each method runs without an await between its read and its write, so on one event loop it is a
transaction; that is what makes its compare-and-set exact. Works on asyncio and trio.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import attrs

from .. import writes
from ..errors import CursorExpiredError, NotFoundError, StoreClosedError
from ..values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    Deadline,
    JobStatus,
    Lease,
    Policy,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
)
from .base import DEFAULT_LEASE_SECONDS, ArmedDeadlines, ChatRow, Doorbell, Outcome, Store

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Chats, workspaces, builds, agents and the event log in dictionaries.

    >>> store = MemoryStore()
    >>> store.url
    'memory://'
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.url = "memory://"
        self._clock = clock
        self._closed = False
        self._chats: dict[str, Chat] = {}
        self._workspaces: dict[str, Workspace] = {}
        self._builds: dict[str, Build] = {}
        self._pending: dict[str, None] = {}  # ids of pending builds, oldest first (claim order)
        self._latest: dict[str, str] = {}  # workspace id -> latest build id
        self._agents: dict[str, Agent] = {}  # workspace id -> agent
        self._leased: dict[str, None] = {}  # ids of builds in flight under a lease
        self._events: list[StoreEvent] = []
        self._pruned_through = 0  # every event with seq <= this was pruned
        self._doorbell = Doorbell()

    async def aclose(self) -> None:
        self._closed = True
        self._doorbell.ring()

    def _check(self) -> None:
        if self._closed:
            raise StoreClosedError("the memory store is closed")

    # --- helpers ---------------------------------------------------------------------------

    def _persist(self, write: writes.Write) -> None:
        """Apply one decided write: its rows, then its events numbered in order."""
        if write.workspace is not None:
            self._workspaces[write.workspace.workspace_id] = write.workspace
        if write.chat is not None:
            self._chats[write.chat.chat_id] = write.chat
        build = write.build
        if build is not None:
            self._builds[build.build_id] = build
            if write.queued:
                self._latest[build.workspace_id] = build.build_id
                self._pending[build.build_id] = None
            if build.lease_expires_at is not None:
                self._leased[build.build_id] = None
            else:
                self._leased.pop(build.build_id, None)
        if write.agent is not None:
            self._agents[write.agent.workspace_id] = write.agent
        head = self._doorbell.head
        for offset, event in enumerate(write.events, 1):
            self._events.append(_numbered(event, head + offset))
        self._doorbell.saw(head + len(write.events))

    def _facts(self, workspace_id: str) -> WorkspaceFacts:
        ws = self._workspaces.get(workspace_id)
        if ws is None:
            raise NotFoundError(f"no workspace {workspace_id!r}")
        build_id = self._latest.get(workspace_id)
        return WorkspaceFacts(
            workspace=ws,
            latest_build=self._builds[build_id] if build_id else None,
            agent=self._agents.get(workspace_id),
            seq=self._doorbell.head,
        )

    # --- chats and workspaces --------------------------------------------------------------

    async def register_chat(
        self,
        chat_id: str,
        owner: str,
        *,
        policy: Policy | None = None,
        default_policy: Policy | None = None,
    ) -> Chat:
        self._check()
        existing = self._chats.get(chat_id)
        chat = writes.register_chat(
            existing, chat_id, owner, policy=policy, default=default_policy or Policy()
        )
        if chat is None:
            assert existing is not None
            return existing
        self._chats[chat_id] = chat
        return chat

    async def get_chat(self, chat_id: str) -> Chat | None:
        self._check()
        return self._chats.get(chat_id)

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        self._check()
        return self._facts(workspace_id)

    async def get_build(self, build_id: str) -> Build:
        self._check()
        build = self._builds.get(build_id)
        if build is None:
            raise NotFoundError(f"no build {build_id!r}")
        return build

    async def create_workspace(
        self,
        chat_id: str,
        name: str,
        *,
        expected_workspace_id: str | None,
        parameters: Mapping[str, str] | None = None,
    ) -> Outcome:
        self._check()
        chat = self._chats.get(chat_id)
        if chat is None:
            raise NotFoundError(f"no chat {chat_id!r}")
        write = writes.create_workspace(
            chat,
            expected_workspace_id=expected_workspace_id,
            workspace_id=str(uuid.uuid4()),
            build_id=str(uuid.uuid4()),
            name=name,
            at=self._clock(),
            parameters=parameters,
            replaced=self._facts(expected_workspace_id) if expected_workspace_id else None,
        )
        if write is None:
            assert chat.workspace_id is not None
            return Outcome(fired=False, build=None, facts=self._facts(chat.workspace_id))
        self._persist(write)
        assert write.workspace is not None
        return Outcome(fired=True, build=write.build, facts=self._facts(write.workspace.workspace_id))

    async def request_build(
        self,
        workspace_id: str,
        transition: Transition,
        *,
        expected_build_number: int,
        parameters: Mapping[str, str] | None = None,
    ) -> Outcome:
        self._check()
        facts = self._facts(workspace_id)
        chat = self._chats.get(facts.workspace.chat_id)
        write = writes.request_build(
            facts,
            chat=chat,
            transition=transition,
            expected_build_number=expected_build_number,
            build_id=str(uuid.uuid4()),
            at=self._clock(),
            parameters=parameters,
        )
        if write is None:
            return Outcome(fired=False, build=None, facts=facts)
        self._persist(write)
        return Outcome(fired=True, build=write.build, facts=self._facts(workspace_id))

    async def touch(self, workspace_id: str) -> Deadline | None:
        self._check()
        facts = self._facts(workspace_id)
        chat = self._chats.get(facts.workspace.chat_id)
        write = writes.touch(facts, chat.policy if chat else Policy(), at=self._clock())
        if write is not None:
            self._persist(write)
        return self._workspaces[workspace_id].deadline

    async def fire_deadline(self, workspace_id: str, expected: Deadline) -> Outcome:
        self._check()
        facts = self._facts(workspace_id)
        write = writes.fire_deadline(
            facts,
            chat=self._chats.get(facts.workspace.chat_id),
            expected=expected,
            build_id=str(uuid.uuid4()),
            at=self._clock(),
        )
        if write is None:
            return Outcome(fired=False, build=None, facts=facts)
        self._persist(write)
        return Outcome(fired=write.build is not None, build=write.build, facts=self._facts(workspace_id))

    async def armed_deadlines(self) -> ArmedDeadlines:
        self._check()
        return ArmedDeadlines(
            self._doorbell.head,
            {ws.workspace_id: ws.deadline for ws in self._workspaces.values() if ws.deadline is not None},
        )

    async def list_chats(self) -> Sequence[ChatRow]:
        self._check()
        return [
            ChatRow(chat, self._facts(chat.workspace_id) if chat.workspace_id else None)
            for chat in self._chats.values()
        ]

    # --- the provisioner side ---------------------------------------------------------------

    async def claim_build(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Build | None:
        self._check()
        writes.check_lease_seconds(lease_seconds)
        # Oldest pending first, without scanning every build ever made (a claim per build would
        # otherwise cost O(builds), quadratic over a run). Entries finished while pending are
        # dropped here as they come up.
        while self._pending:
            build_id = next(iter(self._pending))
            del self._pending[build_id]
            build = self._builds[build_id]
            if build.status is JobStatus.PENDING:
                write = writes.claim_build(
                    build,
                    self._workspaces[build.workspace_id],
                    worker=worker,
                    at=self._clock(),
                    token=uuid.uuid4().hex,
                    lease_seconds=lease_seconds,
                )
                self._persist(write)
                return write.build
        return None

    async def renew_lease(
        self, build_id: str, token: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> float:
        self._check()
        build = self._builds.get(build_id)
        if build is None:
            raise NotFoundError(f"no build {build_id!r}")
        write = writes.renew_lease(
            build, self._workspaces[build.workspace_id], token, at=self._clock(), lease_seconds=lease_seconds
        )
        self._persist(write)
        assert write.build is not None and write.build.lease_expires_at is not None
        return write.build.lease_expires_at

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

    async def expire_lease(self, build_id: str, token: str) -> Build | None:
        self._check()
        build = self._builds.get(build_id)
        if build is None:
            return None
        ws = self._workspaces[build.workspace_id]
        chat = self._chats.get(ws.chat_id)
        write = writes.expire_lease(build, ws, token, at=self._clock(), policy=chat.policy if chat else None)
        if write is None:
            return None
        self._persist(write)
        return write.build

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
        self._check()
        status = writes.parse_status(status)
        build = self._builds.get(build_id)
        if build is None:
            raise NotFoundError(f"no build {build_id!r}")
        ws = self._workspaces[build.workspace_id]
        chat = self._chats.get(ws.chat_id)
        write = writes.finish_build(
            build,
            ws,
            status,
            error,
            has_agent=has_agent,
            at=self._clock(),
            details=details,
            policy=chat.policy if chat else None,
            lease=lease,
        )
        self._persist(write)
        assert write.build is not None
        return write.build

    async def report_agent(
        self, workspace_id: str, lifecycle: AgentLifecycle | str, *, lease: str | None = None
    ) -> None:
        self._check()
        lifecycle = writes.parse_lifecycle(lifecycle)
        ws = self._workspaces.get(workspace_id)
        if ws is None:
            raise NotFoundError(f"workspace {workspace_id!r} has no agent")
        latest = self._latest.get(workspace_id)
        self._persist(
            writes.report_agent(
                self._agents.get(workspace_id),
                ws,
                lifecycle,
                at=self._clock(),
                latest=self._builds[latest] if latest else None,
                lease=lease,
            )
        )

    # --- the event log ----------------------------------------------------------------------

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


_EVENT_FIELDS = tuple(field.name for field in attrs.fields(StoreEvent))


def _numbered(event: StoreEvent, seq: int) -> StoreEvent:
    """``attrs.evolve(event, seq=seq)`` at half the cost: the other fields were validated when
    the event was made, and ``seq`` is the store's own counter."""
    numbered = object.__new__(StoreEvent)
    for name in _EVENT_FIELDS:
        object.__setattr__(numbered, name, getattr(event, name))
    object.__setattr__(numbered, "seq", seq)
    return numbered
