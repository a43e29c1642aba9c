"""The workspace tools as LLM tool definitions, and a dispatcher from a tool call to the runtime.

:func:`tool_definitions` gives each tool's ``name``, ``description`` and ``input_schema`` (JSON
Schema, the shape model APIs take). :func:`dispatch_tool` runs a tool call by name with its JSON
arguments. The MCP server uses the same definitions; there is no second copy.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from .runtime import Lifecycle
from .values import ToolResult

__all__ = ["STATUS_TOOL", "TOOL_NAMES", "dispatch_tool", "tool_definitions"]

_WAIT = {
    "type": "boolean",
    "description": "Wait for the outcome (default true). With false, answer at once with the state.",
}

_DEFINITIONS: list[dict[str, Any]] = [
    {
        "name": "create_workspace",
        "description": (
            "Create the chat's workspace and wait for its build and agent. Idempotent: if the "
            "chat already has a workspace that is building or running, that workspace is "
            "returned; a stopped one is reported so you can use start_workspace."
        ),
        "input_schema": {
            "type": "object",
            "properties": {
                "name": {
                    "type": "string",
                    "description": "Workspace name; invalid or missing names are generated.",
                },
                "wait": _WAIT,
            },
            "additionalProperties": False,
        },
    },
    {
        "name": "start_workspace",
        "description": (
            "Start the chat's workspace if it is currently stopped. This tool is idempotent — "
            "if the workspace is already running, it returns immediately; if a build is in "
            "progress it waits for it. Use create_workspace first if no workspace exists yet."
        ),
        "input_schema": {"type": "object", "properties": {"wait": _WAIT}, "additionalProperties": False},
    },
    {
        "name": "stop_workspace",
        "description": (
            "Stop the chat's workspace and wait for the stop build to complete. If another "
            "build is in progress, this waits for it first, then stops the workspace if needed. "
            "Idempotent when the workspace is already stopped. This does not delete it."
        ),
        "input_schema": {"type": "object", "properties": {"wait": _WAIT}, "additionalProperties": False},
    },
    {
        "name": "delete_workspace",
        "description": (
            "Delete the chat's workspace with a delete build and wait for it. Afterwards "
            "create_workspace makes a new one."
        ),
        "input_schema": {"type": "object", "properties": {"wait": _WAIT}, "additionalProperties": False},
    },
]

#: The read-only status tool (served over MCP; not one of the four model tools).
STATUS_TOOL: dict[str, Any] = {
    "name": "workspace_status",
    "description": "Report the chat's workspace state (no_workspace, stopped, building, running, agent_ready, failed).",
    "input_schema": {"type": "object", "properties": {}, "additionalProperties": False},
}

TOOL_NAMES = tuple(d["name"] for d in _DEFINITIONS)

_CHAT_ID = {"type": "string", "minLength": 1, "description": "The chat whose workspace to act on."}


def tool_definitions(*, chat_id_argument: bool = False, status: bool = False) -> list[dict[str, Any]]:
    """The tools' definitions (fresh copies; safe to modify).

    ``chat_id_argument`` adds an optional ``chat_id`` input (for servers that host many chats);
    ``status`` appends the read-only ``workspace_status`` tool.

    >>> [d["name"] for d in tool_definitions()]
    ['create_workspace', 'start_workspace', 'stop_workspace', 'delete_workspace']
    """
    defs = copy.deepcopy(_DEFINITIONS + ([STATUS_TOOL] if status else []))
    if chat_id_argument:
        for d in defs:
            d["input_schema"]["properties"]["chat_id"] = dict(_CHAT_ID)
    return defs


def _arguments(name: str, raw: str | Mapping[str, Any] | None, allowed: set[str]) -> dict[str, Any] | str:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            return f"invalid arguments for {name}: not JSON ({exc.msg})"
    if not isinstance(raw, Mapping):
        return f"invalid arguments for {name}: expected a JSON object"
    args = dict(raw)
    unknown = sorted(set(args) - allowed)
    if unknown:
        return f"invalid arguments for {name}: unknown argument {unknown[0]!r}"
    if "wait" in args and not isinstance(args["wait"], bool):
        return f"invalid arguments for {name}: wait must be a boolean"
    for key in ("name", "chat_id"):
        if key in args and not isinstance(args[key], str):
            return f"invalid arguments for {name}: {key} must be a string"
    return args


async def dispatch_tool(
    lifecycle: Lifecycle,
    name: str,
    arguments: str | Mapping[str, Any] | None,
    *,
    chat_id: str | None,
    owner: str,
) -> ToolResult:
    """Run the tool call ``name`` with its JSON ``arguments`` for ``chat_id`` and ``owner``.

    A bad tool name or bad arguments is an error result (what the model should see), never an
    exception. ``chat_id`` in the arguments, when given, overrides the ``chat_id`` default.
    """
    known = {d["name"]: d for d in [*_DEFINITIONS, STATUS_TOOL]}
    if name not in known:
        return ToolResult.error(f"unknown tool {name!r}; known tools: {', '.join(known)}")
    allowed = set(known[name]["input_schema"]["properties"]) | {"chat_id"}
    args = _arguments(name, arguments, allowed)
    if isinstance(args, str):
        return ToolResult.error(args)
    chat = args.pop("chat_id", None) or chat_id
    if not chat:
        return ToolResult.error(f"{name} needs a chat_id")
    if name == "workspace_status":
        chat_row = await lifecycle.store.get_chat(chat)
        if chat_row is None or chat_row.owner != owner:
            return ToolResult.error("chat has no workspace; use create_workspace first")
        state = await lifecycle.state(chat)
        return ToolResult.ok({"status": state.value})
    wait = args.get("wait", True)
    if name == "create_workspace":
        return await lifecycle.create_workspace(chat, owner=owner, name=args.get("name"), wait=wait)
    if name == "start_workspace":
        return await lifecycle.start_workspace(chat, owner=owner, wait=wait)
    if name == "stop_workspace":
        return await lifecycle.stop_workspace(chat, owner=owner, wait=wait)
    return await lifecycle.delete_workspace(chat, owner=owner, wait=wait)
