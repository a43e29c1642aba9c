"""The workspace tools as an MCP server (``workspace-lifecycle mcp``), on the official ``mcp`` SDK.

The server lists exactly :func:`~workspace_lifecycle.tools.tool_definitions` with
``status=True`` (their JSON schemas are the tools' ``inputSchema`` verbatim) and answers every
call as :func:`~workspace_lifecycle.tools.dispatch_tool` does: the answer's ``text`` is the one
text content, and an error answer is an MCP tool error (``isError: true``), never a protocol
error. There is no second definition of the tools here.

Scope: a server bound to a chat (``--chat``) acts on that chat only; its tools take no
``chat_id``. A server without one serves many chats: its tools take a ``chat_id`` argument,
limited to the chats the host allows and, always, to the server's owner. Any other chat, and
another owner's, is answered exactly as an unknown chat. The server registers no chat on a
call; :func:`serve` registers its bound chat once, at start-up.

While a call runs, every state change of the chat's workspace is sent as an MCP progress
notification, when the client asked for progress (a ``progressToken`` in the request).

Between calls, a server bound to a chat sends each ``deadline_approaching`` event of its chat
(the chat's ``Policy.warn_before``) as an MCP log message (``notifications/message``, level
``warning``, logger ``workspace-lifecycle``) on the connection's own channel, once the client
made its first request or sent ``notifications/initialized``: the model hears "idle stop in
60 s" and can keep the workspace with any tool call. A 2026-07-28 connection has no channel
outside a request for such messages (the SDK drops them); there the tool answers'
``next_deadline`` tells the same.

Needs the ``mcp`` extra: ``pip install 'workspace-lifecycle[mcp]'``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server

from . import __version__
from .adapters import open_store
from .deadlines import STANDALONE_POLICY, in_words
from .errors import OwnershipError, WorkspaceLifecycleError
from .runtime import Lifecycle
from .tools import AllowedChats, ToolCall, held_turn, prepare_tool_call, run_tool_call, tool_definitions
from .values import Policy, StateChange, StoreEvent, ToolResult

__all__ = ["create_server", "every_chat", "mcp_tools", "serve"]

SERVER_NAME = "workspace-lifecycle"

log = logging.getLogger(__name__)

_INSTRUCTIONS = (
    "Tools for the chat's workspace (its sandbox): create_workspace, start_workspace, "
    "stop_workspace, delete_workspace, and the read-only workspace_status."
)
_INSTRUCTIONS_MANY = (
    f"{_INSTRUCTIONS} Each takes a chat_id naming the chat to act on"
    " (optional when the server has a default chat)."
)

#: How long an answer waits for a progress notification already being sent.
_FLUSH_SECONDS = 1.0


def every_chat(chat_id: str) -> bool:
    """``allowed_chats`` for a server that serves every chat of its owner (the CLI without ``--chat``)."""
    return True


def mcp_tools(*, chat_id_argument: bool = False) -> list[types.Tool]:
    """The MCP tool list: ``tool_definitions(chat_id_argument=..., status=True)``, as MCP tools."""
    return [
        types.Tool(name=d["name"], description=d["description"], input_schema=d["input_schema"])
        for d in tool_definitions(chat_id_argument=chat_id_argument, status=True)
    ]


def _answer(result: ToolResult) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=result.text)], is_error=result.is_error
    )


def _progress_message(change: StateChange) -> str:
    return f"{change.from_state.value} -> {change.to_state.value} (build {change.build_number})"


class _ProgressReporter:
    """Sends one progress notification per state change of a chat's workspace, until cancelled."""

    def __init__(self, lifecycle: Lifecycle, chat: str, owner: str, session: ServerSession) -> None:
        self._lifecycle = lifecycle
        self._chat = chat
        self._owner = owner
        self._session = session
        self._sent = anyio.Event()
        self._sent.set()  # nothing in flight

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # With the owner, another owner's chat is watched as an unknown one: nothing is sent.
        changes = self._lifecycle.watch(self._chat, owner=self._owner)
        # The watch registers itself in its first step, which runs before this task first
        # suspends: so every change published after ``started()`` returns reaches this loop.
        task_status.started()
        count = 0
        try:
            async for change in changes:
                count += 1
                self._sent = anyio.Event()
                try:
                    await self._session.report_progress(count, None, _progress_message(change))
                except Exception:  # a gone client must not fail the call itself
                    log.debug("progress notification for %s not sent", self._chat, exc_info=True)
                    return
                finally:
                    self._sent.set()
        finally:
            await changes.aclose()

    async def flush(self) -> None:
        """Let a change published together with the answer go out before the answer does."""
        await anyio.lowlevel.checkpoint()
        with anyio.move_on_after(_FLUSH_SECONDS):
            await self._sent.wait()


def warning_message(event: StoreEvent, now: float) -> dict[str, Any]:
    """The data of the MCP log message that tells the client a deadline approaches."""
    armed = event.armed
    words = in_words(armed, now)
    return {
        "event": event.kind.value,
        "chat_id": event.chat_id,
        "next_deadline": words,
        "deadline": event.deadline,
        "message": f"{words}; any workspace tool call (workspace_status is enough) keeps the workspace",
    }


@contextlib.asynccontextmanager
async def _quiet(server: Server[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """The lifespan of a server that sends no warnings (one serving many chats)."""
    yield {}


class _Warner:
    """Sends the bound chat's expiry warnings to the client, on the connection's own channel."""

    def __init__(self, lifecycle: Lifecycle, chat: str, owner: str) -> None:
        self._lifecycle = lifecycle
        self._chat = chat
        self._owner = owner
        self._session: ServerSession | None = None
        self._connected = anyio.Event()

    def connected(self, session: ServerSession) -> None:
        """A request (or the client's ``initialized``) showed the connection's session."""
        self._session = session
        self._connected.set()

    @contextlib.asynccontextmanager
    async def running(self, server: Server[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """The server's lifespan: forward warnings while it serves a connection."""
        async with anyio.create_task_group() as tg:
            await tg.start(self._forward)
            try:
                yield {}
            finally:
                tg.cancel_scope.cancel()

    async def _forward(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        warnings = self._lifecycle.warnings(self._chat, owner=self._owner)
        task_status.started()
        try:
            async for event in warnings:
                if self._session is None:
                    continue  # no client has spoken yet: nobody to tell
                note = types.LoggingMessageNotification(
                    params=types.LoggingMessageNotificationParams(
                        level="warning",
                        logger=SERVER_NAME,
                        data=warning_message(event, self._lifecycle.clock()),
                    )
                )
                try:
                    await self._session.send_notification(note)
                except Exception:  # a gone client must not stop the server
                    log.debug("deadline warning for %s not sent", self._chat, exc_info=True)
        finally:
            await warnings.aclose()


async def _run(lifecycle: Lifecycle, call: ToolCall, owner: str) -> ToolResult:
    try:
        # The call holds the chat's turn: no idle stop fires while a tool call is in flight.
        async with held_turn(lifecycle, call.chat_id, owner):
            return await run_tool_call(lifecycle, call, owner=owner)
    except WorkspaceLifecycleError as exc:
        # A closed store or a stopped event pump: the model sees the sentence, not a protocol error.
        return ToolResult.error(str(exc))


def create_server(
    lifecycle: Lifecycle, *, owner: str, chat: str | None = None, allowed_chats: AllowedChats | None = None
) -> Server[Any]:
    """An MCP server answering the workspace tools with ``lifecycle`` for ``owner``.

    With ``chat`` alone the server is bound to that chat: its tools take no ``chat_id`` and act
    on ``chat`` only. With ``allowed_chats`` (chat ids or a predicate; :func:`every_chat` for all
    of the owner's) it serves many: a ``chat_id`` argument names one of them, ``chat`` is the
    default. Another owner's chat, an unknown one and one not allowed are answered alike. The
    server registers no chat: the host registers the chats it serves (:func:`serve` registers
    its bound chat).
    """
    if chat is None and allowed_chats is None:
        raise ValueError("create_server needs a chat to bind to, or allowed_chats to serve many chats")
    many = allowed_chats is not None
    tools = mcp_tools(chat_id_argument=many)
    warner = _Warner(lifecycle, chat, owner) if chat is not None and not many else None

    def heard(ctx: ServerRequestContext[Any, Any]) -> None:
        if warner is not None:
            warner.connected(ctx.session)

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        heard(ctx)
        return types.ListToolsResult(tools=tools)

    async def initialized(ctx: ServerRequestContext[Any, Any], params: types.NotificationParams) -> None:
        heard(ctx)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        heard(ctx)
        call = await prepare_tool_call(
            params.name, params.arguments, chat_id=chat, owner=owner, allowed_chats=allowed_chats
        )
        if isinstance(call, ToolResult):
            return _answer(call)
        async with anyio.create_task_group() as tg:
            reporter = None
            if call.waits:
                # Progress only goes out when the client sent a progress token (else the SDK
                # drops it); the watch itself costs one subscription per call.
                reporter = _ProgressReporter(lifecycle, call.chat_id, owner, ctx.session)
                await tg.start(reporter.run)
            result = await _run(lifecycle, call, owner)
            if reporter is not None:
                await reporter.flush()
            tg.cancel_scope.cancel()
        return _answer(result)

    server: Server[dict[str, Any]] = Server(
        SERVER_NAME,
        version=__version__,
        instructions=_INSTRUCTIONS_MANY if many else _INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        lifespan=warner.running if warner is not None else _quiet,
    )
    if warner is not None:
        server.add_notification_handler("notifications/initialized", types.NotificationParams, initialized)
    return server


async def serve(db_url: str, owner: str, chat: str | None, *, policy: Policy | None = None) -> None:
    """Serve the workspace tools over stdio on the store at ``db_url`` until stdin closes.

    With ``chat`` the server is bound to it, and registers it for ``owner`` before serving (so
    ``create_workspace`` works on a fresh database); if another owner has it, the server serves
    it as every face answers another owner's chat: exactly as an unknown chat. Without ``chat``
    it serves every chat ``owner`` has in the store, as the chat runtime registered them; it
    registers none itself. ``policy`` is the policy of the chat it registers (an existing
    chat's is replaced); without it a new chat gets
    :data:`~workspace_lifecycle.STANDALONE_POLICY` (30 idle minutes, no delete). The server's
    runtime fires every chat's deadlines while it runs.
    """
    async with open_store(db_url) as store, Lifecycle(store, policy=STANDALONE_POLICY) as lifecycle:
        if chat is not None:
            with contextlib.suppress(OwnershipError):  # then its tools answer an unknown chat
                await lifecycle.register_chat(chat, owner=owner, policy=policy)
            server = create_server(lifecycle, owner=owner, chat=chat)
        else:
            server = create_server(lifecycle, owner=owner, allowed_chats=every_chat)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
