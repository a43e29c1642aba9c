"""How a :class:`~workspace_lifecycle.runtime.Lifecycle` serves a chat's requests: the checks of
the caller's arguments, the owner's chat, its limits and usage, turns, a tool request run by
the :class:`~workspace_lifecycle._interpreter.Interpreter` (counted as activity), the read-only
``status`` (woken by the store's events) and ``logs``, and every answer given with the
workspace's next deadline in words. The public methods (and their documentation) are
:class:`~workspace_lifecycle.runtime.Lifecycle`'s; a touch, which comes with every chat message,
is :meth:`~workspace_lifecycle.runtime.Lifecycle.touch` itself, with this module's checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from . import answers, checks, steps
from ._engine import Engine
from ._holds import Turn
from ._logread import read_logs
from ._warm_pools import WarmPools
from .adapters.base import Store
from .clock import Clock
from .errors import NotFoundError
from .limits import Limits, Usage
from .machine import Request, derive_state
from .steps import MAX_STATUS_WAIT_MS, Flow, Settled
from .telemetry import RequestSpan
from .values import Chat, Policy, ToolResult, WorkspaceState, check_parameters

__all__ = ["Requests", "check_id", "check_ids", "owned"]


#: The one rule and sentence for ids, on every face (the check itself: every request makes two).
check_id = checks.identifier


def check_ids(chat_id: str | None, owner: str | None) -> None:
    """A follower's ``chat_id`` and ``owner``, each ``None`` or an id."""
    if chat_id is not None:
        check_id("chat_id", chat_id)
    if owner is not None:
        check_id("owner", owner)


def owned(chat: Chat | None, chat_id: str, owner: str) -> Chat:
    """``chat`` (as read for ``chat_id``) if it is ``owner``'s; an unknown chat, or another
    owner's, raises the same :class:`~workspace_lifecycle.errors.NotFoundError`. (A check of
    the row read, not a read of its own: a touch comes with every chat message.)"""
    if chat is None or chat.owner != owner:
        raise NotFoundError(f"no chat {chat_id!r} for this owner")
    return chat


class Requests:
    """The request side of one runtime, over its ``engine``'s parts."""

    def __init__(self, store: Store, clock: Clock, engine: Engine, warm: WarmPools) -> None:
        self.store = store
        self.clock = clock
        self.engine = engine
        self.warm = warm

    async def register_chat(self, chat_id: str, owner: str, policy: Policy | None, default: Policy) -> Chat:
        check_id("chat_id", chat_id)
        check_id("owner", owner)
        if policy is not None and not isinstance(policy, Policy):
            raise ValueError(f"policy must be a workspace_lifecycle.Policy, not {policy!r}")
        return await self.store.register_chat(chat_id, owner, policy=policy, default_policy=default)

    async def set_limits(self, owner: str, limits: Limits) -> None:
        check_id("owner", owner)
        if not isinstance(limits, Limits):
            raise ValueError(f"limits must be a workspace_lifecycle.Limits, not {limits!r}")
        await self.store.set_limits(owner, limits)

    async def usage(self, owner: str) -> Usage:
        check_id("owner", owner)
        return await self.store.usage(owner)

    @asynccontextmanager
    async def turn(self, chat_id: str, owner: str) -> AsyncIterator[Turn]:
        check_id("chat_id", chat_id)
        check_id("owner", owner)
        self.engine.raise_if_failed()
        chat = owned(await self.store.get_chat(chat_id), chat_id, owner)
        async with self.engine.holds.hold(chat) as held:
            yield held

    async def state(self, chat_id: str, owner: str | None) -> WorkspaceState:
        """The chat's workspace state from the rows; another owner's chat reads as unknown."""
        check_id("chat_id", chat_id)
        check_ids(None, owner)
        chat = await self.store.get_chat(chat_id)
        if chat is None or chat.workspace_id is None or (owner is not None and chat.owner != owner):
            return WorkspaceState.NO_WORKSPACE
        return derive_state(await self.store.workspace_facts(chat.workspace_id))

    async def create(
        self,
        chat_id: str,
        owner: str,
        wait: bool,
        *,
        name: str | None,
        parameters: Mapping[str, str] | None,
        pool: str | None,
        default_pool: str | None,
    ) -> ToolResult:
        """A create, its name checked (Coder's rule), from ``pool`` (or ``default_pool``)."""
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a string or None, not {type(name).__name__}")
        check_id("chat_id", chat_id)
        check_id("owner", owner)
        if name:
            checks.workspace_name("name", name)
        pool = self.warm.check(default_pool if pool is None else pool)
        return await self.serve(
            Request.CREATE, chat_id, owner, wait, name=name, parameters=parameters, pool=pool
        )

    async def serve(
        self,
        request: Request,
        chat_id: str,
        owner: str,
        wait: bool,
        *,
        name: str | None = None,
        parameters: Mapping[str, str] | None = None,
        pool: str | None = None,
    ) -> ToolResult:
        """A tool request, decided step by step and run by the interpreter; a start or a create
        counts as activity."""
        check_id("chat_id", chat_id)
        check_id("owner", owner)
        if not isinstance(wait, bool):
            raise ValueError(f"wait must be a bool, not {type(wait).__name__}")
        flow = Flow(request, wait=wait, owner=owner, parameters=check_parameters(parameters), pool=pool)
        with RequestSpan(request.value, chat_id) as span:
            result, chat = await self.engine.steps.serve(flow, chat_id, owner, name, span)
            span.result(result)
        if chat is None or chat.owner != owner:
            return result
        if request in (Request.START, Request.CREATE):
            await self.engine.activity.after_request(chat)  # a stop or a delete leaves nothing to keep alive
        if result.is_error:
            return result
        workspace_id = chat.workspace_id
        if workspace_id is None:  # a create bound the chat after it was read
            bound = await self.store.get_chat(chat_id)
            workspace_id = bound.workspace_id if bound is not None else None
        return await self.with_deadline(result, workspace_id)

    async def status(self, chat_id: str, owner: str, wait_ms: float) -> ToolResult:
        """The ``status`` tool (see :meth:`~workspace_lifecycle.runtime.Lifecycle.status`)."""
        check_id("chat_id", chat_id)
        check_id("owner", owner)
        if (
            isinstance(wait_ms, bool)
            or not isinstance(wait_ms, int | float)
            or not 0 <= wait_ms <= MAX_STATUS_WAIT_MS
        ):
            raise ValueError(f"wait_ms must be a number from 0 to {MAX_STATUS_WAIT_MS}, not {wait_ms!r}")
        engine = self.engine
        engine.raise_if_failed()
        chat = await self.store.get_chat(chat_id)
        if chat is None or chat.owner != owner or chat.workspace_id is None:
            return steps.status(None)
        async with engine.registry.track(chat.workspace_id) as entry:
            await engine.pump.caught_up(await self.store.head())
            expired = wait_ms > 0 and not await engine.steps.wait(entry, Settled(), wait_ms / 1000)
            result = steps.status(entry.current(), wait_expired=expired)
        await engine.activity.after_request(chat)
        return await self.with_deadline(result, chat.workspace_id)

    async def logs(
        self, chat_id: str, owner: str, build: int | str | None, limit: int, after: int | None
    ) -> ToolResult:
        check_id("chat_id", chat_id)
        check_id("owner", owner)
        return await read_logs(self.store, chat_id, owner, build, limit, after)

    async def with_deadline(self, result: ToolResult, workspace_id: str | None) -> ToolResult:
        """The answer with the workspace's next deadline in words (a model keeps the workspace
        with a touch); read from the store when this runtime does not follow the deadlines."""
        if workspace_id is None or result.is_error:
            return result
        if self.engine.fire_deadlines:
            deadline = self.engine.deadlines.known(workspace_id)
        else:
            try:
                deadline = (await self.store.workspace_facts(workspace_id)).workspace.deadline
            except NotFoundError:
                return result
        return answers.with_deadline(result, deadline, self.clock())
