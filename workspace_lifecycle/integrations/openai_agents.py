"""The workspace tools as OpenAI Agents SDK function tools bound to one chat and owner.

Install the extra: ``pip install 'workspace-lifecycle[openai-agents]'``. Then::

    from agents import Agent
    from workspace_lifecycle.integrations.openai_agents import workspace_tools

    agent = Agent(name="assistant", tools=workspace_tools(lc, chat_id="chat-1", owner="alice"))

Each tool is a ``FunctionTool`` with a strict JSON schema: every argument is required and the
optional ones accept ``null`` (the shape OpenAI's strict mode demands); a ``null`` argument means
"not given". Every call goes through :func:`workspace_lifecycle.dispatch_tool` for the bound
chat, and the model is shown its text: the JSON answer, or the error sentence (the SDK sends a
tool's returned string back to the model either way).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from agents import FunctionTool, Tool
from agents.tool_context import ToolContext

from ..runtime import Lifecycle
from ..tools import tool_definitions
from ._binding import call_bound

__all__ = ["strict_schema", "workspace_tools"]


def strict_schema(input_schema: dict[str, Any]) -> dict[str, Any]:
    """``input_schema`` in OpenAI's strict form: every property required, optional ones nullable.

    >>> strict_schema({"type": "object", "properties": {"wait": {"type": "boolean"}}})
    {'type': 'object', 'properties': {'wait': {'type': ['boolean', 'null']}}, 'required': ['wait'], 'additionalProperties': False}
    """
    required = set(input_schema.get("required", ()))
    properties: dict[str, Any] = {}
    for key, prop in input_schema.get("properties", {}).items():
        prop = copy.deepcopy(prop)
        if key not in required and isinstance(prop.get("type"), str):
            prop["type"] = [prop["type"], "null"]
        properties[key] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _invoker(
    lifecycle: Lifecycle, name: str, *, chat_id: str, owner: str
) -> Callable[[ToolContext[Any], str], Awaitable[str]]:
    async def invoke(context: ToolContext[Any], arguments: str) -> str:
        result = await call_bound(lifecycle, name, arguments, chat_id=chat_id, owner=owner, drop_nulls=True)
        return result.text

    return invoke


def workspace_tools(lifecycle: Lifecycle, *, chat_id: str, owner: str, status: bool = False) -> list[Tool]:
    """The workspace tools as ``FunctionTool`` objects acting on ``chat_id`` for ``owner``.

    ``lifecycle`` must be running (``async with wl.Lifecycle(store) as lc``) in the event loop the
    agent runs in. ``status=True`` adds the read-only ``workspace_status`` tool. The list is typed
    ``list[agents.Tool]``, what ``Agent(tools=...)`` takes; each element is a ``FunctionTool``.

    >>> import workspace_lifecycle as wl
    >>> tools = workspace_tools(wl.Lifecycle(wl.MemoryStore()), chat_id="chat-1", owner="alice")
    >>> [(t.name, t.strict_json_schema) for t in tools if isinstance(t, FunctionTool)][:2]
    [('create_workspace', True), ('start_workspace', True)]
    """
    return [
        FunctionTool(
            name=d["name"],
            description=d["description"],
            params_json_schema=strict_schema(d["input_schema"]),
            on_invoke_tool=_invoker(lifecycle, d["name"], chat_id=chat_id, owner=owner),
            strict_json_schema=True,
        )
        for d in tool_definitions(status=status)
    ]
