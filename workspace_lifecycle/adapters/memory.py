"""The in-memory store: one process, nothing kept. For tests and for users who keep nothing.

Each method runs without an await between its read and its write, so on one event loop it is a
transaction; that is what makes its compare-and-set exact. Works on asyncio and trio.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Sequence

import anyio

from ..errors import (
    CursorExpiredError,
    NotFoundError,
    OwnershipError,
    StoreClosedError,
)
from ..values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    EventKind,
    JobStatus,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
)
from .base import ChatRow, Outcome, Store

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
        self._events: list[StoreEvent] = []
        self._pruned_through = 0  # every event with seq <= this was pruned
        self._seq = itertools.count(1)
        self._head = 0
        self._changed: anyio.Event | None = None
        self._waiting = 0

    async def aclose(self) -> None:
        self._closed = True
        self._wake()

    def _check(self) -> None:
        if self._closed:
            raise StoreClosedError("the memory store is closed")

    # --- helpers ---------------------------------------------------------------------------

    def _append(
        self,
        kind: EventKind,
        ws: Workspace,
        build: Build | None,
        build_number: int = 0,
        **fields: object,
    ) -> None:
        seq = next(self._seq)
        self._head = seq
        self._events.append(
            StoreEvent.about(kind, ws, build, seq=seq, at=self._clock(), build_number=build_number, **fields)
        )

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _facts(self, workspace_id: str) -> WorkspaceFacts:
        ws = self._workspaces.get(workspace_id)
        if ws is None:
            raise NotFoundError(f"no workspace {workspace_id!r}")
        build_id = self._latest.get(workspace_id)
        return WorkspaceFacts(
            workspace=ws,
            latest_build=self._builds[build_id] if build_id else None,
            agent=self._agents.get(workspace_id),
            seq=self._head,
        )

    def _new_build(self, ws: Workspace, number: int, transition: Transition) -> Build:
        build = Build(
            build_id=str(uuid.uuid4()),
            workspace_id=ws.workspace_id,
            number=number,
            transition=transition,
            status=JobStatus.PENDING,
        )
        self._builds[build.build_id] = build
        self._pending[build.build_id] = None
        self._latest[ws.workspace_id] = build.build_id
        self._append(EventKind.BUILD_QUEUED, ws, build, status=JobStatus.PENDING)
        return build

    # --- chats and workspaces --------------------------------------------------------------

    async def register_chat(self, chat_id: str, owner: str) -> Chat:
        self._check()
        chat = self._chats.get(chat_id)
        if chat is None:
            chat = self._chats[chat_id] = Chat(chat_id, owner)
        elif chat.owner != owner:
            raise OwnershipError(f"chat {chat_id!r} is registered to another owner")
        return chat

    async def get_chat(self, chat_id: str) -> Chat | None:
        self._check()
        return self._chats.get(chat_id)

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        self._check()
        return self._facts(workspace_id)

    async def create_workspace(
        self, chat_id: str, name: str, *, expected_workspace_id: str | None
    ) -> Outcome:
        self._check()
        chat = self._chats.get(chat_id)
        if chat is None:
            raise NotFoundError(f"no chat {chat_id!r}")
        if chat.workspace_id != expected_workspace_id:
            assert chat.workspace_id is not None
            return Outcome(fired=False, build=None, facts=self._facts(chat.workspace_id))
        ws = Workspace(str(uuid.uuid4()), chat_id, chat.owner, name)
        self._workspaces[ws.workspace_id] = ws
        self._chats[chat_id] = Chat(chat_id, chat.owner, ws.workspace_id)
        self._append(EventKind.CHAT_BOUND, ws, None)
        build = self._new_build(ws, 1, Transition.START)
        self._wake()
        return Outcome(fired=True, build=build, facts=self._facts(ws.workspace_id))

    async def request_build(
        self, workspace_id: str, transition: Transition, *, expected_build_number: int
    ) -> Outcome:
        self._check()
        facts = self._facts(workspace_id)
        latest = facts.latest_build
        number = latest.number if latest else 0
        if (
            facts.workspace.deleted
            or number != expected_build_number
            or (latest is not None and latest.status.in_progress)
        ):
            return Outcome(fired=False, build=None, facts=facts)
        build = self._new_build(facts.workspace, number + 1, transition)
        self._wake()
        return Outcome(fired=True, build=build, facts=self._facts(workspace_id))

    async def list_chats(self) -> Sequence[ChatRow]:
        self._check()
        return [
            ChatRow(chat, self._facts(chat.workspace_id) if chat.workspace_id else None)
            for chat in self._chats.values()
        ]

    # --- the provisioner side ---------------------------------------------------------------

    async def claim_build(self, worker: str) -> Build | None:
        self._check()
        # Oldest pending first, without scanning every build ever made (a claim per build would
        # otherwise cost O(builds), quadratic over a run). Entries finished while pending are
        # dropped here as they come up.
        while self._pending:
            build_id = next(iter(self._pending))
            del self._pending[build_id]
            build = self._builds[build_id]
            if build.status is JobStatus.PENDING:
                claimed = Build(
                    build.build_id,
                    build.workspace_id,
                    build.number,
                    build.transition,
                    JobStatus.RUNNING,
                    worker=worker,
                )
                self._builds[build.build_id] = claimed
                ws = self._workspaces[build.workspace_id]
                self._append(EventKind.BUILD_UPDATED, ws, claimed, status=JobStatus.RUNNING)
                self._wake()
                return claimed
        return None

    async def finish_build(
        self,
        build_id: str,
        status: JobStatus,
        error: str | None = None,
        *,
        has_agent: bool = True,
    ) -> Build:
        self._check()
        if not status.finished:
            raise ValueError(f"finish_build takes a final status, not {status.value!r}")
        build = self._builds.get(build_id)
        if build is None:
            raise NotFoundError(f"no build {build_id!r}")
        done = build.finished_as(status, error, has_agent=has_agent)
        starts_agent = done.starts_agent
        self._builds[build_id] = done
        ws = self._workspaces[build.workspace_id]
        self._append(
            EventKind.BUILD_FINISHED,
            ws,
            done,
            status=status,
            error=done.error,
            has_agent=done.has_agent,
        )
        if starts_agent and has_agent:
            self._agents[ws.workspace_id] = Agent(ws.workspace_id, build.number, AgentLifecycle.CREATED)
        if status is JobStatus.SUCCEEDED and build.transition is Transition.DELETE:
            ws = Workspace(ws.workspace_id, ws.chat_id, ws.owner, ws.name, deleted=True)
            self._workspaces[ws.workspace_id] = ws
            self._append(EventKind.WORKSPACE_DELETED, ws, done)
        self._wake()
        return done

    async def report_agent(self, workspace_id: str, lifecycle: AgentLifecycle) -> None:
        self._check()
        agent = self._agents.get(workspace_id)
        if agent is None:
            raise NotFoundError(f"workspace {workspace_id!r} has no agent")
        agent = Agent(workspace_id, agent.build_number, lifecycle)
        self._agents[workspace_id] = agent
        ws = self._workspaces[workspace_id]
        self._append(EventKind.AGENT_UPDATED, ws, None, agent.build_number, agent=lifecycle)
        self._wake()

    # --- the event log ----------------------------------------------------------------------

    async def head(self) -> int:
        self._check()
        return self._head

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        self._check()
        if after < self._pruned_through:
            raise CursorExpiredError(after, self._pruned_through + 1)
        # Events are appended in seq order, so the wanted ones start at a computable index.
        first = self._events[0].seq if self._events else self._head + 1
        start = max(0, after - first + 1)
        return self._events[start : start + limit]

    async def wait_for_change(self, after: int) -> None:
        self._check()
        if self._head > after:
            return
        if self._changed is None:
            self._changed = anyio.Event()
        self._waiting += 1
        try:
            await self._changed.wait()
        finally:
            self._waiting -= 1
            if not self._waiting:
                # Drop the event with its last waiter: it belongs to this event loop, and a
                # store reused under another ``anyio.run`` must not find it.
                self._changed = None
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
