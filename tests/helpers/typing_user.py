"""A user's file, type-checked by CI with ``mypy --strict`` against the installed wheel (not run
by pytest): the package's own annotations, shipped with py.typed, must resolve."""

from __future__ import annotations

import anyio
from pydantic_ai import Agent
from pydantic_ai.models.test import TestModel

import workspace_lifecycle as wl
from workspace_lifecycle.integrations.pydantic_ai import workspace_toolset


async def start(lc: wl.Lifecycle, chat_id: str) -> wl.ToolResult:
    return await lc.start_workspace(chat_id, owner="alice")


async def main() -> None:
    async with (
        wl.open_store("memory://") as store,
        wl.SimulatedProvisioner(store),
        wl.Lifecycle(store) as lc,
    ):
        await lc.register_chat("chat-1", owner="alice")
        created: wl.ToolResult = await lc.create_workspace("chat-1", owner="alice", name="dev")
        text: str = created.text
        state: wl.WorkspaceState = await lc.state("chat-1")
        agent = Agent(
            TestModel(call_tools=["start_workspace"]),
            toolsets=[workspace_toolset(lc, chat_id="chat-1", owner="alice")],
        )
        output: str = (await agent.run("start")).output
        answer = await start(lc, "chat-1")
        print(text, state.value, output, answer.is_error)


if __name__ == "__main__":
    anyio.run(main)
