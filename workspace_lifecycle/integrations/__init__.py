"""Adapters that hand the workspace tools to chat runtimes, each bound to one chat and owner.

Each adapter is a module of its own with an extra of its own, so importing this package needs
none of them:

* :mod:`workspace_lifecycle.integrations.pydantic_ai` — ``workspace_toolset(lc, chat_id=..., owner=...)``,
  a pydantic-ai ``FunctionToolset`` (``pip install 'workspace-lifecycle[pydantic-ai]'``);
* :mod:`workspace_lifecycle.integrations.openai_agents` — ``workspace_tools(lc, chat_id=..., owner=...)``,
  OpenAI Agents SDK ``FunctionTool`` objects with strict JSON schemas
  (``pip install 'workspace-lifecycle[openai-agents]'``);
* the MCP server (``workspace-lifecycle mcp``, :mod:`workspace_lifecycle.mcp_server`) for MCP clients.

The binding decides the chat: every call goes through
:func:`workspace_lifecycle.dispatch_tool` with the bound ``chat_id`` and ``owner``, and a model
that names a chat in its arguments is refused, never routed to that chat.
"""

from __future__ import annotations

__all__: list[str] = []
