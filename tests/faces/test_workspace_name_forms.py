"""The forms of a workspace's name, pinned on the tool face and through MCP (issue 27, point 7;
docs/answers.md, "Which form of the workspace's name").

Answers are Coder's: ``create_workspace`` answers ``workspace_name`` as ``owner/name`` when it
made the workspace; every other answer (start, stop, delete, a create that found the chat's
workspace) gives the bare ``name``. The one name a tool takes is create's ``name`` argument, the
bare name; ``owner/name`` there is refused with its own name to try (what a model means when it
passes back what create answered), never taken as a workspace called ``owner-name``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp.client import Client
from stacks import simulated_lifecycle

import workspace_lifecycle as wl
from workspace_lifecycle.mcp_server import create_server

pytestmark = pytest.mark.anyio

#: Each tool call in order, and the workspace_name its answer gives.
SEQUENCE: list[tuple[str, dict[str, Any], str]] = [
    ("create_workspace", {"name": "dev"}, "alice/dev"),  # made it: owner/name
    ("create_workspace", {"name": "dev"}, "dev"),  # found it running
    ("stop_workspace", {}, "dev"),
    ("create_workspace", {}, "dev"),  # found it stopped
    ("start_workspace", {}, "dev"),
    ("start_workspace", {}, "dev"),  # already running: no build
    ("stop_workspace", {"wait": False}, "dev"),
    ("delete_workspace", {}, "dev"),
    ("create_workspace", {"name": "dev2", "wait": False}, "alice/dev2"),  # made it, not waiting
]


async def test_create_answers_owner_slash_name_and_the_others_the_name() -> None:
    async with simulated_lifecycle(chat="c1") as lc:
        for tool, arguments, expected in SEQUENCE:
            r = await wl.dispatch_tool(lc, tool, arguments, chat_id="c1", owner="alice")
            assert not r.is_error, (tool, arguments, r.text)
            assert r.data["workspace_name"] == expected, (tool, arguments, r.data)


async def test_the_python_api_answers_the_same_forms() -> None:
    async with simulated_lifecycle(chat="c1") as lc:
        created = await lc.create_workspace("c1", owner="alice", name="dev")
        assert created.data["workspace_name"] == "alice/dev"
        started = await lc.start_workspace("c1", owner="alice")
        assert started.data["workspace_name"] == "dev"


@pytest.mark.parametrize("given", ["alice/dev", "bob/dev"])
async def test_owner_slash_name_as_the_name_is_refused_with_its_own_name(given: str) -> None:
    """Passed back as create's ``name``, ``owner/name`` is refused, offering ``dev``: nothing is made."""
    async with simulated_lifecycle(chat="c1") as lc:
        r = await wl.dispatch_tool(lc, "create_workspace", {"name": given}, chat_id="c1", owner="alice")
        assert r.is_error
        assert r.text.endswith(f"not {given!r}; try 'dev'"), r.text
        assert await lc.state("c1") is wl.WorkspaceState.NO_WORKSPACE


async def test_mcp_answers_the_same_forms() -> None:
    async with (
        simulated_lifecycle(chat="c1") as lc,
        Client(create_server(lc, owner="alice", chat="c1")) as client,
    ):
        created = await client.call_tool("create_workspace", {"name": "dev"})
        stopped = await client.call_tool("stop_workspace", {})
        assert _json(created)["workspace_name"] == "alice/dev"
        assert _json(stopped)["workspace_name"] == "dev"


def _json(answer: Any) -> dict[str, Any]:
    (text,) = [c.text for c in answer.content if hasattr(c, "text")]
    data: dict[str, Any] = json.loads(text)
    return data
