"""The workspace tools as OpenAI Agents SDK function tools bound to one chat and owner.

Install the extra: ``pip install 'workspace-lifecycle[openai-agents]'``. Then::

    from agents import Agent
    from workspace_lifecycle.integrations.openai_agents import workspace_tools

    agent = Agent(name="assistant", tools=workspace_tools(lc, chat_id="chat-1", owner="alice"))

Each tool is a ``FunctionTool`` with a strict JSON schema: every argument is required and the
optional ones accept ``null`` (the shape OpenAI's strict mode demands); a ``null`` argument means
"not given". Strict mode allows no open objects, so a map argument (``parameters``) is asked for
as a list of ``{"name", "value"}`` pairs and turned back into the map before the call. Every call goes through :func:`workspace_lifecycle.dispatch_tool` for the bound
chat, and the model is shown its text: the JSON answer, or the error sentence (the SDK sends a
tool's returned string back to the model either way).

The SDK has no hook that brackets a whole run, so :func:`run_turn` is the run: ``Runner.run``
inside the chat's turn (:meth:`~workspace_lifecycle.Lifecycle.turn`), so no idle stop fires
while the agent works::

    result = await run_turn(lc, agent, "build it", chat_id="chat-1", owner="alice")
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from agents import Agent, FunctionTool, Runner, RunResult, Tool
from agents.tool_context import ToolContext

from ..runtime import Lifecycle
from ..tools import held_turn, parse_arguments, tool_definitions
from ._binding import call_bound

__all__ = ["run_turn", "strict_schema", "workspace_tools"]


def strict_schema(input_schema: dict[str, Any]) -> dict[str, Any]:
    """``input_schema`` in OpenAI's strict form: every property required, optional ones nullable.

    >>> strict_schema({"type": "object", "properties": {"wait": {"type": "boolean"}}})
    {'type': 'object', 'properties': {'wait': {'type': ['boolean', 'null']}}, 'required': ['wait'], 'additionalProperties': False}
    """
    required = set(input_schema.get("required", ()))
    properties: dict[str, Any] = {}
    for key, prop in input_schema.get("properties", {}).items():
        prop = _pairs_schema(prop) if _is_map(prop) else copy.deepcopy(prop)
        if key not in required and isinstance(prop.get("type"), str):
            prop["type"] = [prop["type"], "null"]
        properties[key] = prop
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _is_map(prop: dict[str, Any]) -> bool:
    """An object with free keys (``additionalProperties`` a schema): strict mode refuses it."""
    return prop.get("type") == "object" and isinstance(prop.get("additionalProperties"), dict)


def _pairs_schema(prop: dict[str, Any]) -> dict[str, Any]:
    value = {"type": prop["additionalProperties"].get("type", "string")}
    return {
        "type": "array",
        "description": f"{prop.get('description', '')} Give it as a list of {{name, value}} pairs.".strip(),
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "value": value},
            "required": ["name", "value"],
            "additionalProperties": False,
        },
    }


def _from_pairs(arguments: str, maps: frozenset[str]) -> str | dict[str, Any]:
    """Turn the pair lists of ``maps`` back into objects; anything odd is left for the schema
    check of :func:`~workspace_lifecycle.dispatch_tool` to answer."""
    parsed = parse_arguments(arguments)  # the one parser: never raises on a model's text
    if not isinstance(parsed, dict):
        return arguments
    for key in maps:
        pairs = parsed.get(key)
        if isinstance(pairs, list) and all(
            isinstance(p, dict) and set(p) == {"name", "value"} and isinstance(p["name"], str) for p in pairs
        ):
            parsed[key] = {p["name"]: p["value"] for p in pairs}
    return parsed


def _invoker(
    lifecycle: Lifecycle, name: str, input_schema: dict[str, Any], *, chat_id: str, owner: str
) -> Callable[[ToolContext[Any], str], Awaitable[str]]:
    maps = frozenset(k for k, p in input_schema.get("properties", {}).items() if _is_map(p))

    async def invoke(context: ToolContext[Any], arguments: str) -> str:
        given = _from_pairs(arguments, maps) if maps else arguments
        result = await call_bound(lifecycle, name, given, chat_id=chat_id, owner=owner, drop_nulls=True)
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
            on_invoke_tool=_invoker(lifecycle, d["name"], d["input_schema"], chat_id=chat_id, owner=owner),
            strict_json_schema=True,
        )
        for d in tool_definitions(status=status)
    ]


async def run_turn(
    lifecycle: Lifecycle, agent: Agent[Any], input: Any, *, chat_id: str, owner: str, **kwargs: Any
) -> RunResult:
    """``Runner.run(agent, input, **kwargs)`` holding the chat's turn from the run's start to its
    end (:func:`~workspace_lifecycle.tools.held_turn`): no idle stop fires while the agent works,
    and the idle countdown starts when the run ends, however it ends."""
    async with held_turn(lifecycle, chat_id, owner):
        return await Runner.run(agent, input, **kwargs)
