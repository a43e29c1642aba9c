"""What every adapter shares: one tool call for the chat and owner it is bound to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..runtime import Lifecycle
from ..tools import dispatch_tool, parse_arguments
from ..values import ToolResult

__all__ = ["call_bound"]


async def call_bound(
    lifecycle: Lifecycle,
    name: str,
    arguments: str | Mapping[str, Any] | None,
    *,
    chat_id: str,
    owner: str,
    drop_nulls: bool = False,
) -> ToolResult:
    """Run the tool call ``name`` for the bound ``chat_id`` and ``owner``.

    The model's arguments never choose the chat: a ``chat_id`` among them is refused here, as an
    unknown argument, whatever :func:`~workspace_lifecycle.dispatch_tool` would make of it.
    ``drop_nulls`` removes arguments sent as ``null`` (strict schemas make the model send every
    optional argument, as ``null`` when it means "not given").
    """
    parsed = parse_arguments(arguments)  # the one parser: a reason in a tuple, never a raise
    if isinstance(parsed, Mapping):
        if "chat_id" in parsed:
            return ToolResult.error(f"invalid arguments for {name}: unknown argument 'chat_id'")
        if drop_nulls:
            parsed = {k: v for k, v in parsed.items() if v is not None}
    elif not isinstance(parsed, tuple):
        parsed = arguments  # not an object: dispatch_tool's check answers it
    else:
        return ToolResult.error(f"invalid arguments for {name}: {parsed[0]}")
    given: Any = parsed
    return await dispatch_tool(lifecycle, name, given, chat_id=chat_id, owner=owner)
