"""The OpenAI Agents SDK tools: a real Agent, driven by the SDK's own offline ScriptedModel, runs
the workspace tools against a real Lifecycle, and the binding alone decides the chat. Tracing is
disabled and every socket connect fails, so nothing can reach the network."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from agents import Agent, FunctionTool, RunConfig, Runner, Tool
from agents.items import ToolCallOutputItem
from agents.testing import ScriptedModel, assistant_message, function_call
from agents.tool_context import ToolContext
from jsonschema import Draft202012Validator
from stacks import simulated_lifecycle

import workspace_lifecycle as wl
from workspace_lifecycle.integrations.openai_agents import workspace_tools

pytestmark = pytest.mark.anyio

OFFLINE = RunConfig(tracing_disabled=True)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.fixture
async def lc() -> AsyncIterator[wl.Lifecycle]:
    async with simulated_lifecycle() as lifecycle:
        yield lifecycle


def scripted(calls: list[tuple[str, dict[str, Any]]]) -> ScriptedModel:
    """A model that makes ``calls`` one per turn, then says "done"."""
    steps: list[Any] = [
        [function_call(name, args, call_id=f"call-{i}")] for i, (name, args) in enumerate(calls)
    ]
    return ScriptedModel([*steps, [assistant_message("done")]])


def outputs(items: list[Any]) -> list[str]:
    return [str(item.output) for item in items if isinstance(item, ToolCallOutputItem)]


def by_name(tools: list[Tool]) -> dict[str, FunctionTool]:
    return {t.name: t for t in tools if isinstance(t, FunctionTool)}


class TestWorkspaceTools:
    def test_strict_schemas(self) -> None:
        """Every tool is strict: all properties required, the optional ones nullable, no extras."""
        tools = workspace_tools(wl.Lifecycle(wl.MemoryStore()), chat_id="c", owner="o", status=True)
        assert all(isinstance(t, FunctionTool) for t in tools)
        assert [t.name for t in tools] == [d["name"] for d in wl.tool_definitions(status=True)]
        for tool in by_name(tools).values():
            schema = tool.params_json_schema
            Draft202012Validator.check_schema(schema)
            assert tool.strict_json_schema is True
            assert schema["additionalProperties"] is False
            assert set(schema["required"]) == set(schema["properties"])
            assert "chat_id" not in schema["properties"]
        create = Draft202012Validator(by_name(tools)["create_workspace"].params_json_schema)
        assert create.is_valid({"name": None, "parameters": None, "wait": None})
        assert create.is_valid(
            {"name": None, "parameters": [{"name": "region", "value": "eu"}], "wait": None}
        )
        assert not create.is_valid(
            {"name": None, "parameters": {"region": "eu"}, "wait": None}
        )  # no open maps
        assert not create.is_valid({"name": None, "parameters": None, "wait": None, "chat_id": "other"})

    async def test_create_stop_start_through_an_agent(self, lc: wl.Lifecycle) -> None:
        """The model's create, stop and start (with strict-mode nulls) reach the bound chat."""
        await lc.register_chat("chat-1", owner="alice")
        model = scripted(
            [
                ("create_workspace", {"name": "dev", "wait": None}),
                ("stop_workspace", {"wait": True}),
                ("start_workspace", {"wait": None}),
            ]
        )
        agent = Agent(
            name="assistant", model=model, tools=workspace_tools(lc, chat_id="chat-1", owner="alice")
        )
        result = await Runner.run(agent, "start my workspace", run_config=OFFLINE)
        assert result.final_output == "done"
        answers = [json.loads(o) for o in outputs(result.new_items)]
        assert answers[0]["created"] is True and answers[0]["workspace_name"] == "alice/dev"
        assert answers[2]["started"] is True and "build_id" in answers[2]
        assert await lc.state("chat-1") is wl.WorkspaceState.AGENT_READY
        model.assert_complete()

    async def test_the_binding_decides_the_chat(self, lc: wl.Lifecycle) -> None:
        """A model that names another chat of the same owner cannot reach it: the call is refused."""
        for chat in ("chat-1", "chat-2"):
            await lc.register_chat(chat, owner="alice")
            await lc.create_workspace(chat, owner="alice", name=chat)
            await lc.stop_workspace(chat, owner="alice")
        model = scripted([("start_workspace", {"wait": None, "chat_id": "chat-2"})])
        agent = Agent(
            name="assistant", model=model, tools=workspace_tools(lc, chat_id="chat-1", owner="alice")
        )
        result = await Runner.run(agent, "start chat-2", run_config=OFFLINE)
        (answer,) = outputs(result.new_items)
        assert "chat_id" in answer and "started" not in answer
        assert await lc.state("chat-2") is wl.WorkspaceState.STOPPED
        assert await lc.state("chat-1") is wl.WorkspaceState.STOPPED

    async def test_on_invoke_tool_directly(self, lc: wl.Lifecycle) -> None:
        """The SDK's invocation path (on_invoke_tool with a ToolContext): answers and errors as text."""
        tools = by_name(workspace_tools(lc, chat_id="chat-1", owner="alice"))

        async def invoke(name: str, arguments: str) -> str:
            ctx = ToolContext(context=None, tool_name=name, tool_call_id="call-1", tool_arguments=arguments)
            return str(await tools[name].on_invoke_tool(ctx, arguments))

        assert (
            await invoke("start_workspace", '{"wait": null}')
            == "chat has no workspace; use create_workspace first"
        )
        await lc.register_chat("chat-1", owner="alice")
        assert json.loads(await invoke("create_workspace", '{"name": null, "wait": true}'))["created"] is True
        assert "not JSON" in await invoke("stop_workspace", "{not json")
        assert "chat_id" in await invoke("stop_workspace", '{"wait": true, "chat_id": "chat-1"}')
        assert await lc.state("chat-1") is wl.WorkspaceState.AGENT_READY

    async def test_parameters_as_pairs_reach_the_build(self, lc: wl.Lifecycle) -> None:
        """Strict mode has no open maps: the model sends parameters as name/value pairs, and the
        build the provisioner claims carries them as the map."""
        tools = by_name(workspace_tools(lc, chat_id="chat-1", owner="alice"))
        await lc.register_chat("chat-1", owner="alice")
        arguments = json.dumps(
            {"name": "dev", "parameters": [{"name": "region", "value": "eu"}], "wait": False}
        )
        ctx = ToolContext(
            context=None, tool_name="create_workspace", tool_call_id="c", tool_arguments=arguments
        )
        answer = json.loads(str(await tools["create_workspace"].on_invoke_tool(ctx, arguments)))
        assert answer["status"] == "building"
        facts = await lc.store.workspace_facts((await lc.store.get_chat("chat-1")).workspace_id)  # type: ignore[union-attr,arg-type]
        assert facts.latest_build is not None and dict(facts.latest_build.parameters) == {"region": "eu"}
