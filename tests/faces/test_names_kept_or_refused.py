"""A workspace name is kept or refused with a reason, on every face (issue 27, point 7): the
runtime raises ``ValueError``, a tool call (dispatch, MCP) answers an error saying the rule and
a valid name to try, the command line exits 2 with that sentence. Never renamed: a rename left
whoever gave the name (a person or a model) with one they did not choose, and did not say so."""

from __future__ import annotations

import re

import pytest
from mcp.client import Client
from stacks import simulated_lifecycle
from test_cli import _one_line_error

import workspace_lifecycle as wl
from workspace_lifecycle import checks, cli
from workspace_lifecycle.mcp_server import create_server

pytestmark = pytest.mark.anyio

RULE = "name must be 1 to 32 letters, digits and single hyphens between them (Coder's rule), such as 'dev-2'"
#: Invalid names and the valid name each is offered instead.
OFFERED = {
    "bad name!!": "bad-name",
    "My_Project": "My-Project",
    "-dev": "dev",
    "a--b": "a-b",
    "x" * 40: "x" * 32,
    "!!!": "workspace",
    "dév": "d-v",
}


class TestTheCore:
    @pytest.mark.parametrize(("given", "offered"), sorted(OFFERED.items()))
    def test_an_invalid_name_is_refused_with_a_valid_one_to_try(self, given: str, offered: str) -> None:
        with pytest.raises(ValueError, match=rf"^{re.escape(RULE)}, not .*; try {re.escape(repr(offered))}$"):
            checks.workspace_name("name", given)
        assert checks.workspace_name_valid(offered)

    @pytest.mark.parametrize("name", ["dev", "dev-2", "A1", "a" * 32])
    def test_a_valid_name_is_kept(self, name: str) -> None:
        assert checks.workspace_name("name", name) == name


class TestTheRuntime:
    async def test_an_invalid_name_raises_and_creates_nothing(self) -> None:
        async with simulated_lifecycle(chat="c1") as lc:
            head = await lc.store.head()
            with pytest.raises(ValueError, match=rf"^{re.escape(RULE)}, not 'bad name!!'; try 'bad-name'$"):
                await lc.create_workspace("c1", owner="alice", name="bad name!!")
            assert await lc.store.head() == head
            assert await lc.state("c1") is wl.WorkspaceState.NO_WORKSPACE

    @pytest.mark.parametrize("name", [None, ""])
    async def test_no_name_is_a_generated_one(self, name: str | None) -> None:
        async with simulated_lifecycle(chat="c1") as lc:
            r = await lc.create_workspace("c1", owner="alice", name=name, wait=False)
            assert re.fullmatch(r"alice/workspace-[0-9a-f]{4}", r.data["workspace_name"]), r.data


class TestTheTools:
    async def test_dispatch_answers_an_error_with_a_name_to_try(self) -> None:
        """The model is told the rule and a valid name; retrying with it, it gets exactly that."""
        async with simulated_lifecycle(chat="c1") as lc:
            head = await lc.store.head()
            r = await wl.dispatch_tool(
                lc, "create_workspace", {"name": "bad name!!"}, chat_id="c1", owner="alice"
            )
            assert r.is_error
            assert (
                r.text == f"invalid arguments for create_workspace: {RULE}, not 'bad name!!'; try 'bad-name'"
            )
            assert await lc.store.head() == head  # nothing written
            again = await wl.dispatch_tool(
                lc, "create_workspace", {"name": "bad-name"}, chat_id="c1", owner="alice"
            )
            assert not again.is_error and again.data["workspace_name"] == "alice/bad-name", again.text

    async def test_the_schema_says_the_rule(self) -> None:
        (create,) = [d for d in wl.tool_definitions() if d["name"] == "create_workspace"]
        described = create["input_schema"]["properties"]["name"]["description"]
        assert "'dev-2'" in described and "refused" in described and "generated" in described

    async def test_mcp_answers_the_same_error(self) -> None:
        async with (
            simulated_lifecycle(chat="c1") as lc,
            Client(create_server(lc, owner="alice", chat="c1")) as client,
        ):
            answer = await client.call_tool("create_workspace", {"name": "bad name!!", "wait": False})
            assert answer.is_error is True
            expected = await wl.dispatch_tool(
                lc, "create_workspace", {"name": "bad name!!"}, chat_id="c1", owner="alice"
            )
            assert [c.text for c in answer.content if hasattr(c, "text")] == [expected.text]
            assert await lc.state("c1") is wl.WorkspaceState.NO_WORKSPACE


def test_the_command_line_refuses_with_the_same_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2, one line: the rule, the name given and the name to try; no store is opened."""
    argv = ["create", "c1", "--owner", "alice", "--name", "bad name!!", "--db", "memory://", "--json"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    line = _one_line_error(captured.err)
    assert f"argument --name: --{RULE}, not 'bad name!!'; try 'bad-name' (see " in line, line
