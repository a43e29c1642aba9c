"""Crashes: SIGKILL of a runtime and of a provisioner mid-build, on SQLite and PostgreSQL, and
the reaper that recovers a build whose worker died.

After recovery nothing is lost (the waiting caller, in a new process, is answered) and nothing
is duplicated (exactly one start build per start decision).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from figures import FIGURES, flush
from workspaces import stopped

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, JobStatus, Transition
from workspace_lifecycle.reaper import BuildReaper, local_worker_alive, local_worker_name

WORKER = Path(__file__).with_name("crash_worker.py")
OWNER = "alice"


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    flush()


# --- the reaper, in process, on every store ------------------------------------------------------


@pytest.mark.anyio
class TestReaper:
    async def test_dead_worker_build_is_failed(self, store: wl.Store) -> None:
        ws = await stopped(store)
        assert (await store.request_build(ws, Transition.START, expected_build_number=2)).fired
        claimed = await store.claim_build("dead-one")
        assert claimed is not None
        reaper = BuildReaper(store, worker_alive=lambda w: w != "dead-one")
        [reaped] = await reaper.reap_once()
        assert reaped.build_id == claimed.build_id and reaped.status is JobStatus.FAILED
        assert reaped.error == "provisioner worker dead-one stopped while running the build"
        assert wl.derive_state(await store.workspace_facts(ws)) is wl.WorkspaceState.FAILED
        assert await reaper.reap_once() == []
        with pytest.raises(wl.BuildConflictError):  # the worker, had it been only slow
            await store.finish_build(claimed.build_id, JobStatus.SUCCEEDED)

    async def test_live_workers_and_pending_builds_are_left_alone(self, store: wl.Store) -> None:
        a = await stopped(store, "a")
        b = await stopped(store, "b")
        assert (await store.request_build(a, Transition.START, expected_build_number=2)).fired
        assert (await store.request_build(b, Transition.START, expected_build_number=2)).fired
        assert await store.claim_build(local_worker_name("me")) is not None  # a's build, alive
        reaper = BuildReaper(store, worker_alive=local_worker_alive)
        assert await reaper.reap_once() == []
        states = [wl.derive_state(await store.workspace_facts(ws)) for ws in (a, b)]
        assert states == [wl.WorkspaceState.BUILDING] * 2

    async def test_stale_after_without_liveness(self, store: wl.Store) -> None:
        ws = await stopped(store)
        assert (await store.request_build(ws, Transition.START, expected_build_number=2)).fired
        assert await store.claim_build("far-away") is not None
        now = [100.0]
        reaper = BuildReaper(store, stale_after=10, clock=lambda: now[0])
        assert await reaper.reap_once() == []  # first seen now
        now[0] = 109.0
        assert await reaper.reap_once() == []
        now[0] = 110.5
        [reaped] = await reaper.reap_once()
        assert reaped.error == "provisioner worker far-away sent no result for 10s"

    async def test_scans_on_its_clock(self, store: wl.Store) -> None:
        """On a VirtualClock the scans and the staleness follow the clock, not real time."""
        ws = await stopped(store)
        assert (await store.request_build(ws, Transition.START, expected_build_number=2)).fired
        assert await store.claim_build("far-away") is not None
        clock = wl.VirtualClock()
        async with BuildReaper(store, stale_after=600, interval=30, clock=clock) as reaper:
            await anyio.sleep(0.05)  # the first scan: first seen now
            for _ in range(19):  # 570 s of scans: not stale yet
                clock.advance(30)
                await anyio.sleep(0.01)
            assert reaper.reaped == 0
            clock.advance(30)
            with anyio.fail_after(5):
                while not reaper.reaped:  # the reaper's finish_build is a write: it wakes us
                    head = await store.head()
                    if not reaper.reaped:
                        await store.wait_for_change(head)
        assert wl.derive_state(await store.workspace_facts(ws)) is wl.WorkspaceState.FAILED

    async def test_waiting_caller_answered_and_retry_fires_one_build(self, store: wl.Store) -> None:
        ws = await stopped(store)
        head = await store.head()
        async with wl.Lifecycle(store, build_timeout=10) as lc:
            answers: list[wl.ToolResult] = []
            answered = anyio.Event()

            async def start() -> None:
                answers.append(await lc.start_workspace("c1", owner=OWNER))
                answered.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(start)
                with anyio.fail_after(5):
                    while await store.claim_build("doomed") is None:
                        await store.wait_for_change(await store.head())
                async with BuildReaper(store, worker_alive=lambda w: w != "doomed", interval=0.02):
                    with anyio.fail_after(5):
                        await answered.wait()
            [failed] = answers
            assert failed.data["error"] == (
                "workspace start build failed: provisioner worker doomed stopped while running the build"
            )
            async with wl.SimulatedProvisioner(store, agent=None):
                retried = await lc.start_workspace("c1", owner=OWNER)
        starts = [
            e
            for e in await store.read_events(head)
            if e.kind is EventKind.BUILD_QUEUED and e.workspace_id == ws
        ]
        assert [e.build_id for e in starts] == [failed.data["build_id"], retried.data["build_id"]]
        assert retried.data["started"] is True


# --- SIGKILL, across processes -------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def crash_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crash.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@contextmanager
def processes() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def spawn(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        return proc

    try:
        yield spawn
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            assert proc.stdout is not None
            proc.stdout.close()


def line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    got: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert got and got[0], f"process {proc.args!r} said nothing (exit code {proc.poll()})"
    return got[0].strip()


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    FIGURES["crashes_survived"] += 1


def until(
    url: str, what: Callable[[wl.WorkspaceFacts], bool], ws: str, timeout: float = 30.0
) -> wl.WorkspaceFacts:
    async def wait() -> wl.WorkspaceFacts:
        async with wl.open_store(url) as store:
            with anyio.fail_after(timeout):
                while True:
                    cursor = await store.head()
                    facts = await store.workspace_facts(ws)
                    if what(facts):
                        return facts
                    with anyio.move_on_after(0.05):
                        await store.wait_for_change(cursor)

    return anyio.run(wait, backend="asyncio")


def start_builds(url: str, ws: str, after: int) -> list[tuple[str, JobStatus | None]]:
    """Every start build queued after ``after``, with its final status (None if unfinished)."""

    async def read() -> list[tuple[str, JobStatus | None]]:
        async with wl.open_store(url) as store:
            events = await store.read_events(after, limit=100_000)
        final = {e.build_id: e.status for e in events if e.kind is EventKind.BUILD_FINISHED}
        return [
            (e.build_id or "", final.get(e.build_id))
            for e in events
            if e.kind is EventKind.BUILD_QUEUED and e.workspace_id == ws and e.transition is Transition.START
        ]

    return anyio.run(read, backend="asyncio")


def setup(url: str) -> tuple[str, int]:
    async def run() -> tuple[str, int]:
        async with wl.open_store(url) as store:
            ws = await stopped(store)
            return ws, await store.head()

    return anyio.run(run, backend="asyncio")


def running(number: int) -> Callable[[wl.WorkspaceFacts], bool]:
    def check(facts: wl.WorkspaceFacts) -> bool:
        b = facts.latest_build
        return b is not None and b.number == number and b.status is JobStatus.RUNNING

    return check


@pytest.mark.slow
@pytest.mark.postgres
def test_runtime_killed_mid_build(pg_schema_url: str) -> None:
    """A runtime dies while its caller waits (its build running in a provisioner process); a new
    process's caller gets the same build. SQLite's twin is
    tests/test_sqlite_processes.py::test_sigkill_mid_wait_then_a_new_runtime_waits_for_the_same_build."""
    crash_url = pg_schema_url
    ws, head = setup(crash_url)
    with processes() as spawn:
        prov = spawn("provision", crash_url, "p", "1.0", "0")
        assert line(prov).startswith("ready")
        first = spawn("start", crash_url, "c1", OWNER)
        assert line(first) == "ready"
        build = until(crash_url, running(3), ws).latest_build
        assert build is not None
        kill(first)
        second = spawn("start", crash_url, "c1", OWNER)
        assert line(second) == "ready"
        answer = json.loads(line(second))
    assert answer["data"]["started"] is True and answer["data"]["build_id"] == build.build_id, answer
    assert start_builds(crash_url, ws, head) == [(build.build_id, JobStatus.SUCCEEDED)]
    FIGURES["crash_callers_answered"] += 1


@pytest.mark.slow
def test_provisioner_killed_mid_build(crash_url: str) -> None:
    """A provisioner dies holding a build; a reaper fails it, the waiting caller is answered,
    and the retried start fires exactly one new build, which another provisioner completes."""
    ws, head = setup(crash_url)
    with processes() as spawn:
        doomed = spawn("provision", crash_url, "doomed", "60", "0")
        _, worker = line(doomed).split()
        caller = spawn("start", crash_url, "c1", OWNER)
        assert line(caller) == "ready"
        build = until(crash_url, running(3), ws).latest_build
        assert build is not None and build.worker == worker
        kill(doomed)
        rescuer = spawn("provision", crash_url, "rescuer", "0.1", "1")
        assert line(rescuer).startswith("ready")
        failed = json.loads(line(caller))
        retry = spawn("start", crash_url, "c1", OWNER)
        assert line(retry) == "ready"
        started = json.loads(line(retry))
    assert failed["data"] == {
        "error": f"workspace start build failed: provisioner worker {worker} stopped while running the build",
        "build_id": build.build_id,
    }
    assert started["data"]["started"] is True, started
    assert start_builds(crash_url, ws, head) == [
        (build.build_id, JobStatus.FAILED),
        (started["data"]["build_id"], JobStatus.SUCCEEDED),
    ]
    FIGURES["crash_callers_answered"] += 2
