"""Several processes on one SQLite file: exactly-once start, crash safety, cross-process wake-ups."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import anyio
import pytest
from multiproc import race, receive, replicas, send, stopped_workspace

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus

pytestmark = pytest.mark.slow


def start_builds(path: Path, ws: str) -> list[tuple[str, int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT build_id, number, status FROM builds WHERE workspace_id = ? AND transition = 'start'"
            " AND number > 2 ORDER BY number",
            (ws,),
        ).fetchall()


def test_four_processes_race_fifty_starts_each(tmp_path: Path) -> None:
    """4 processes x 50 concurrent start_workspace on one stopped workspace: exactly one build,
    every caller answered with its build_id (the provisioner runs in the first process)."""
    path = tmp_path / "race.db"
    url = f"sqlite:///{path}"
    processes, calls = 4, 50
    ws = anyio.run(stopped_workspace, url, "chat", "alice", backend="asyncio")
    argvs = [["race", url, "chat", "alice", str(calls), "1" if i == 0 else "0"] for i in range(processes)]
    flat = race(argvs)
    assert len(flat) == processes * calls
    assert all(not a["is_error"] and a["data"].get("started") is True for a in flat), flat[:3]
    rows = start_builds(path, ws)
    assert len(rows) == 1, rows
    assert {a["data"]["build_id"] for a in flat} == {rows[0][0]}
    assert rows[0][1:] == (3, "succeeded")


def test_sigkill_mid_wait_then_a_new_runtime_waits_for_the_same_build(tmp_path: Path) -> None:
    """A runtime killed with SIGKILL while waiting loses nothing: a new runtime on the file waits
    for the build in flight and fires no second one."""
    path = tmp_path / "crash.db"
    url = f"sqlite:///{path}"
    ws = anyio.run(stopped_workspace, url, "chat", "alice", backend="asyncio")
    with replicas(["start", url, "chat", "alice"]) as (proc,):
        assert receive(proc) == "ready"
        deadline = time.monotonic() + 10
        while not start_builds(path, ws):
            assert time.monotonic() < deadline, "the start build was never queued"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    (pending,) = start_builds(path, ws)
    assert pending[2] == "pending"

    async def recover() -> wl.ToolResult:
        results: list[wl.ToolResult] = []
        answered = anyio.Event()
        async with wl.open_store(url) as store, wl.Lifecycle(store, build_timeout=10) as lc:

            async def call() -> None:
                results.append(await lc.start_workspace("chat", owner="alice"))
                answered.set()

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    await anyio.wait_all_tasks_blocked()  # the new runtime now waits on the build
                    assert not results
                    # The build takes 0.3 s, ample for the request (ms) to be waiting on it first.
                    async with wl.SimulatedProvisioner(store, build_seconds=0.3, agent=None):
                        await answered.wait()
        return results[0]

    answer = anyio.run(recover, backend="asyncio")
    assert answer.data == {
        "started": True,
        "workspace_name": "dev",
        "build_id": pending[0],
        "agent_status": "no_agent",
    }
    assert [row[0] for row in start_builds(path, ws)] == [pending[0]]


def test_waiter_in_another_process_wakes_on_commit(tmp_path: Path) -> None:
    """A process sleeping in wait_for_change wakes when this process commits (data_version)."""
    url = f"sqlite:///{tmp_path / 'wake.db'}"

    async def write(i: int) -> None:
        async with wl.open_store(url) as store:
            await store.register_chat(f"c{i}", "alice")
            await store.create_workspace(f"c{i}", "dev", expected_workspace_id=None)

    anyio.run(write, 0, backend="asyncio")
    with replicas(["wait", url, "3"]) as (proc,):
        for i in range(1, 4):
            ready = receive(proc).split()
            assert ready[0] == "ready"
            time.sleep(0.05)  # the other process is asleep now
            anyio.run(write, i, backend="asyncio")
            woke = receive(proc).split()  # a missed wake-up would hang here (the test times out)
            assert woke[0] == "woke" and int(woke[1]) > int(ready[1])
        assert proc.wait(timeout=30) == 0


def test_claim_across_processes_is_exactly_once(tmp_path: Path) -> None:
    """Builds claimed by provisioners in several processes are each finished exactly once."""
    url = f"sqlite:///{tmp_path / 'claim.db'}"

    async def queue(n: int) -> None:
        async with wl.open_store(url) as store:
            for i in range(n):
                await store.register_chat(f"c{i}", "o")
                await store.create_workspace(f"c{i}", "dev", expected_workspace_id=None)

    anyio.run(queue, 30, backend="asyncio")
    argvs = [["race", url, "none", "o", "0", "1"] for _ in range(3)]
    with replicas(*argvs) as procs:
        for proc in procs:
            assert receive(proc) == "ready"

        async def all_done() -> list[wl.ChatRow]:
            async with wl.open_store(url) as store:
                with anyio.fail_after(20):
                    while True:
                        rows = await store.list_chats()
                        facts = [r.facts for r in rows if r.facts]
                        if all(f.latest_build and f.latest_build.status.finished for f in facts):
                            return list(rows)
                        await anyio.sleep(0.05)

        anyio.run(all_done, backend="asyncio")
        for proc in procs:
            send(proc, "go")
            receive(proc)
            send(proc, "exit")
            assert proc.wait(timeout=30) == 0
    with sqlite3.connect(tmp_path / "claim.db") as conn:
        finished = conn.execute("SELECT count(*) FROM events WHERE kind = 'build_finished'").fetchone()[0]
        claims = conn.execute("SELECT count(*) FROM events WHERE kind = 'build_updated'").fetchone()[0]
        workers = {w for (w,) in conn.execute("SELECT DISTINCT worker FROM builds")}
    assert finished == claims == 30
    assert JobStatus.SUCCEEDED and len(workers) >= 1
