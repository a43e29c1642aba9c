"""Readiness that follows the agent (issue 29, item 4): a ProcessProvisioner keeps probing a
ready agent while its process runs; one that closes its port is reported ``disconnected`` (the
workspace leaves ``agent_ready`` and the tools say its agent is not ready) and ``ready`` again
once it reopens it. Real processes: ``hostile_workspace.py deafen`` serves, closes its port
after a while (the process lives on) and reopens it on SIGUSR1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.process_provisioner import STATE_FILE
from workspace_lifecycle.values import AgentLifecycle, EventKind

pytestmark = pytest.mark.anyio

HOSTILE = str(Path(__file__).parents[1] / "helpers" / "hostile_workspace.py")
OWNER = "alice"
#: How often a ready agent is probed again here (the default is a second).
WATCH = 0.1


@pytest.fixture(
    params=[
        pytest.param(("memory", "asyncio"), id="memory-asyncio"),
        pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
    ]
)
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    kind, backend = request.param
    return kind, backend


def deafening(after: float) -> list[str]:
    """Serve on the port, close it ``after`` seconds in (living on), reopen it on SIGUSR1."""
    return [sys.executable, HOSTILE, "deafen", "{port}", str(after)]


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def nothing_left(root: Path) -> Iterator[None]:
    """A failed test leaves no process running: every recorded process group is killed."""
    try:
        yield
    finally:
        for record in root.glob(f"*/{STATE_FILE}"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(json.loads(record.read_text())["pid"], signal.SIGKILL)


@pytest.fixture
async def lc(store: wl.Store) -> AsyncIterator[wl.Lifecycle]:
    async with wl.Lifecycle(store, build_timeout=20, agent_timeout=20) as lifecycle:
        await lifecycle.register_chat("c1", owner=OWNER)
        yield lifecycle


async def agent_becomes(store: wl.Store, workspace_id: str, lifecycle: AgentLifecycle) -> None:
    """Return once the workspace's stored agent is ``lifecycle`` (woken by the store's events)."""
    while True:
        head = await store.head()
        facts = await store.workspace_facts(workspace_id)
        if facts.agent is not None and facts.agent.lifecycle is lifecycle:
            return
        await store.wait_for_change(head)


async def agent_reports(store: wl.Store, workspace_id: str) -> list[str]:
    events = await store.read_events(0)
    return [
        e.agent.value
        for e in events
        if e.workspace_id == workspace_id and e.kind is EventKind.AGENT_UPDATED and e.agent is not None
    ]


async def ready_workspace(store: wl.Store, lc: wl.Lifecycle) -> str:
    """Create the chat's workspace and return its id, once its agent is ready."""
    made = await lc.create_workspace("c1", owner=OWNER, name="dev")
    assert made.data.get("created") is True and "agent_status" not in made.data, made.text
    chat = await store.get_chat("c1")
    assert chat is not None and chat.workspace_id is not None
    assert await lc.state("c1") is wl.WorkspaceState.AGENT_READY
    return chat.workspace_id


class TestReadinessFollowsTheAgent:
    async def test_an_agent_that_closes_its_port_is_not_ready_until_it_reopens_it(
        self, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path
    ) -> None:
        """Ready, then deaf: disconnected (start_workspace and status say its agent is not
        ready, no build is fired); then answering again: ready again. One report per change."""
        root = tmp_path / "ws"
        with nothing_left(root), anyio.fail_after(30):
            async with wl.ProcessProvisioner(
                store, root=root, command=deafening(1.5), spawn_grace=0.1, watch_interval=WATCH
            ):
                ws = await ready_workspace(store, lc)
                pid = json.loads((root / ws / STATE_FILE).read_text())["pid"]

                await agent_becomes(store, ws, AgentLifecycle.DISCONNECTED)
                assert running(pid)  # the process lives on: only its port closed
                assert await lc.state("c1") is wl.WorkspaceState.RUNNING
                started = await lc.start_workspace("c1", owner=OWNER)
                assert started.data == {
                    "started": True,
                    "workspace_name": "dev",
                    "no_build": True,
                    "agent_status": "not_ready",
                    "lifecycle_state": "disconnected",
                    "endpoints": {"http": started.data["endpoints"]["http"]},
                }, started.text
                status = await lc.status("c1", owner=OWNER)
                assert status.data["status"] == "running", status.text
                assert status.data["reason"] == "agent lifecycle is disconnected", status.text

                os.kill(pid, signal.SIGUSR1)  # it reopens its port
                await agent_becomes(store, ws, AgentLifecycle.READY)
                assert await lc.state("c1") is wl.WorkspaceState.AGENT_READY
                again = await lc.start_workspace("c1", owner=OWNER)
                assert again.data["started"] is True and "agent_status" not in again.data, again.text
                await anyio.sleep(3 * WATCH)  # looks that find no change report nothing
                assert await agent_reports(store, ws) == ["ready", "disconnected", "ready"]

                assert (await lc.delete_workspace("c1", owner=OWNER)).data["deleted"] is True
                assert not running(pid)

    async def test_a_restarted_provisioner_follows_the_agent_it_adopts(
        self, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path
    ) -> None:
        """The provisioner that started the process stops; the next one adopts the process and
        follows its agent: the port closes under it, and it reports the agent disconnected."""
        root = tmp_path / "ws"
        kwargs = {"root": root, "command": deafening(2.0), "spawn_grace": 0.1, "watch_interval": WATCH}
        with nothing_left(root), anyio.fail_after(30):
            async with wl.ProcessProvisioner(store, **kwargs):  # type: ignore[arg-type]
                ws = await ready_workspace(store, lc)
            async with wl.ProcessProvisioner(store, **kwargs):  # type: ignore[arg-type]
                await agent_becomes(store, ws, AgentLifecycle.DISCONNECTED)
                assert await lc.state("c1") is wl.WorkspaceState.RUNNING
                assert (await lc.delete_workspace("c1", owner=OWNER)).data["deleted"] is True
