"""``mcp``: the workspace tools served over MCP (stdio)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Awaitable, Callable

from ._shared import (
    CliError,
    Commands,
    add_db,
    add_policy_options,
    chat_id,
    command,
    database,
    interruptible,
    owner,
    policy,
)


def add_parser(commands: Commands) -> None:
    mcp = command(
        commands,
        "mcp",
        "serve the workspace tools over MCP (stdio)",
        "Serve the workspace tools to an MCP client over stdin/stdout for OWNER. With --chat the "
        "server is bound to CHAT (registered for OWNER at start-up) and its tools take no "
        "chat_id; without it the tools take a chat_id naming one of OWNER's chats, as the chat "
        "runtime registered them. Another owner's chat is answered as an unknown one. Creates "
        "a missing SQLite file. Needs the mcp extra: pip install 'workspace-lifecycle[mcp]'.",
        handle,
    )
    add_db(mcp)
    mcp.add_argument("--owner", type=owner, required=True, help="the owner the tools act for (required)")
    mcp.add_argument("--chat", type=chat_id, metavar="CHAT", help="the one chat the tools act on")
    add_policy_options(mcp, "for the chats the server registers; it also fires every chat's deadlines")


def handle(args: argparse.Namespace) -> int:
    database(args.db, create=True)  # a bad URL or path is reported before the server starts
    try:
        module = importlib.import_module("workspace_lifecycle.mcp_server")
    except ImportError as exc:
        if exc.name == "workspace_lifecycle.mcp_server":
            raise CliError("the MCP server is not part of this installation") from None
        if not (exc.name or "").startswith("workspace_lifecycle"):
            # The SDK is ``mcp`` plus modules such as ``mcp_types`` and its own dependencies.
            raise CliError(
                "the mcp command needs the MCP SDK: pip install 'workspace-lifecycle[mcp]'"
            ) from None
        raise
    serve: Callable[..., Awaitable[None]] = module.serve

    async def serving() -> int:
        await serve(args.db, args.owner, args.chat, policy=policy(args))
        return 0

    return interruptible(serving)
