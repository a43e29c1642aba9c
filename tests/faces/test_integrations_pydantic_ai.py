"""The pydantic-ai toolset: a real Agent, driven by pydantic-ai's offline FunctionModel, runs the
workspace tools against a real Lifecycle, and the binding alone decides the chat."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from stacks import simulated_lifecycle

import workspace_lifecycle as wl
from workspace_lifecycle.integrations.pydantic_ai import workspace_toolset

pytestmark = pytest.mark.anyio


@pytest.fixture
async def lc() -> AsyncIterator[wl.Lifecycle]:
    async with simulated_lifecycle() as lifecycle:
        yield lifecycle


def scripted(calls: list[tuple[str, dict[str, Any]]]) -> FunctionModel:
    """A model that makes ``calls`` one per turn, then says "done"."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        turn = sum(isinstance(m, ModelResponse) for m in messages)
        if turn < len(calls):
            name, args = calls[turn]
            return ModelResponse(parts=[ToolCallPart(name, args, tool_call_id=f"call-{turn}")])
        return ModelResponse(parts=[TextPart("done")])

    return FunctionModel(respond)


def returns(messages: list[ModelMessage]) -> list[ToolReturnPart]:
    return [
        p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)
    ]


class TestWorkspaceToolset:
    async def test_create_stop_start_through_an_agent(self, lc: wl.Lifecycle) -> None:
        """The model's create, stop and start reach the bound chat and the machine follows them."""
        await lc.register_chat("chat-1", owner="alice")
        model = scripted(
            [("create_workspace", {"name": "dev"}), ("stop_workspace", {}), ("start_workspace", {})]
        )
        agent = Agent(model, toolsets=[workspace_toolset(lc, chat_id="chat-1", owner="alice")])
        result = await agent.run("start my workspace")
        assert result.output == "done"
        answers = [json.loads(str(p.content)) for p in returns(result.all_messages())]
        assert [p.outcome for p in returns(result.all_messages())] == ["success"] * 3
        assert answers[0]["created"] is True and answers[0]["workspace_name"] == "alice/dev"
        assert answers[2]["started"] is True and "build_id" in answers[2]
        assert await lc.state("chat-1") is wl.WorkspaceState.AGENT_READY

    async def test_the_binding_decides_the_chat(self, lc: wl.Lifecycle) -> None:
        """A model that names another chat of the same owner cannot reach it: the call is refused."""
        for chat in ("chat-1", "chat-2"):
            await lc.register_chat(chat, owner="alice")
            await lc.create_workspace(chat, owner="alice", name=chat)
            await lc.stop_workspace(chat, owner="alice")
        model = scripted(
            [("start_workspace", {"chat_id": "chat-2"}), ("delete_workspace", {"chat_id": "chat-2"})]
        )
        agent = Agent(model, toolsets=[workspace_toolset(lc, chat_id="chat-1", owner="alice")])
        result = await agent.run("start chat-2's workspace")
        parts = returns(result.all_messages())
        assert [p.outcome for p in parts] == ["failed", "failed"]
        assert all("chat_id" in str(p.content) for p in parts)
        assert await lc.state("chat-2") is wl.WorkspaceState.STOPPED
        assert await lc.state("chat-1") is wl.WorkspaceState.STOPPED

    async def test_one_agent_many_chats_toolset_per_run(self, lc: wl.Lifecycle) -> None:
        """One agent serves two chats: each run's toolset binds that run's chat and no other."""
        for chat in ("chat-1", "chat-2"):
            await lc.register_chat(chat, owner="alice")
        agent = Agent(scripted([("create_workspace", {"name": "dev"})]))
        await agent.run("create", toolsets=[workspace_toolset(lc, chat_id="chat-1", owner="alice")])
        assert await lc.state("chat-1") is wl.WorkspaceState.AGENT_READY
        assert await lc.state("chat-2") is wl.WorkspaceState.NO_WORKSPACE
        await agent.run("create", toolsets=[workspace_toolset(lc, chat_id="chat-2", owner="alice")])
        assert await lc.state("chat-2") is wl.WorkspaceState.AGENT_READY

    async def test_error_answers_are_failed_tool_results(self, lc: wl.Lifecycle) -> None:
        """An is_error answer reaches the model as a failed tool result with the same sentence."""
        model = scripted([("start_workspace", {})])
        agent = Agent(model, toolsets=[workspace_toolset(lc, chat_id="nobody", owner="alice")])
        result = await agent.run("start")
        (part,) = returns(result.all_messages())
        assert part.outcome == "failed"
        assert part.content == "chat has no workspace; use create_workspace first"

    async def test_test_model_sees_the_schemas(self, lc: wl.Lifecycle) -> None:
        """pydantic-ai's TestModel calls every tool with arguments drawn from its JSON schema."""
        await lc.register_chat("chat-1", owner="alice")
        toolset = workspace_toolset(lc, chat_id="chat-1", owner="alice", status=True)
        model = TestModel(call_tools=["create_workspace", "workspace_status"])
        result = await Agent(model, toolsets=[toolset]).run("go")
        names = {p.tool_name for p in returns(result.all_messages())}
        assert names == {"create_workspace", "workspace_status"}
        assert await lc.state("chat-1") is not wl.WorkspaceState.NO_WORKSPACE
