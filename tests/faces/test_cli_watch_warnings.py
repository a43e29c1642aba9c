"""``watch`` prints expiry warnings: a ``deadline_approaching`` event written by a runtime on
another store instance (the same SQLite file) shows up as a line, and as a JSON object with
``--json``. On a virtual clock shared by both, so the warning comes without waiting."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.adapters.sqlite import SQLiteStore
from workspace_lifecycle.cli.watch import _watch

pytestmark = pytest.mark.anyio

POLICY = wl.Policy(idle_stop_after=1800, warn_before=60)


@pytest.mark.parametrize("as_json", [False, True])
async def test_watch_prints_the_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool, anyio_backend: str
) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("one event loop is enough for the CLI")
    clock = wl.VirtualClock(start=2_000_000_000.0)
    path = tmp_path / "w.db"
    async with (
        SQLiteStore(path, clock=clock) as store,
        wl.SimulatedProvisioner(store, clock=clock),
        wl.Lifecycle(store, clock=clock, policy=POLICY) as lc,
    ):
        await lc.register_chat("chat-1", owner="alice")
        assert (await lc.create_workspace("chat-1", owner="alice", name="dev")).data["created"] is True
        deadline = lc.next_deadline()
        assert deadline is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch, SQLiteStore(path, clock=clock), None, as_json)
            await anyio.sleep(0.3)  # the watcher is up (its banner went to stderr)
            assert "watching every chat" in capsys.readouterr().err
            clock.advance(deadline - 60 - clock())
            with anyio.fail_after(10):
                while True:
                    head = await store.head()
                    if any(e.kind is wl.EventKind.DEADLINE_APPROACHING for e in await store.read_events(0)):
                        break
                    await store.wait_for_change(head)
            await anyio.sleep(0.3)  # the watcher's store notices the other writer's commit
            tg.cancel_scope.cancel()
    lines = [line for line in capsys.readouterr().out.splitlines() if "approaching" in line]
    assert len(lines) == 1, lines
    if as_json:
        data = json.loads(lines[0])
        assert data["event"] == "deadline_approaching" and data["chat_id"] == "chat-1"
        assert data["next_deadline"] == "idle stop in 60 s" and data["deadline"] == deadline
    else:
        assert lines[0].endswith("chat-1  deadline approaching: idle stop in 60 s")
