"""The integrations pass a usable workspace through (issue 26): the model sees a running
workspace's endpoints in the tool answers, and can call workspace_logs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

import workspace_lifecycle as wl

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def lc() -> AsyncIterator[wl.Lifecycle]:
    async with (
        wl.open_store("memory://") as store,
        wl.SimulatedProvisioner(store, build_seconds=0.01, agent_seconds=0.01),
        wl.Lifecycle(store) as lc,
    ):
        await lc.register_chat("chat-1", owner="alice")
        yield lc


def _check(answers: list[dict[str, Any]]) -> None:
    created, status, logs = answers
    assert created["created"] is True and created["endpoints"] == {
        "http": "http://workspace.simulated.invalid"
    }
    assert status["endpoints"] == created["endpoints"]
    assert logs["build_status"] == "succeeded" and logs["lines"] == []


async def test_pydantic_ai(lc: wl.Lifecycle) -> None:
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent
    from test_integrations_pydantic_ai import returns, scripted

    from workspace_lifecycle.integrations.pydantic_ai import workspace_toolset

    calls = [("create_workspace", {"name": "dev"}), ("workspace_status", {}), ("workspace_logs", {})]
    toolset = workspace_toolset(lc, chat_id="chat-1", owner="alice", status=True)
    result = await Agent(scripted(calls), toolsets=[toolset]).run("go")
    _check([json.loads(str(part.content)) for part in returns(result.all_messages())])


async def test_openai_agents(lc: wl.Lifecycle) -> None:
    pytest.importorskip("agents")
    from agents import Agent, Runner
    from test_integrations_openai_agents import OFFLINE, outputs, scripted

    from workspace_lifecycle.integrations.openai_agents import workspace_tools

    calls: list[tuple[str, dict[str, Any]]] = [
        ("create_workspace", {"name": "dev", "parameters": None, "wait": None}),
        ("workspace_status", {"wait_ms": None}),
        ("workspace_logs", {"build": None, "limit": None, "after": None}),
    ]
    tools = workspace_tools(lc, chat_id="chat-1", owner="alice", status=True)
    agent = Agent(name="assistant", model=scripted(calls), tools=tools)
    result = await Runner.run(agent, "go", run_config=OFFLINE)
    _check([json.loads(text) for text in outputs(result.new_items)])
