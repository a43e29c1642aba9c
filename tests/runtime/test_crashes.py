"""Crashes: SIGKILL of a runtime and of a provisioner mid-build, on SQLite and PostgreSQL; the
lease of a killed provisioner runs out and its build is failed once (leases on every store, in
process: tests/stores/test_leases.py).

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

WORKER = Path(__file__).parents[1] / "helpers" / "crash_worker.py"
OWNER = "alice"


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    flush()


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


def finishes(url: str, build_id: str, after: int) -> int:
    """How many ``build_finished`` events ``build_id`` has after ``after``."""

    async def read() -> int:
        async with wl.open_store(url) as store:
            events = await store.read_events(after, limit=100_000)
        return sum(1 for e in events if e.kind is EventKind.BUILD_FINISHED and e.build_id == build_id)

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
    tests/stores/test_sqlite_processes.py::test_sigkill_mid_wait_then_a_new_runtime_waits_for_the_same_build."""
    crash_url = pg_schema_url
    ws, head = setup(crash_url)
    with processes() as spawn:
        # 4 s: the second runtime (a fresh interpreter) must be waiting before the build ends,
        # which 1 s did not leave it on a loaded 2-core machine
        prov = spawn("provision", crash_url, "p", "4.0", "30")
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
    """A provisioner is SIGKILLed holding a build under a 1 s lease; the lease runs out, another
    provisioner's reaper fails the build once, the waiting caller is answered, and the retried
    start fires exactly one new build, which the other provisioner completes."""
    ws, head = setup(crash_url)
    with processes() as spawn:
        doomed = spawn("provision", crash_url, "doomed", "60", "1.0")
        _, worker = line(doomed).split()
        caller = spawn("start", crash_url, "c1", OWNER)
        assert line(caller) == "ready"
        build = until(crash_url, running(3), ws).latest_build
        assert build is not None and build.worker == worker
        kill(doomed)
        rescuer = spawn("provision", crash_url, "rescuer", "0.1", "30")
        assert line(rescuer).startswith("ready")
        failed = json.loads(line(caller))
        retry = spawn("start", crash_url, "c1", OWNER)
        assert line(retry) == "ready"
        started = json.loads(line(retry))
    assert failed["data"] == {
        "error": (
            f"workspace start build failed: provisioner worker {worker} lost its lease on the build:"
            " it sent no heartbeat before the lease ran out"
        ),
        "build_id": build.build_id,
    }
    assert started["data"]["started"] is True, started
    assert start_builds(crash_url, ws, head) == [
        (build.build_id, JobStatus.FAILED),
        (started["data"]["build_id"], JobStatus.SUCCEEDED),
    ]
    assert finishes(crash_url, build.build_id, head) == 1  # failed once, by one of the reapers
    FIGURES["crash_callers_answered"] += 2
