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

Each agent run that uses the toolset holds the chat's turn (:meth:`~workspace_lifecycle.Lifecycle.turn`)
from its start to its end: no idle stop fires while the agent works, however quiet its
commands; the idle countdown starts when the run ends. ``turn=False`` holds nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from pydantic_ai import FunctionToolset, RunContext, Tool, ToolFailed
from pydantic_ai.toolsets import AbstractToolset, WrapperToolset

from ..runtime import Lifecycle
from ..tools import held_turn, tool_definitions
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


@dataclasses.dataclass
class _HeldRun(WrapperToolset[Any]):
    """The toolset as one agent run sees it: entered at the run's start, exited at its end, and
    holding the chat's turn in between."""

    hold: Callable[[], AbstractAsyncContextManager[None]] = dataclasses.field(kw_only=True)
    _held: AbstractAsyncContextManager[None] | None = dataclasses.field(default=None, init=False, repr=False)

    async def __aenter__(self) -> _HeldRun:
        await super().__aenter__()
        held = self.hold()
        await held.__aenter__()
        self._held = held
        return self

    async def __aexit__(self, *args: Any) -> bool | None:
        held, self._held = self._held, None
        try:
            if held is not None:
                await held.__aexit__(None, None, None)
        finally:
            await super().__aexit__(*args)
        return None


class _WorkspaceToolset(FunctionToolset[Any]):
    """The workspace tools; each run gets them wrapped in :class:`_HeldRun`."""

    def __init__(
        self,
        tools: Sequence[Tool[Any]],
        *,
        id: str | None,
        hold: Callable[[], AbstractAsyncContextManager[None]],
    ) -> None:
        super().__init__(tools, id=id)
        self._hold = hold

    async def for_run(self, ctx: RunContext[Any]) -> AbstractToolset[Any]:
        return _HeldRun(self, hold=self._hold)


def workspace_toolset(
    lifecycle: Lifecycle,
    *,
    chat_id: str,
    owner: str,
    status: bool = False,
    id: str | None = None,
    turn: bool = True,
) -> FunctionToolset[Any]:
    """A ``FunctionToolset`` with the workspace tools, acting on ``chat_id`` for ``owner``.

    ``lifecycle`` must be running (``async with wl.Lifecycle(store) as lc``) in the event loop the
    agent runs in. ``status=True`` adds the read-only ``workspace_status`` tool. ``id`` names the
    toolset for pydantic-ai's durable execution (Temporal, DBOS), which requires one. With
    ``turn`` (the default) every run holds the chat's turn from its start to its end.

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
    if not turn:
        return FunctionToolset(tools, id=id)
    return _WorkspaceToolset(tools, id=id, hold=lambda: held_turn(lifecycle, chat_id, owner))
