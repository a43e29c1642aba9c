"""A turn held by another process, on SQLite and PostgreSQL, with real (short) times.

A workspace stops after half a second idle. A second process holds a turn on it before it runs (its hold of
a second renewed every third of one) while this process's Lifecycle fires deadlines: for
several idle periods nothing stops. Then the holder is SIGKILLed: nobody renews its hold, which
lapses at its expiry, and the workspace is stopped exactly once, ``idle_stop_after`` after it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, JobStatus, Reason, Transition, WorkspaceState

pytestmark = pytest.mark.slow

IDLE = 0.5
HOLD = 1.0
CHAT, OWNER = "c1", "alice"
WORKER = Path(__file__).parent.parent / "helpers" / "hold_worker.py"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'holds.db'}"
    else:
        yield str(request.getfixturevalue("pg_schema_url"))


async def new_workspace(url: str) -> str:
    """The chat's workspace, its start build queued (it runs once the holder holds it)."""
    async with wl.open_store(url) as store:
        await store.register_chat(CHAT, OWNER, policy=wl.Policy(idle_stop_after=IDLE))
        return (await store.create_workspace(CHAT, "dev", expected_workspace_id=None)).facts.workspace_id


async def started(store: wl.Store) -> None:
    """The start build succeeds: the idle deadline is armed IDLE from now."""
    build = await store.claim_build("setup")
    assert build is not None
    await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)


def stop_builds(events: list[wl.StoreEvent]) -> list[wl.StoreEvent]:
    return [e for e in events if e.kind is EventKind.BUILD_QUEUED and e.transition is Transition.STOP]


async def watch_the_holder_die(url: str, ws: str, holder: subprocess.Popen[str]) -> None:
    async with wl.open_store(url) as store, wl.Lifecycle(store) as lc:
        await started(store)
        await anyio.sleep(3 * IDLE)  # three idle periods while the other process holds the turn
        assert stop_builds(list(await store.read_events(0, 100_000))) == []
        assert await lc.state(CHAT) is WorkspaceState.RUNNING
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
        killed = time.time()
        [hold] = (await store.workspace_facts(ws)).workspace.holds  # the dead holder's, never renewed again
        assert hold.expires_at <= killed + HOLD
        with anyio.fail_after(HOLD + IDLE + 5):  # the stop build is queued (no provisioner runs it)
            while await lc.state(CHAT) is not WorkspaceState.BUILDING:
                head = await store.head()
                with anyio.move_on_after(0.5):
                    await store.wait_for_change(head)
        await anyio.sleep(IDLE)  # nothing fires twice
        [stop] = stop_builds(list(await store.read_events(0, 100_000)))
    assert stop.reason is Reason.IDLE
    assert stop.at >= hold.expires_at + IDLE  # the countdown started at the lapse, not before
    assert stop.at <= killed + HOLD + IDLE + 1.0  # and the dead holder held no longer


def test_a_killed_holder_stops_holding_after_its_expiry(url: str) -> None:
    ws = anyio.run(new_workspace, url)
    with subprocess.Popen(
        [sys.executable, str(WORKER), url, CHAT, OWNER, str(HOLD)], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            anyio.run(watch_the_holder_die, url, ws, holder)
        finally:
            if holder.poll() is None:
                holder.kill()
