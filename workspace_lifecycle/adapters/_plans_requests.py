"""The plans of :class:`~.store.DriverStore` for a chat's requests: register a chat, create its
workspace, request a build, defer a request behind a build, store an owner's limits."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .. import writes
from ..errors import NotFoundError
from ..limits import Limits
from ..values import Chat, Policy, Transition, WorkspaceFacts
from ._plans import RequestPlan, facts_of
from .base import Deferral
from .driver import Plan, Read, Rows

__all__ = ["CreateWorkspace", "Defer", "RegisterChat", "RequestBuild", "SetLimits"]


class RegisterChat(Plan[Chat]):
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


class CreateWorkspace(RequestPlan):
    op = "create_workspace"
    __slots__ = ("chat_id", "clock", "expected", "limits", "name", "new_id", "parameters")

    def __init__(
        self,
        chat_id: str,
        name: str,
        expected: str | None,
        parameters: Mapping[str, str] | None,
        limits: Limits | None,
        clock: Callable[[], float],
        new_id: Callable[[], str],
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
        self.new_id = new_id

    def decide(self, rows: Rows) -> writes.Write | None:
        chat = rows.chat
        if chat is None:
            raise NotFoundError(f"no chat {self.chat_id!r}")
        bound = rows.facts  # the workspace the chat is bound to now, if any
        write = writes.create_workspace(
            chat,
            expected_workspace_id=self.expected,
            workspace_id=self.new_id(),
            build_id=self.new_id(),
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


class RequestBuild(RequestPlan):
    op = "request_build"
    __slots__ = ("clock", "expected", "limits", "new_id", "parameters", "transition")

    def __init__(
        self,
        workspace_id: str,
        transition: Transition,
        expected: int,
        parameters: Mapping[str, str] | None,
        limits: Limits | None,
        clock: Callable[[], float],
        new_id: Callable[[], str],
    ) -> None:
        # Only a start may take a slot more: only a start reads (and serialises on) the owner.
        # Without the runtime's limits only an owner's stored ones apply (Read.limited).
        super().__init__(
            Read.workspace(workspace_id, usage=transition is Transition.START, limited=limits is not None)
        )
        self.transition, self.expected, self.parameters, self.clock = transition, expected, parameters, clock
        self.limits, self.new_id = limits, new_id

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = facts_of(rows, f"no workspace {self.read.key!r}")
        write = writes.request_build(
            facts,
            chat=rows.chat,
            transition=self.transition,
            expected_build_number=self.expected,
            build_id=self.new_id(),
            at=self.clock(),
            parameters=self.parameters,
            usage=rows.usage,
            limits=self.limits,
        )
        return self._decided(facts, write)


class Defer(Plan[Deferral]):
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
        facts = facts_of(rows, f"no workspace {self.read.key!r}")
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


class SetLimits(Plan[None]):
    op = "set_limits"
    __slots__ = ("limits",)

    def __init__(self, owner: str, limits: Limits) -> None:
        super().__init__(Read.owner(owner))
        self.limits = limits

    def decide(self, rows: Rows) -> writes.Write | None:
        return writes.set_limits(self.read.key, self.limits)

    def answer(self, head: int) -> None:
        return None
