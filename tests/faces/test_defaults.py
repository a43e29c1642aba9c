"""Defaults (issue 26, item 5): the policy a new chat gets from the command line, the MCP
server and a bare Lifecycle."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import cli


def test_standalone_policy_is_30_idle_minutes_and_no_delete() -> None:
    assert wl.Policy(idle_stop_after=1800, delete_after_stopped=None) == wl.STANDALONE_POLICY


def test_a_bare_lifecycle_does_nothing_automatic() -> None:
    async def main() -> wl.Chat:
        async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lc:
            return await lc.register_chat("c1", owner="alice")

    assert anyio.run(main).policy == wl.Policy()


def test_cli_create_gives_the_standalone_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A new chat gets it; --idle-stop-after never turns the idle stop off; an option given
    alone keeps the default of the other; an existing chat keeps its own."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    for chat, options in [
        ("c1", []),
        ("c2", ["--idle-stop-after", "never"]),
        ("c3", ["--delete-after-stopped", "600"]),
    ]:
        assert cli.main(["create", chat, "--owner", "alice", "--db", url, "--no-wait", *options]) == 0
    assert cli.main(["create", "c2", "--owner", "alice", "--db", url, "--no-wait"]) == 0  # keeps its own
    capsys.readouterr()
    assert cli.main(["status", "--db", url, "--json"]) == 0
    policies = {
        row["chat_id"]: row["policy"] for row in map(json.loads, capsys.readouterr().out.splitlines())
    }
    assert policies == {
        "c1": {"idle_stop_after": 1800, "delete_after_stopped": None, "warn_before": None},
        "c2": {"idle_stop_after": None, "delete_after_stopped": None, "warn_before": None},
        "c3": {"idle_stop_after": 1800, "delete_after_stopped": 600, "warn_before": None},
    }


@pytest.mark.anyio
async def test_mcp_server_registers_with_the_standalone_policy(tmp_path: Path) -> None:
    """A chat the MCP server binds and registers gets the standalone policy."""
    pytest.importorskip("mcp")
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    url = f"sqlite:///{tmp_path / 'mcp.db'}"
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "workspace_lifecycle", "mcp", "--db", url, "--owner", "alice", "--chat", "chat-1"],
    )
    with (tmp_path / "server.log").open("w") as errlog, anyio.fail_after(20):
        async with (
            stdio_client(server, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
    async with wl.open_store(url) as store:
        chat = await store.get_chat("chat-1")
        assert chat is not None and chat.policy == wl.STANDALONE_POLICY
