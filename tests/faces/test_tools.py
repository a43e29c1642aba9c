"""The LLM tool definitions and the dispatcher from a tool call to the runtime."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from jsonschema import Draft202012Validator

import workspace_lifecycle as wl
from workspace_lifecycle.answers import NO_WORKSPACE

pytestmark = pytest.mark.anyio

NAMES = ["create_workspace", "start_workspace", "stop_workspace", "delete_workspace"]


class TestDefinitions:
    @pytest.mark.parametrize("options", [{}, {"chat_id_argument": True}, {"status": True}])
    def test_valid_json_schema_in_input_schema_shape(self, options: dict[str, Any]) -> None:
        """Each tool has a name, a description and an object input_schema that is valid JSON Schema."""
        defs = wl.tool_definitions(**options)
        for d in defs:
            assert set(d) == {"name", "description", "input_schema"}
            assert isinstance(d["description"], str) and d["description"]
            schema = d["input_schema"]
            Draft202012Validator.check_schema(schema)
            assert schema["type"] == "object" and schema["additionalProperties"] is False
            json.dumps(d)  # plain JSON, as model APIs take it
        names = [d["name"] for d in defs]
        assert names[:4] == NAMES
        if options.get("chat_id_argument"):
            assert all("chat_id" in d["input_schema"]["properties"] for d in defs)

    def test_schemas_accept_and_reject(self) -> None:
        """The schemas mean what the tools take: wait is a boolean, unknown keys are refused."""
        by_name = {d["name"]: Draft202012Validator(d["input_schema"]) for d in wl.tool_definitions()}
        assert by_name["create_workspace"].is_valid({"name": "dev", "wait": False})
        assert by_name["start_workspace"].is_valid({})
        assert not by_name["start_workspace"].is_valid({"wait": "yes"})
        assert not by_name["stop_workspace"].is_valid({"name": "dev"})

    def test_copies_are_fresh(self) -> None:
        defs = wl.tool_definitions()
        defs[0]["input_schema"]["properties"].clear()
        assert wl.tool_definitions()[0]["input_schema"]["properties"]


@pytest.fixture
async def lc() -> Any:
    async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lifecycle:
        await lifecycle.register_chat("c1", owner="alice")
        yield lifecycle


class TestDispatch:
    async def test_by_name_with_json_arguments(self, lc: wl.Lifecycle) -> None:
        """A tool call by name with JSON string arguments reaches the runtime."""
        with anyio.fail_after(5):
            r = await wl.dispatch_tool(
                lc, "create_workspace", '{"name": "dev", "wait": false}', chat_id="c1", owner="alice"
            )
            assert r.data["status"] == "building" and r.data["workspace_name"] == "alice/dev"
            r = await wl.dispatch_tool(lc, "start_workspace", '{"wait": false}', chat_id="c1", owner="alice")
            assert r.data == {
                "workspace_name": "dev",
                "status": "building",
                "request": "start",
                "build_id": r.data["build_id"],
            }
            status = await wl.dispatch_tool(lc, "workspace_status", "{}", chat_id="c1", owner="alice")
            assert status.data["status"] == "building" and status.data["wait_expired"] is False

    async def test_empty_and_mapping_arguments(self, lc: wl.Lifecycle) -> None:
        """Empty arguments mean defaults; a dict works like its JSON."""
        r = await wl.dispatch_tool(lc, "stop_workspace", "", chat_id="c1", owner="alice")
        assert r.is_error and r.text == NO_WORKSPACE
        r = await wl.dispatch_tool(lc, "stop_workspace", {"wait": False}, chat_id="c1", owner="alice")
        assert r.is_error and r.text == NO_WORKSPACE

    async def test_chat_id_argument_where_the_host_serves_many(self, lc: wl.Lifecycle) -> None:
        """With allowed_chats, the chat_id argument chooses among the allowed chats."""
        await lc.register_chat("c2", owner="alice")
        r = await wl.dispatch_tool(
            lc,
            "create_workspace",
            {"chat_id": "c2", "wait": False},
            chat_id="c1",
            owner="alice",
            allowed_chats={"c1", "c2"},
        )
        assert not r.is_error
        assert (await lc.state("c2")) is wl.WorkspaceState.BUILDING
        assert (await lc.state("c1")) is wl.WorkspaceState.NO_WORKSPACE

    async def test_unknown_tool(self, lc: wl.Lifecycle) -> None:
        r = await wl.dispatch_tool(lc, "rm_rf", "{}", chat_id="c1", owner="alice")
        assert r.is_error and r.text.startswith("unknown tool 'rm_rf'") and r.data == {"error": r.text}

    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ("{not json", "not JSON"),
            ("[1, 2]", "arguments must be a JSON object"),
            ('{"wait": "yes"}', "wait must be a boolean"),
            ('{"bogus": 1}', "unknown argument 'bogus'"),
            ('{"name": 3}', "name must be a string"),
        ],
    )
    async def test_bad_arguments(self, lc: wl.Lifecycle, arguments: str, message: str) -> None:
        """Bad arguments are an error result naming the problem; nothing is written."""
        head = await lc.store.head()
        r = await wl.dispatch_tool(lc, "create_workspace", arguments, chat_id="c1", owner="alice")
        assert (
            r.is_error and message in r.text and r.text.startswith("invalid arguments for create_workspace")
        )
        assert await lc.store.head() == head

    async def test_missing_chat(self, lc: wl.Lifecycle) -> None:
        r = await wl.dispatch_tool(lc, "start_workspace", "{}", chat_id=None, owner="alice")
        assert r.is_error and "needs a chat_id" in r.text
