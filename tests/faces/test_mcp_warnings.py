"""The MCP server sends the bound chat's expiry warning to the client as a log message
(``notifications/message``), received by the real SDK client over a handshake-era connection;
the tool answers carry the next deadline in words."""

from __future__ import annotations

import json

import anyio
import mcp_types as types
import pytest
from mcp.client import Client

import workspace_lifecycle as wl
from workspace_lifecycle.mcp_server import create_server

pytestmark = pytest.mark.anyio

POLICY = wl.Policy(idle_stop_after=1800, warn_before=60)


async def test_the_client_hears_the_warning(anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("one event loop is enough for the SDK's client")
    clock = wl.VirtualClock(start=2_000_000_000.0)
    heard: list[types.LoggingMessageNotificationParams] = []
    arrived = anyio.Event()

    async def logged(params: types.LoggingMessageNotificationParams) -> None:
        heard.append(params)
        arrived.set()

    async with (
        wl.MemoryStore(clock=clock) as store,
        wl.SimulatedProvisioner(store, clock=clock),
        wl.Lifecycle(store, clock=clock, policy=POLICY) as lc,
    ):
        await lc.register_chat("chat-1", owner="alice")
        server = create_server(lc, owner="alice", chat="chat-1")
        async with Client(server, mode="legacy", logging_callback=logged) as client:
            created = await client.call_tool("create_workspace", {"name": "dev"})
            content = created.content[0]
            assert isinstance(content, types.TextContent)
            assert json.loads(content.text)["next_deadline"] == "idle stop in 30 min"
            deadline = lc.next_deadline()
            assert deadline is not None
            clock.advance(deadline - 60 - clock() - 1)
            await anyio.sleep(0.2)
            assert heard == []  # not before its time
            clock.advance(1)
            with anyio.fail_after(10):
                await arrived.wait()
            await anyio.sleep(0.2)
    [message] = heard
    assert message.level == "warning" and message.logger == "workspace-lifecycle"
    assert isinstance(message.data, dict)
    assert message.data["event"] == "deadline_approaching" and message.data["chat_id"] == "chat-1"
    assert message.data["next_deadline"] == "idle stop in 60 s"
