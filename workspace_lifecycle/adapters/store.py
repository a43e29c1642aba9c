""":class:`DriverStore`: the store interface written once, over a :class:`~.driver.Driver`.

Every write of :class:`~workspace_lifecycle.adapters.base.Store` is here, once, as a
:class:`~.driver.Plan`: the rows it reads, the pure decision of
:mod:`workspace_lifecycle.writes` it calls on them, and the answer it gives. The driver runs
the plan inside its transaction; this class handles, in one place, the two outcomes that are
not an answer: a decision to write nothing (answered from the rows read) and a guard that found
the rows changed (read and decide again, up to :data:`MAX_DECISIONS` times).

Adding a write is a pure decision in :mod:`~workspace_lifecycle.writes`, one method here, and
nothing in a driver unless it reads rows no :class:`~.driver.ReadKind` names yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from typing import Any, TypeVar

from .. import writes
from ..errors import NotFoundError, StoreBusyError
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
from .base import DEFAULT_LEASE_SECONDS, ArmedDeadlines, ChatRow, Outcome, Store, Topic
from .driver import RETRY, Decision, Driver, Plan, Read, Rows

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


def _not_fired(facts: WorkspaceFacts) -> Decision[Outcome]:
    return Decision(None, lambda _: Outcome(fired=False, build=None, facts=facts))


def _fired(facts: WorkspaceFacts, write: writes.Write | None) -> Decision[Outcome]:
    """A request's answer: the build it appended, with the facts as the write left them."""
    if write is None:
        return _not_fired(facts)
    return Decision(
        write,
        lambda head: Outcome(
            fired=write.build is not None, build=write.build, facts=writes.applied(facts, write, head)
        ),
    )


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
        transact = self.driver.transact
        for _ in range(MAX_DECISIONS):
            result = await transact(plan)
            if result is not RETRY:
                return result  # type: ignore[return-value]
        raise StoreBusyError(
            f"a write ({plan.op}) found its rows changed by other writers {MAX_DECISIONS} times in a row"
        )

    # --- chats and workspaces ------------------------------------------------------------------

    async def register_chat(
        self,
        chat_id: str,
        owner: str,
        *,
        policy: Policy | None = None,
        default_policy: Policy | None = None,
    ) -> Chat:
        def decide(rows: Rows) -> Decision[Chat]:
            existing = rows.chat
            chat = writes.register_chat(
                existing, chat_id, owner, policy=policy, default=default_policy or Policy()
            )
            if chat is None:
                assert existing is not None
                return Decision(None, lambda _: existing)
            return Decision(writes.Write(events=(), chat=chat), lambda _: chat)

        return await self._transact(Plan("register_chat", Read.of_chat(chat_id, related=False), decide))

    async def create_workspace(
        self,
        chat_id: str,
        name: str,
        *,
        expected_workspace_id: str | None,
        parameters: Mapping[str, str] | None = None,
    ) -> Outcome:
        clock = self.driver.clock

        def decide(rows: Rows) -> Decision[Outcome]:
            chat = rows.chat
            if chat is None:
                raise NotFoundError(f"no chat {chat_id!r}")
            bound = rows.facts  # the workspace the chat is bound to now, if any
            write = writes.create_workspace(
                chat,
                expected_workspace_id=expected_workspace_id,
                workspace_id=_new_id(),
                build_id=_new_id(),
                name=name,
                at=clock(),
                parameters=parameters,
                replaced=bound if expected_workspace_id is not None else None,
            )
            if write is None:
                if bound is None:
                    raise NotFoundError(f"chat {chat_id!r} has no workspace")
                return _not_fired(bound)
            assert write.workspace is not None
            created = WorkspaceFacts(write.workspace, None, None, 0)
            return _fired(created, write)

        return await self._transact(Plan("create_workspace", Read.of_chat(chat_id), decide))

    async def request_build(
        self,
        workspace_id: str,
        transition: Transition,
        *,
        expected_build_number: int,
        parameters: Mapping[str, str] | None = None,
    ) -> Outcome:
        clock = self.driver.clock

        def decide(rows: Rows) -> Decision[Outcome]:
            facts = _facts(rows, f"no workspace {workspace_id!r}")
            write = writes.request_build(
                facts,
                chat=rows.chat,
                transition=transition,
                expected_build_number=expected_build_number,
                build_id=_new_id(),
                at=clock(),
                parameters=parameters,
            )
            return _fired(facts, write)

        return await self._transact(Plan("request_build", Read.workspace(workspace_id), decide))

    async def touch(self, workspace_id: str) -> Deadline | None:
        clock = self.driver.clock

        def decide(rows: Rows) -> Decision[Deadline | None]:
            facts = _facts(rows, f"no workspace {workspace_id!r}")
            policy = rows.chat.policy if rows.chat is not None else Policy()
            write = writes.touch(facts, policy, at=clock())
            armed = (
                facts.workspace.deadline
                if write is None or write.workspace is None
                else write.workspace.deadline
            )
            return Decision(write, lambda _: armed)

        return await self._transact(Plan("touch", Read.workspace(workspace_id), decide))

    async def fire_deadline(self, workspace_id: str, expected: Deadline) -> Outcome:
        clock = self.driver.clock

        def decide(rows: Rows) -> Decision[Outcome]:
            facts = _facts(rows, f"no workspace {workspace_id!r}")
            write = writes.fire_deadline(
                facts, chat=rows.chat, expected=expected, build_id=_new_id(), at=clock()
            )
            return _fired(facts, write)

        return await self._transact(Plan("fire_deadline", Read.workspace(workspace_id), decide))

    # --- the provisioner side ------------------------------------------------------------------

    async def claim_build(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Build | None:
        writes.check_lease_seconds(lease_seconds)
        clock = self.driver.clock

        def decide(rows: Rows) -> Decision[Build | None]:
            if rows.build is None or rows.workspace is None:
                return Decision(None, lambda _: None)
            write = writes.claim_build(
                rows.build,
                rows.workspace,
                worker=worker,
                at=clock(),
                token=uuid.uuid4().hex,
                lease_seconds=lease_seconds,
            )
            return Decision(write, lambda _: write.build)

        return await self._transact(Plan("claim_build", Read.pending(), decide))

    async def renew_lease(
        self, build_id: str, token: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> float:
        clock = self.driver.clock

        def decide(rows: Rows) -> Decision[float]:
            if rows.build is None or rows.workspace is None:
                raise NotFoundError(f"no build {build_id!r}")
            write = writes.renew_lease(
                rows.build, rows.workspace, token, at=clock(), lease_seconds=lease_seconds
            )
            assert write.build is not None and write.build.lease_expires_at is not None
            until = write.build.lease_expires_at
            return Decision(write, lambda _: until)

        return await self._transact(Plan("renew_lease", Read.build(build_id), decide, lease=token))

    async def expire_lease(self, build_id: str, token: str) -> Build | None:
        clock = self.driver.clock

        def decide(rows: Rows) -> Decision[Build | None]:
            if rows.build is None or rows.workspace is None:
                return Decision(None, lambda _: None)
            policy = rows.chat.policy if rows.chat is not None else None
            write = writes.expire_lease(rows.build, rows.workspace, token, at=clock(), policy=policy)
            return Decision(write, lambda _: None if write is None else write.build)

        return await self._transact(Plan("expire_lease", Read.build(build_id), decide, lease=token))

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
        clock = self.driver.clock

        def decide(rows: Rows) -> Decision[Build]:
            if rows.build is None or rows.workspace is None:
                raise NotFoundError(f"no build {build_id!r}")
            write = writes.finish_build(
                rows.build,
                rows.workspace,
                status,
                error,
                has_agent=has_agent,
                at=clock(),
                details=details,
                policy=rows.chat.policy if rows.chat is not None else None,
                lease=lease,
            )
            done = write.build
            assert done is not None
            return Decision(write, lambda _: done)

        return await self._transact(Plan("finish_build", Read.build(build_id), decide, lease=lease))

    async def report_agent(
        self, workspace_id: str, lifecycle: AgentLifecycle | str, *, lease: str | None = None
    ) -> None:
        lifecycle = writes.parse_lifecycle(lifecycle)
        clock = self.driver.clock

        def decide(rows: Rows) -> Decision[None]:
            facts = _facts(rows, f"workspace {workspace_id!r} has no agent")
            write = writes.report_agent(
                facts.agent, facts.workspace, lifecycle, at=clock(), latest=facts.latest_build, lease=lease
            )
            return Decision(write, lambda _: None)

        await self._transact(
            Plan("report_agent", Read.workspace(workspace_id, related=False), decide, lease=lease)
        )

    # --- reads, the event log and interest: the driver's own -----------------------------------

    async def get_chat(self, chat_id: str) -> Chat | None:
        return await self.driver.get_chat(chat_id)

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        return await self.driver.workspace_facts(workspace_id)

    async def get_build(self, build_id: str) -> Build:
        return await self.driver.get_build(build_id)

    async def armed_deadlines(self) -> ArmedDeadlines:
        return await self.driver.armed_deadlines()

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
