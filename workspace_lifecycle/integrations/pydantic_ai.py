"""The workspace tools as a pydantic-ai toolset bound to one chat and owner.

Install the extra: ``pip install 'workspace-lifecycle[pydantic-ai]'``. Then::

    from pydantic_ai import Agent
    from workspace_lifecycle.integrations.pydantic_ai import workspace_toolset

    agent = Agent(model, toolsets=[workspace_toolset(lc, chat_id="chat-1", owner="alice")])

The tools keep the names, descriptions and JSON schemas of
:func:`workspace_lifecycle.tool_definitions`; every call goes through
:func:`workspace_lifecycle.dispatch_tool` for the bound chat. A successful answer is returned to
the model as its JSON text; an error answer (``is_error``) is raised as pydantic-ai's
``ToolFailed``, so the model sees a failed tool result with the same sentence and the tool's
retry budget is not spent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic_ai import FunctionToolset, Tool, ToolFailed

from ..runtime import Lifecycle
from ..tools import tool_definitions
from ._binding import call_bound

__all__ = ["workspace_toolset"]


def _bound_tool(
    lifecycle: Lifecycle, name: str, *, chat_id: str, owner: str
) -> Callable[..., Awaitable[str]]:
    async def call(**arguments: Any) -> str:
        result = await call_bound(lifecycle, name, arguments, chat_id=chat_id, owner=owner)
        if result.is_error:
            raise ToolFailed(result.text)
        return result.text

    call.__name__ = name
    return call


def workspace_toolset(
    lifecycle: Lifecycle,
    *,
    chat_id: str,
    owner: str,
    status: bool = False,
    id: str | None = None,
) -> FunctionToolset[Any]:
    """A ``FunctionToolset`` with the workspace tools, acting on ``chat_id`` for ``owner``.

    ``lifecycle`` must be running (``async with wl.Lifecycle(store) as lc``) in the event loop the
    agent runs in. ``status=True`` adds the read-only ``workspace_status`` tool. ``id`` names the
    toolset for pydantic-ai's durable execution (Temporal, DBOS), which requires one.

    >>> import workspace_lifecycle as wl
    >>> toolset = workspace_toolset(wl.Lifecycle(wl.MemoryStore()), chat_id="chat-1", owner="alice")
    >>> sorted(toolset.tools)
    ['create_workspace', 'delete_workspace', 'start_workspace', 'stop_workspace']
    """
    tools = [
        Tool.from_schema(
            _bound_tool(lifecycle, d["name"], chat_id=chat_id, owner=owner),
            name=d["name"],
            description=d["description"],
            json_schema=d["input_schema"],
        )
        for d in tool_definitions(status=status)
    ]
    return FunctionToolset(tools, id=id)
