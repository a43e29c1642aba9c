"""Processes never outlive their workspace (issue 29, item 3): every process a workspace starts
carries its marker, however it detaches (double fork and setsid here), and a stop, a delete, the
end of its main process and a restarted provisioner end them all; a process is recorded before
it runs, so a provisioner SIGKILLed between the spawn and the record leaves nothing running.
Real processes throughout; the test reads ``/proc`` itself to find what is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from processes import marked, running

import workspace_lifecycle as wl

pytestmark = pytest.mark.anyio

HELPERS = Path(__file__).parents[1] / "helpers"
HOSTILE = str(HELPERS / "hostile_workspace.py")
WORKER = str(HELPERS / "containment_worker.py")
OWNER = "alice"


@pytest.fixture(params=[pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio")])
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    kind, backend = request.param
    return kind, backend


def daemonising() -> list[str]:
    """Serves, after leaving a daemon (double fork + setsid) that writes ./daemon.pid."""
    return [sys.executable, HOSTILE, "daemon", "{port}"]


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``condition`` (other processes' state, read from ``/proc`` or files) holds
    within ``seconds``."""
    with anyio.move_on_after(seconds):
        while not condition():  # noqa: ASYNC110 - other processes' state: there is no event
            await anyio.sleep(0.02)
    return condition()


async def gone(pids: list[int], seconds: float = 10.0) -> bool:
    """Whether every one of ``pids`` has ended within ``seconds``."""
    return await until(lambda: not any(running(pid) for pid in pids), seconds)


def command_lines(pids: list[int]) -> list[str]:
    return [Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") for pid in pids]


async def nothing_marked(workspace_id: str, seconds: float = 10.0) -> list[str]:
    """Wait until no process carries ``workspace_id``'s marker; the command lines left if some
    still do after ``seconds``."""
    await until(lambda: not marked(workspace_id), seconds)
    return await anyio.to_thread.run_sync(command_lines, marked(workspace_id))


@contextmanager
def killed_at_the_end(pids: list[int]) -> Iterator[list[str]]:
    """SIGKILL whatever of ``pids``, and of the processes marked with the workspace ids the
    test adds to the list this yields, a failing test left running."""
    workspaces: list[str] = []
    try:
        yield workspaces
    finally:
        for pid in pids + [pid for ws in workspaces for pid in marked(ws)]:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def lc(store: wl.Store) -> AsyncIterator[wl.Lifecycle]:
    async with wl.Lifecycle(store, build_timeout=30, agent_timeout=30) as lifecycle:
        await lifecycle.register_chat("c1", owner=OWNER)
        yield lifecycle


async def workspace_of(store: wl.Store) -> str:
    row = await store.get_chat("c1")
    assert row is not None and row.workspace_id is not None
    return row.workspace_id


async def daemon_of(path: Path) -> int:
    assert await until((path / "daemon.pid").exists), "no daemon.pid"
    return int(await anyio.Path(path / "daemon.pid").read_text())


async def created(
    lc: wl.Lifecycle, store: wl.Store, root: Path, workspaces: list[str], daemons: list[int]
) -> str:
    """Create c1's workspace; its id (added to ``workspaces``), its daemon (to ``daemons``)."""
    await lc.create_workspace("c1", owner=OWNER, name="dev")
    ws = await workspace_of(store)
    workspaces.append(ws)
    daemons.append(await daemon_of(root / ws))
    return ws


class TestADaemonEndsWithItsWorkspace:
    async def test_after_a_stop_and_after_a_delete(
        self, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path
    ) -> None:
        """A daemonised child (double fork + setsid, out of the process group) is gone once the
        stop answers, and again once the delete answers ``deleted``; nothing marked is left."""
        root = tmp_path / "ws"
        daemons: list[int] = []
        with killed_at_the_end(daemons) as workspaces, anyio.fail_after(60):
            async with wl.ProcessProvisioner(store, root=root, command=daemonising(), spawn_grace=0.1):
                ws = await created(lc, store, root, workspaces, daemons)
                assert marked(ws)
                stopped = await lc.stop_workspace("c1", owner=OWNER)
                assert stopped.data.get("stopped") is True or "error" not in stopped.data, stopped.text
                assert not running(daemons[0]) and marked(ws) == []
                (root / ws / "daemon.pid").unlink()
                await lc.start_workspace("c1", owner=OWNER)
                daemons.append(await daemon_of(root / ws))
                deleted = await lc.delete_workspace("c1", owner=OWNER)
                assert deleted.data.get("deleted") is True, deleted.text
                assert not running(daemons[1]) and marked(ws) == []
                assert not (root / ws).exists()

    async def test_when_its_main_process_dies(
        self, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path
    ) -> None:
        """The main process is SIGKILLed while the provisioner watches: its daemon ends with it."""
        root = tmp_path / "ws"
        daemons: list[int] = []
        with killed_at_the_end(daemons) as workspaces, anyio.fail_after(60):
            async with wl.ProcessProvisioner(store, root=root, command=daemonising(), spawn_grace=0.1) as p:
                ws = await created(lc, store, root, workspaces, daemons)
                os.kill(p.pids[-1], signal.SIGKILL)
                assert await gone(daemons) and await nothing_marked(ws) == []

    async def test_a_restarted_provisioner_ends_a_dead_workspaces_leftovers(
        self, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path
    ) -> None:
        """The main process dies while no provisioner runs; its daemon lives on. The next
        provisioner on the root reports the agent ``off`` and ends the daemon."""
        root = tmp_path / "ws"
        daemons: list[int] = []
        with killed_at_the_end(daemons) as workspaces, anyio.fail_after(60):
            async with wl.ProcessProvisioner(store, root=root, command=daemonising(), spawn_grace=0.1) as p:
                ws = await created(lc, store, root, workspaces, daemons)
                main = p.pids[-1]
            os.kill(main, signal.SIGKILL)  # no provisioner runs
            assert await gone([main])
            assert running(daemons[0])
            async with wl.ProcessProvisioner(store, root=root, command=daemonising(), spawn_grace=0.1):
                assert await gone(daemons) and await nothing_marked(ws) == []
                facts = await store.workspace_facts(ws)
                assert facts.agent is not None and facts.agent.lifecycle is wl.AgentLifecycle.OFF
                deleted = await lc.delete_workspace("c1", owner=OWNER)
                assert deleted.data.get("deleted") is True, deleted.text


async def latest_build_ended(store: wl.Store, ws: str) -> None:
    while True:
        cursor = await store.head()
        build = (await store.workspace_facts(ws)).latest_build
        if build is not None and not build.status.in_progress:
            return
        with anyio.move_on_after(0.2):
            await store.wait_for_change(cursor)


def start_worker(url: str, root: Path) -> subprocess.Popen[str]:
    """The provisioner that stops before its first record, leases of 1 s."""
    argv = [sys.executable, WORKER, url, str(root), "1", *daemonising()]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)


class TestACgroupPerBuild:
    async def test_holds_a_daemon_that_clears_its_environment(
        self, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path
    ) -> None:
        """Where a cgroup v2 directory can be made (root, or a delegated subtree), a daemon that
        execs with an empty environment (no marker) is still in its build's cgroup: the
        delete ends it and removes the cgroup. Elsewhere this is a documented limit."""
        root = tmp_path / "ws"
        command = [sys.executable, HOSTILE, "unmarked", "{port}"]
        daemons: list[int] = []
        with killed_at_the_end(daemons) as workspaces, anyio.fail_after(60):
            async with wl.ProcessProvisioner(store, root=root, command=command, spawn_grace=0.1) as p:
                if p.marks.cgroups is None:
                    pytest.skip("no writable cgroup v2 hierarchy here: the marker alone is used")
                ws = await created(lc, store, root, workspaces, daemons)
                assert marked(ws) != [] and daemons[0] not in marked(ws)  # it has no marker
                cgroup = p.marks.cgroups.base / f"w-{ws}"
                assert str(daemons[0]) in (cgroup / "b1" / "cgroup.procs").read_text().split()
                deleted = await lc.delete_workspace("c1", owner=OWNER)
                assert deleted.data.get("deleted") is True, deleted.text
                assert not running(daemons[0]) and not cgroup.exists()


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


class TestAProvisionerKilledBeforeTheRecord:
    async def test_leaves_nothing_running_after_the_retry_and_the_delete(
        self, store_url: str, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path
    ) -> None:
        """A provisioner (a real process) spawns a workspace's process and is SIGKILLed before
        it writes ``workspace.json``: the held process never runs the command and exits; the
        build's lease runs out, a retried start runs, and the delete leaves no process."""
        root = tmp_path / "ws"
        worker = start_worker(store_url, root)
        held: list[int] = []
        try:
            with killed_at_the_end(held) as workspaces, anyio.fail_after(90):
                assert await anyio.to_thread.run_sync(_line, worker) == "ready"
                await lc.create_workspace("c1", owner=OWNER, name="dev", wait=False)
                said = await anyio.to_thread.run_sync(_line, worker)
                assert said.startswith("spawned "), said
                held.append(int(said.split()[1]))
                ws = await workspace_of(store)
                workspaces.append(ws)
                assert running(held[0]) and not (root / ws / "daemon.pid").exists()
                worker.kill()
                assert await anyio.to_thread.run_sync(worker.wait) == -signal.SIGKILL
                # The launcher reads the end of its input: it exits, having run nothing.
                assert await gone(held) and await nothing_marked(ws) == []
                assert not (root / ws / "daemon.pid").exists() and not (root / ws / "workspace.json").exists()
                async with wl.ProcessProvisioner(store, root=root, command=daemonising(), spawn_grace=0.1):
                    with anyio.fail_after(30):  # the reaper fails the dead provisioner's build
                        await latest_build_ended(store, ws)
                    started = await lc.start_workspace("c1", owner=OWNER)
                    assert started.data.get("started") is True, started.text
                    held.append(await daemon_of(root / ws))
                    deleted = await lc.delete_workspace("c1", owner=OWNER)
                    assert deleted.data.get("deleted") is True, deleted.text
                    assert marked(ws) == [] and not any(running(pid) for pid in held)
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
            assert worker.stdout is not None
            worker.stdout.close()
