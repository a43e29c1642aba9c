"""The scope of a tool call (the binding decides the chat) and hostile tool arguments.

A tool call acts on the chat it is bound to; arguments name another chat only where the host
serves many (``allowed_chats``), and only an allowed one of the owner's. Everything else is
answered exactly as an unknown chat. Whatever the model sends, ``dispatch_tool`` answers with
an error result that names the argument, writes nothing and raises nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.answers import NO_WORKSPACE

pytestmark = pytest.mark.anyio

TOOLS = ["create_workspace", "start_workspace", "stop_workspace", "delete_workspace", "workspace_status"]


@pytest.fixture
async def lc() -> AsyncIterator[wl.Lifecycle]:
    """alice has chat-1 (no workspace) and chat-2 (a workspace, building); bob has bobs (building)."""
    async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lifecycle:
        await lifecycle.register_chat("chat-1", owner="alice")
        for chat, owner in [("chat-2", "alice"), ("bobs", "bob")]:
            await lifecycle.register_chat(chat, owner=owner)
            await lifecycle.create_workspace(chat, owner=owner, name="dev", wait=False)
        yield lifecycle


async def _unknown(lc: wl.Lifecycle, tool: str) -> wl.ToolResult:
    """What the tool answers for a chat that exists nowhere (served, so the id reaches the runtime)."""
    return await wl.dispatch_tool(
        lc, tool, _args(tool, chat_id="nobody"), chat_id=None, owner="alice", allowed_chats=lambda _: True
    )


def _args(tool: str, **extra: Any) -> dict[str, Any]:
    return extra if tool == "workspace_status" else {"wait": False, **extra}


class TestBoundChat:
    @pytest.mark.parametrize("tool", TOOLS)
    @pytest.mark.parametrize("other", ["chat-2", "bobs", "nobody", "a\x00b", 7])
    async def test_arguments_cannot_name_another_chat(
        self, lc: wl.Lifecycle, tool: str, other: object
    ) -> None:
        """A chat_id argument naming any other chat, even the owner's own, is an unknown chat; nothing is written."""
        head = await lc.store.head()
        result = await wl.dispatch_tool(lc, tool, _args(tool, chat_id=other), chat_id="chat-1", owner="alice")
        assert result == await _unknown(lc, tool)
        if tool == "workspace_status":  # read-only: a named state, never an error
            assert not result.is_error and result.data["status"] == "no_workspace"
        else:
            assert result.data == {"error": result.text}
        assert await lc.store.head() == head

    async def test_the_issue_example(self, lc: wl.Lifecycle) -> None:
        """stop_workspace {"chat_id": "chat-2"} bound to chat-1 does not stop chat-2."""
        with anyio.fail_after(5):  # before the fix: waits for chat-2's stop build
            result = await wl.dispatch_tool(
                lc, "stop_workspace", '{"chat_id": "chat-2"}', chat_id="chat-1", owner="alice"
            )
        assert result.is_error and result.text == NO_WORKSPACE
        assert await lc.state("chat-2") is wl.WorkspaceState.BUILDING

    async def test_naming_the_bound_chat_is_harmless(self, lc: wl.Lifecycle) -> None:
        result = await wl.dispatch_tool(
            lc, "create_workspace", {"chat_id": "chat-1", "wait": False}, chat_id="chat-1", owner="alice"
        )
        assert not result.is_error and result.data["status"] == "building"

    async def test_bound_tools_do_not_advertise_chat_id(self) -> None:
        assert all("chat_id" not in d["input_schema"]["properties"] for d in wl.tool_definitions(status=True))


class TestServedChats:
    @pytest.mark.parametrize(
        "allowed",
        [{"chat-1", "chat-2", "bobs"}, lambda chat: chat != "x", "async"],
        ids=["collection", "predicate", "async-predicate"],
    )
    async def test_allowed_chat_of_the_owner(self, lc: wl.Lifecycle, allowed: Any) -> None:
        """With allowed_chats, a chat_id argument may name an allowed chat of the owner."""
        if allowed == "async":

            async def allowed(chat: str) -> bool:
                return chat in {"chat-1", "chat-2", "bobs"}

        result = await wl.dispatch_tool(
            lc,
            "workspace_status",
            {"chat_id": "chat-2"},
            chat_id="chat-1",
            owner="alice",
            allowed_chats=allowed,
        )
        assert result.data["status"] == "building"
        default = await wl.dispatch_tool(
            lc, "workspace_status", {}, chat_id="chat-1", owner="alice", allowed_chats=allowed
        )
        assert default.data["status"] == "no_workspace"

    @pytest.mark.parametrize("tool", TOOLS)
    @pytest.mark.parametrize("other", ["chat-2", "bobs"], ids=["not-allowed", "another-owner"])
    async def test_other_chats_are_unknown(self, lc: wl.Lifecycle, tool: str, other: str) -> None:
        """A chat the host does not allow, or another owner's that it does, reads as unknown."""
        head = await lc.store.head()
        result = await wl.dispatch_tool(
            lc,
            tool,
            _args(tool, chat_id=other),
            chat_id=None,
            owner="alice",
            allowed_chats={"chat-1", "bobs"},
        )
        assert result == await _unknown(lc, tool)
        assert await lc.store.head() == head


DEEP = "[" * 100_000
HUGE = "9" * 5000


class TestHostileArguments:
    @pytest.mark.parametrize(
        ("tool", "arguments", "fragment"),
        [
            ("create_workspace", DEEP, "nested too deeply"),
            ("create_workspace", f'{{"wait": {HUGE}}}', "too many digits"),
            ("create_workspace", {"wait": 10**5000}, "too large"),
            ("create_workspace", {"name": [[[[]]]] * 3}, "name must be a string"),
            ("create_workspace", {"name": 123}, "name must be a string"),
            ("create_workspace", '{"name": 123}', "name must be a string"),
            ("create_workspace", {1: "a", "wait": True}, "argument names must be strings"),
            ("create_workspace", {"name": "dev\ud800"}, "name is not valid Unicode text"),
            ("create_workspace", "[1, 2]", "arguments must be a JSON object"),
            ("create_workspace", "{not json", "not JSON"),
            ("start_workspace", '{"wait": "yes"}', "wait must be a boolean"),
            ("stop_workspace", '{"name": "dev"}', "unknown argument 'name'"),
            ("workspace_status", '{"wait": true}', "unknown argument 'wait'"),
        ],
        ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
    )
    async def test_error_result_and_nothing_written(
        self, lc: wl.Lifecycle, tool: str, arguments: Any, fragment: str
    ) -> None:
        """Each is one short error sentence naming the problem (no schema dump); nothing is written."""
        head = await lc.store.head()
        with anyio.fail_after(5):  # a call let through would wait for a build nobody runs
            result = await wl.dispatch_tool(lc, tool, arguments, chat_id="chat-1", owner="alice")
        assert result.is_error and fragment in result.text, result.text
        assert result.text.startswith(f"invalid arguments for {tool}: ")
        assert len(result.text) < 120 and "{" not in result.text and "\n" not in result.text
        assert await lc.store.head() == head

    @pytest.mark.parametrize(
        ("arguments", "fragment"),
        [
            ({"chat_id": "a\x00b"}, "chat_id must not contain NUL bytes"),
            ({"chat_id": "\udcff"}, "chat_id is not valid Unicode text"),
            ({"chat_id": ""}, "chat_id must not be empty"),
            ({"chat_id": 5}, "chat_id must be a string"),
        ],
    )
    async def test_served_chat_id(self, lc: wl.Lifecycle, arguments: dict[str, Any], fragment: str) -> None:
        """A served chat_id that no store could hold is refused by its schema, naming chat_id."""
        head = await lc.store.head()
        result = await wl.dispatch_tool(
            lc, "create_workspace", arguments, chat_id=None, owner="alice", allowed_chats=lambda _: True
        )
        assert result.is_error and fragment in result.text, result.text
        assert await lc.store.head() == head

    @pytest.mark.parametrize(
        ("chat_id", "owner"), [("a\x00b", "alice"), ("\udcff", "alice"), ("chat-1", "al\x00")]
    )
    async def test_unusable_binding_is_an_error_result(
        self, lc: wl.Lifecycle, chat_id: str, owner: str
    ) -> None:
        """Even a host's bad chat id or owner is an error result, not an exception."""
        result = await wl.dispatch_tool(lc, "create_workspace", "{}", chat_id=chat_id, owner=owner)
        assert result.is_error and "the host gave no usable" in result.text

    @pytest.mark.parametrize("definitions", [{}, {"chat_id_argument": True}], ids=["bound", "served"])
    async def test_the_schema_is_the_check(self, lc: wl.Lifecycle, definitions: dict[str, bool]) -> None:
        """Every property of every schema refuses a value of the wrong type, naming it: one source."""
        allowed = (lambda _: True) if definitions else None
        for d in wl.tool_definitions(status=True, **definitions):
            for prop, schema in d["input_schema"]["properties"].items():
                wrong: object = "x" if schema["type"] in ("number", "integer") else 1
                result = await wl.dispatch_tool(
                    lc, d["name"], {prop: wrong}, chat_id="chat-1", owner="alice", allowed_chats=allowed
                )
                word = {"object": "a JSON object", "integer": "an integer"}.get(
                    schema["type"], f"a {schema['type']}"
                )
                assert result.text == f"invalid arguments for {d['name']}: {prop} must be {word}"
