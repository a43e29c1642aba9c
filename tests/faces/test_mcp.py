"""The MCP server: the tools of ``tool_definitions`` over the official SDK, answered by
``dispatch_tool``, with progress notifications while a build runs.

The end-to-end test runs ``python -m workspace_lifecycle mcp`` as a real server process, driven
by the SDK's stdio client, on a temporary SQLite file whose builds a simulated provisioner in a
third process runs. The other tests connect the SDK's client to the server in process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client import Client
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from stacks import simulated_lifecycle

import workspace_lifecycle as wl
from workspace_lifecycle.answers import CHAT_NOT_FOUND, NO_WORKSPACE, WORKSPACE_DELETED
from workspace_lifecycle.mcp_server import create_server, every_chat, mcp_tools
from workspace_lifecycle.tools import unknown_chat

pytestmark = pytest.mark.anyio

DEFINITIONS = wl.tool_definitions(status=True)
SERVED = wl.tool_definitions(chat_id_argument=True, status=True)


def _listed(tools: list[types.Tool]) -> list[dict[str, Any]]:
    """MCP tools back in ``tool_definitions``' shape."""
    return [{"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in tools]


def _text(result: types.CallToolResult) -> str:
    assert len(result.content) == 1
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


def _ok(result: types.CallToolResult) -> dict[str, Any]:
    assert result.is_error is False, _text(result)
    data: dict[str, Any] = json.loads(_text(result))
    assert "error" not in data, data
    return data


class Progress:
    """A progress callback that keeps what it was sent."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.seen.append((progress, total, message))

    @property
    def messages(self) -> list[str | None]:
        return [message for _, _, message in self.seen]


def test_tools_are_tool_definitions_verbatim() -> None:
    assert _listed(mcp_tools()) == DEFINITIONS
    assert _listed(mcp_tools(chat_id_argument=True)) == SERVED


# --- in process ---------------------------------------------------------------------------------


@pytest.fixture
async def lc() -> AsyncIterator[wl.Lifecycle]:
    # The host's chat registered first, as serve() does.
    async with simulated_lifecycle(seconds=0.02, chat="chat-1", owner="alice") as lifecycle:
        yield lifecycle


@pytest.fixture
async def client(lc: wl.Lifecycle) -> AsyncIterator[Client]:
    async with Client(create_server(lc, owner="alice", chat="chat-1")) as connected:
        yield connected


@pytest.fixture
async def served(lc: wl.Lifecycle) -> AsyncIterator[Client]:
    """A server for every chat of alice's (the CLI without --chat)."""
    async with Client(create_server(lc, owner="alice", allowed_chats=every_chat)) as connected:
        yield connected


class TestInProcess:
    async def test_list_tools(self, client: Client) -> None:
        assert _listed((await client.list_tools()).tools) == DEFINITIONS

    async def test_answers_are_dispatch_tool_text(self, client: Client, lc: wl.Lifecycle) -> None:
        created = await client.call_tool("create_workspace", {"name": "dev"})
        assert _ok(created)["workspace_name"] == "alice/dev"
        again = await client.call_tool("create_workspace", {"name": "dev"})
        expected = await wl.dispatch_tool(
            lc, "create_workspace", {"name": "dev"}, chat_id="chat-1", owner="alice"
        )
        assert _text(again) == expected.text
        assert _ok(await client.call_tool("workspace_status", {}))["status"] == "agent_ready"

    async def test_progress_per_state_change(self, client: Client) -> None:
        progress = Progress()
        _ok(await client.call_tool("create_workspace", {"name": "dev"}, progress_callback=progress))
        assert progress.messages == [
            "no_workspace -> building (build 1)",
            "building -> running (build 1)",
            "running -> agent_ready (build 1)",
        ]
        assert [p for p, _, _ in progress.seen] == [1, 2, 3]

    async def test_no_progress_for_wait_false_or_status(self, client: Client) -> None:
        progress = Progress()
        answer = _ok(await client.call_tool("create_workspace", {"wait": False}, progress_callback=progress))
        assert answer["status"] == "building"
        _ok(await client.call_tool("workspace_status", {}, progress_callback=progress))
        assert progress.seen == []

    async def test_bound_server_acts_on_its_chat_only(self, client: Client, lc: wl.Lifecycle) -> None:
        """--chat binds: a chat_id argument naming another chat, even the owner's, is an unknown chat."""
        await lc.register_chat("chat-2", owner="alice")
        head = await lc.store.head()
        for name in ("create_workspace", "start_workspace", "workspace_status"):
            other = await client.call_tool(name, {"chat_id": "chat-2"})
            unknown = (
                await lc.create_workspace("nobody", owner="alice") if name == "create_workspace" else None
            )
            assert other.is_error is (name != "workspace_status")  # status: a named state, no error
            assert _text(other) == (unknown.text if unknown else unknown_chat(name).text)
        assert await lc.store.head() == head

    async def test_served_chat_id_argument(self, served: Client, lc: wl.Lifecycle) -> None:
        """Without a bound chat, the chat_id argument names one of the owner's chats."""
        await lc.register_chat("chat-2", owner="alice")
        _ok(await served.call_tool("create_workspace", {"chat_id": "chat-2", "name": "other"}))
        assert await lc.state("chat-2") is wl.WorkspaceState.AGENT_READY
        assert await lc.state("chat-1") is wl.WorkspaceState.NO_WORKSPACE

    async def test_another_owners_chat_is_an_unknown_chat(self, served: Client, lc: wl.Lifecycle) -> None:
        """Every tool answers bob's chat exactly as one that does not exist, and registers nothing."""
        await lc.register_chat("bobs", owner="bob")
        await lc.create_workspace("bobs", owner="bob", name="secret")
        for name in (
            "create_workspace",
            "start_workspace",
            "stop_workspace",
            "delete_workspace",
            "workspace_status",
        ):
            progress = Progress()
            theirs = await served.call_tool(name, {"chat_id": "bobs"}, progress_callback=progress)
            unknown = await served.call_tool(name, {"chat_id": f"nobody-{name}"})
            assert theirs.is_error is unknown.is_error is (name != "workspace_status")
            assert _text(theirs) == _text(unknown) == unknown_chat(name).text
            assert name == "workspace_status" or _text(theirs) == (
                CHAT_NOT_FOUND if name == "create_workspace" else NO_WORKSPACE
            )
            assert progress.seen == []
        assert await lc.state("bobs") is wl.WorkspaceState.AGENT_READY
        assert await lc.store.get_chat("nobody-create_workspace") is None

    async def test_unknown_ids_are_not_squatted(self, served: Client, lc: wl.Lifecycle) -> None:
        """alice's server touching an unused id does not take it from bob, who registers it later."""
        head = await lc.store.head()
        for name in ("create_workspace", "start_workspace", "workspace_status"):
            answer = await served.call_tool(name, {"chat_id": "bob-next"})
            assert (
                answer.is_error is (name != "workspace_status") and _text(answer) == unknown_chat(name).text
            )
        assert await lc.store.head() == head
        await lc.register_chat("bob-next", owner="bob")  # before the fix: OwnershipError

    async def test_bad_calls_are_tool_errors_not_protocol_errors(self, served: Client) -> None:
        cases = {
            ("start_workspace", json.dumps({})): "start_workspace needs a chat_id",
            ("start_workspace", json.dumps({"chat_id": "c", "wait": "yes"})): "wait must be a boolean",
            ("stop_workspace", json.dumps({"chat_id": "c", "name": "x"})): "unknown argument 'name'",
            ("no_such_tool", json.dumps({"chat_id": "c"})): "unknown tool 'no_such_tool'",
            ("start_workspace", json.dumps({"chat_id": "a\x00b"})): "chat_id must not contain NUL bytes",
        }
        for (name, arguments), fragment in cases.items():
            result = await served.call_tool(name, json.loads(arguments))
            assert result.is_error is True
            assert fragment in _text(result)


# --- end to end over stdio ----------------------------------------------------------------------


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mcp.db'}"  # an absolute path: sqlite:////tmp/...


@pytest.fixture
def provisioner(sqlite_url: str, tmp_path: Path) -> Iterator[Path]:
    """``provision --simulate`` in another process on the same database; yields its log file."""
    log = tmp_path / "provisioner.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workspace_lifecycle",
                "provision",
                "--simulate",
                "--db",
                sqlite_url,
                "--build-seconds",
                "0.2",
                "--agent-seconds",
                "0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        yield log
    finally:
        _terminate(process)


@pytest.mark.slow
async def test_stdio_server_end_to_end(sqlite_url: str, provisioner: Path, tmp_path: Path) -> None:
    # The database exists before either process opens it; bob's chat is one alice must not see.
    async with wl.open_store(sqlite_url) as store:
        await store.register_chat("bobs", "bob")
    server = StdioServerParameters(
        command=sys.executable,
        args=[
            *("-m", "workspace_lifecycle", "mcp", "--db", sqlite_url, "--owner", "alice", "--chat", "chat-1"),
            *("--idle-stop-after", "3600", "--delete-after-stopped", "86400"),
        ],
    )
    server_log = tmp_path / "server.log"
    with server_log.open("w") as errlog, anyio.fail_after(20):
        async with (
            stdio_client(server, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            try:
                await _converse(session)
            except BaseException:
                logs = [await anyio.Path(p).read_text() for p in (provisioner, server_log)]
                print("provisioner:", logs[0], "server:", logs[1], sep="\n")
                raise
    async with wl.open_store(sqlite_url) as store:  # the policy was stored with the chat it bound
        chat = await store.get_chat("chat-1")
        assert chat is not None and chat.policy == wl.Policy(idle_stop_after=3600, delete_after_stopped=86400)


async def _converse(session: ClientSession) -> None:
    assert _listed((await session.list_tools()).tools) == DEFINITIONS
    assert _ok(await session.call_tool("workspace_status", {}))["status"] == "no_workspace"

    progress = Progress()
    created = _ok(await session.call_tool("create_workspace", {"name": "dev"}, progress_callback=progress))
    assert created["created"] is True and created["workspace_name"] == "alice/dev"
    assert "no_workspace -> building (build 1)" in progress.messages, progress.seen
    assert _ok(await session.call_tool("workspace_status", {}))["status"] == "agent_ready"

    stopped = _ok(await session.call_tool("stop_workspace", {}))
    assert stopped["stopped"] is True
    assert _ok(await session.call_tool("workspace_status", {}))["status"] == "stopped"

    progress = Progress()
    started = _ok(await session.call_tool("start_workspace", {}, progress_callback=progress))
    assert started["started"] is True and started["build_id"]
    assert "stopped -> building (build 3)" in progress.messages, progress.seen
    assert [p for p, _, _ in progress.seen] == sorted({p for p, _, _ in progress.seen})  # increasing

    deleted = _ok(await session.call_tool("delete_workspace", {}))
    assert deleted["deleted"] is True
    gone = await session.call_tool("start_workspace", {})
    assert gone.is_error is True and _text(gone) == WORKSPACE_DELETED

    for name in ("start_workspace", "workspace_status"):  # bound to chat-1: bob's chat is unknown
        theirs = await session.call_tool(name, {"chat_id": "bobs"})
        assert theirs.is_error is (name != "workspace_status") and _text(theirs) == unknown_chat(name).text


@pytest.mark.slow
async def test_default_chat_of_another_owner_is_served_as_an_unknown_chat(sqlite_url: str) -> None:
    """``--chat`` naming bob's chat for alice: the server starts (as every face, it does not say
    whose the chat is) and answers each tool exactly as for an unknown chat; nothing is written."""
    async with wl.open_store(sqlite_url) as store:
        await store.register_chat("bobs", "bob")
        head = await store.head()
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "workspace_lifecycle", "mcp", "--db", sqlite_url, "--owner", "alice", "--chat", "bobs"],
    )
    with anyio.fail_after(20):
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            for name in ("create_workspace", "start_workspace", "stop_workspace", "delete_workspace"):
                answer = await session.call_tool(name, {})
                assert answer.is_error is True and _text(answer) == unknown_chat(name).text, name
            assert _ok(await session.call_tool("workspace_status", {}))["status"] == "no_workspace"
    async with wl.open_store(sqlite_url) as store:
        assert await store.get_chat("bobs") == wl.Chat("bobs", "bob", None) and await store.head() == head
