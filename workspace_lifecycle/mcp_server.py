"""The workspace tools as an MCP server (``workspace-lifecycle mcp``), on the official ``mcp`` SDK.

The server lists exactly :func:`~workspace_lifecycle.tools.tool_definitions` with
``chat_id_argument=True, status=True`` (their JSON schemas are the tools' ``inputSchema``
verbatim) and answers every call with :func:`~workspace_lifecycle.tools.dispatch_tool`: the
answer's ``text`` is the one text content, and an error answer is an MCP tool error
(``isError: true``), never a protocol error. There is no second definition of the tools here.

While a call runs, every state change of the chat's workspace is sent as an MCP progress
notification, when the client asked for progress (a ``progressToken`` in the request).

Needs the ``mcp`` extra: ``pip install 'workspace-lifecycle[mcp]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
from .errors import OwnershipError, WorkspaceLifecycleError
from .runtime import Lifecycle
from .tools import STATUS_TOOL, dispatch_tool, tool_definitions
from .values import StateChange, ToolResult

__all__ = ["create_server", "mcp_tools", "serve"]

SERVER_NAME = "workspace-lifecycle"

log = logging.getLogger(__name__)

_INSTRUCTIONS = (
    "Tools for the chat's workspace (its sandbox): create_workspace, start_workspace, "
    "stop_workspace, delete_workspace, and the read-only workspace_status. Each takes an "
    "optional chat_id; without it the server's default chat is used."
)

#: How long an answer waits for a progress notification already being sent.
_FLUSH_SECONDS = 1.0

#: The tools that change a workspace (and may wait for a build); the rest only read.
_WAITING_TOOLS = frozenset({"create_workspace", "start_workspace", "stop_workspace", "delete_workspace"})


def mcp_tools() -> list[types.Tool]:
    """The MCP tool list: ``tool_definitions(chat_id_argument=True, status=True)``, as MCP tools."""
    return [
        types.Tool(name=d["name"], description=d["description"], input_schema=d["input_schema"])
        for d in tool_definitions(chat_id_argument=True, status=True)
    ]


def _answer(result: ToolResult) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=result.text)], is_error=result.is_error
    )


def _chat_of(arguments: Mapping[str, Any] | None, default: str | None) -> str | None:
    """The chat a call is about: its ``chat_id`` argument, else the server's default."""
    chat = arguments.get("chat_id") if arguments else None
    if isinstance(chat, str) and chat:
        return chat
    return default


def _waits(name: str, arguments: Mapping[str, Any] | None) -> bool:
    """Whether the call may wait for builds (a changing tool without ``wait: false``)."""
    return name in _WAITING_TOOLS and not (arguments and arguments.get("wait") is False)


def _progress_message(change: StateChange) -> str:
    return f"{change.from_state.value} -> {change.to_state.value} (build {change.build_number})"


class _ProgressReporter:
    """Sends one progress notification per state change of a chat's workspace, until cancelled."""

    def __init__(self, lifecycle: Lifecycle, chat: str, session: ServerSession) -> None:
        self._lifecycle = lifecycle
        self._chat = chat
        self._session = session
        self._sent = anyio.Event()
        self._sent.set()  # nothing in flight

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        changes = self._lifecycle.watch(self._chat)
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


async def _register(lifecycle: Lifecycle, chat: str, owner: str) -> bool:
    """Register ``chat`` for ``owner`` (idempotent); ``False`` when another owner has it."""
    try:
        await lifecycle.register_chat(chat, owner=owner)
    except OwnershipError:
        return False
    return True


async def _dispatch(
    lifecycle: Lifecycle, name: str, arguments: Mapping[str, Any] | None, *, chat: str | None, owner: str
) -> ToolResult:
    try:
        return await dispatch_tool(lifecycle, name, arguments, chat_id=chat, owner=owner)
    except (WorkspaceLifecycleError, ValueError) as exc:
        # A closed store or a stopped event pump: the model sees the sentence, not a protocol error.
        return ToolResult.error(str(exc))


def create_server(lifecycle: Lifecycle, *, owner: str, chat: str | None = None) -> Server[Any]:
    """An MCP server answering the workspace tools with ``lifecycle`` for ``owner``.

    ``chat`` is the default chat for calls without a ``chat_id`` argument. Each call of a tool
    that acts registers its chat for ``owner`` first (idempotent); another owner's chat is
    answered exactly as an unknown one.
    """

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=mcp_tools())

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = params.arguments
        target = _chat_of(arguments, chat)
        try:
            # Acting on a chat registers it for the owner; the read-only status tool does not,
            # so that it answers another owner's chat exactly as an unknown one (an error), as
            # dispatch_tool answers every tool for another owner's chat.
            owned = (
                target is not None
                and params.name != STATUS_TOOL["name"]
                and await _register(lifecycle, target, owner)
            )
        except (WorkspaceLifecycleError, ValueError) as exc:
            return _answer(ToolResult.error(str(exc)))  # e.g. a chat id with a NUL byte
        async with anyio.create_task_group() as tg:
            reporter = None
            if owned and target is not None and _waits(params.name, arguments):
                # Progress only goes out when the client sent a progress token (else the SDK
                # drops it); the watch itself costs one subscription per call.
                reporter = _ProgressReporter(lifecycle, target, ctx.session)
                await tg.start(reporter.run)
            result = await _dispatch(lifecycle, params.name, arguments, chat=chat, owner=owner)
            if reporter is not None:
                await reporter.flush()
            tg.cancel_scope.cancel()
        return _answer(result)

    return Server(
        SERVER_NAME,
        version=__version__,
        instructions=_INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve(db_url: str, owner: str, chat: str | None) -> None:
    """Serve the workspace tools over stdio on the store at ``db_url`` until stdin closes.

    The default ``chat`` is registered for ``owner`` before serving, so ``workspace_status``
    answers it at once; if another owner has it, :class:`~workspace_lifecycle.OwnershipError`
    is raised (a configuration mistake, reported before any client connects).
    """
    async with open_store(db_url) as store, Lifecycle(store) as lifecycle:
        if chat is not None:
            await lifecycle.register_chat(chat, owner=owner)
        server = create_server(lifecycle, owner=owner, chat=chat)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
