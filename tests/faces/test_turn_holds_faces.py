"""Turn holds on the faces: an agent run of the pydantic-ai toolset or of ``run_turn`` (OpenAI
Agents SDK), and a tool call of the MCP server, hold the chat's turn while they run (the hold
is seen in the store from inside the run) and release it when they end (the idle countdown
then starts afresh)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from agents import Agent, RunConfig, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from mcp.client import Client
from pydantic_ai import Agent as PydanticAgent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

import workspace_lifecycle as wl
from workspace_lifecycle.integrations.openai_agents import run_turn
from workspace_lifecycle.integrations.pydantic_ai import workspace_toolset
from workspace_lifecycle.mcp_server import create_server

pytestmark = pytest.mark.anyio

CHAT, OWNER = "chat-1", "alice"
IDLE = 600.0


@pytest.fixture
async def lc() -> AsyncIterator[wl.Lifecycle]:
    """A running workspace whose chat stops after IDLE; builds take a few milliseconds."""
    async with (
        wl.open_store("memory://") as store,
        wl.SimulatedProvisioner(store, build_seconds=0.05, agent_seconds=0.01),
        wl.Lifecycle(store) as lifecycle,
    ):
        await lifecycle.register_chat(CHAT, owner=OWNER, policy=wl.Policy(idle_stop_after=IDLE))
        assert not (await lifecycle.create_workspace(CHAT, owner=OWNER, name="dev")).is_error
        yield lifecycle


async def holds(lc: wl.Lifecycle) -> int:
    chat = await lc.store.get_chat(CHAT)
    assert chat is not None and chat.workspace_id is not None
    return len((await lc.store.workspace_facts(chat.workspace_id)).workspace.holds)


async def released_now(lc: wl.Lifecycle) -> bool:
    """No hold is left and the idle deadline was armed afresh by the release."""
    chat = await lc.store.get_chat(CHAT)
    assert chat is not None and chat.workspace_id is not None
    ws = (await lc.store.workspace_facts(chat.workspace_id)).workspace
    return ws.holds == () and ws.deadline is not None and ws.deadline.at > lc.clock() + IDLE - 5


class TestPydanticAI:
    @pytest.mark.parametrize("turn", [True, False])
    async def test_an_agent_run_holds_the_turn(self, lc: wl.Lifecycle, turn: bool) -> None:
        """The model, called mid-run, sees its workspace held (turn=True) or not (turn=False)."""
        seen: list[int] = []

        async def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
            seen.append(await holds(lc))
            return ModelResponse(parts=[TextPart("done")])

        agent = PydanticAgent(
            FunctionModel(respond), toolsets=[workspace_toolset(lc, chat_id=CHAT, owner=OWNER, turn=turn)]
        )
        await agent.run("work quietly")
        assert seen == [1 if turn else 0]
        assert await holds(lc) == 0
        if turn:
            assert await released_now(lc)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


class TestOpenAIAgents:
    @pytest.mark.usefixtures("no_network")
    async def test_run_turn_holds_the_turn(self, lc: wl.Lifecycle) -> None:
        """A tool the agent calls mid-run sees the workspace held; after the run it is released."""
        seen: list[int] = []

        @function_tool
        async def quiet_command() -> str:
            """A long command that prints nothing."""
            seen.append(await holds(lc))
            return "ok"

        model = ScriptedModel(
            [[function_call("quiet_command", {}, call_id="c1")], [assistant_message("done")]]
        )
        agent = Agent(name="assistant", model=model, tools=[quiet_command])
        result = await run_turn(
            lc, agent, "run it", chat_id=CHAT, owner=OWNER, run_config=RunConfig(tracing_disabled=True)
        )
        assert result.final_output == "done"
        assert seen == [1]
        assert await released_now(lc)


class TestMCP:
    async def test_a_tool_call_holds_the_turn(self, lc: wl.Lifecycle) -> None:
        """While a start_workspace call waits for its build, the workspace is held; then released."""
        assert not (await lc.stop_workspace(CHAT, owner=OWNER)).is_error
        seen: list[int] = []
        async with (
            Client(create_server(lc, owner=OWNER, chat=CHAT)) as client,
            anyio.create_task_group() as tg,
        ):

            async def call() -> None:
                result = await client.call_tool("start_workspace", {})
                assert result.is_error is False

            tg.start_soon(call)
            with anyio.fail_after(5):
                while True:  # woken by the store's commits
                    head = await lc.store.head()
                    if await lc.state(CHAT) is wl.WorkspaceState.BUILDING:
                        break
                    await lc.store.wait_for_change(head)
            seen.append(await holds(lc))
        assert seen == [1]
        assert await released_now(lc)
