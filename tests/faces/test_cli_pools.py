"""``workspace-lifecycle pool status`` and how the command line shows a warm pool's workspaces
(issue 28 item 1): counts by pool, the holder hidden from ``status``, ``pool:NAME`` in ``watch``."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import cli
from workspace_lifecycle.cli._shared import watch_line
from workspace_lifecycle.values import EventKind, StateChange, WorkspaceState


async def _seed(url: str) -> None:
    """A pool of two, built, one of them claimed by chat c1 and refilled."""
    async with (
        wl.open_store(url) as store,
        wl.SimulatedProvisioner(store),
        wl.Lifecycle(store, pools=[wl.Pool("default", size=2)]) as lc,
    ):

        async def ready() -> None:
            with anyio.fail_after(5):
                while True:
                    head = await store.head()
                    if (await lc.pool_status())[0]["ready"] == 2:
                        return
                    await store.wait_for_change(head)

        await ready()
        await lc.register_chat("c1", owner="alice")
        r = await lc.create_workspace("c1", owner="alice", name="dev", pool="default")
        assert r.data["pooled"] is True
        await ready()


@pytest.fixture
def seeded(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    anyio.run(_seed, url)
    return url


def test_pool_status_counts_each_pool(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pool", "status", "--db", seeded]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["POOL", "READY", "WARMING", "OTHER"]
    assert lines[1].split() == ["default", "2", "0", "0"] and len(lines) == 2


def test_pool_status_json(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pool", "status", "--db", seeded, "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line) == {"pool": "default", "ready": 2, "warming": 0, "other": 0}


def test_status_lists_chats_not_pool_holders(seeded: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--db", seeded]) == 0
    out = capsys.readouterr().out
    assert "c1" in out and "pool" not in out and "\x1f" not in out


def test_no_pools(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    anyio.run(_empty, url)
    assert cli.main(["pool", "status", "--db", url]) == 0
    assert "no warm pools in" in capsys.readouterr().out


async def _empty(url: str) -> None:
    async with wl.open_store(url):
        pass


def test_watch_shows_a_members_holder_as_pool_name() -> None:
    change = StateChange(
        chat_id=wl.Pool("gpu", size=1).holder,
        workspace_id="w1",
        build_number=1,
        from_state=WorkspaceState.BUILDING,
        to_state=WorkspaceState.AGENT_READY,
        event=EventKind.AGENT_UPDATED,
        seq=3,
        at=0.0,
    )
    line = watch_line(change)
    assert "  pool:gpu  " in line and "\x1f" not in line


def test_pool_help_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pool", "status", "--help"]) == 0
    assert "ready to claim" in " ".join(capsys.readouterr().out.split())
