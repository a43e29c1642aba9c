"""Shutting down under cancellation (reported bugs).

* When a :class:`wl.Lifecycle`'s ``async with`` ends, callers still waiting on it from an outer
  task group are woken at once with :class:`wl.StoreClosedError` ("the Lifecycle was closed"),
  instead of sleeping until ``build_timeout``.
* ``async with open_store(...)`` left under a cancel scope (a timeout, a task group's cancel)
  still releases everything it opened: SQLite's connection thread and file descriptors,
  PostgreSQL's server connections. Otherwise a SQLite store's non-daemon thread keeps the
  interpreter from exiting.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import attrs
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, WorkspaceState

OWNER = "alice"
CHAT = "c1"

CLOSED = r"(?i)Lifecycle .*closed"


# --- 5. callers waiting on a Lifecycle that closes ------------------------------------------------


@attrs.define
class Waiter:
    result: wl.ToolResult | None = None
    error: BaseException | None = None
    done: anyio.Event = attrs.Factory(anyio.Event)


async def _wait_on(waiter: Waiter, fn: Callable[[], Awaitable[wl.ToolResult]]) -> None:
    try:
        waiter.result = await fn()
    except Exception as exc:
        waiter.error = exc
    finally:
        waiter.done.set()


async def _stopped(store: wl.Store) -> None:
    await store.register_chat(CHAT, OWNER)
    ws = (await store.create_workspace(CHAT, "dev", expected_workspace_id=None)).facts.workspace_id
    build = await store.claim_build("setup")
    assert build is not None
    await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
    assert (await store.request_build(ws, wl.Transition.STOP, expected_build_number=1)).fired
    build = await store.claim_build("setup")
    assert build is not None
    await store.finish_build(build.build_id, JobStatus.SUCCEEDED)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_closing_the_lifecycle_wakes_a_caller_waiting_for_a_build() -> None:
    """A start_workspace from an outer task group waits for a build nobody will claim; the
    Lifecycle closes. The caller is woken at once (not after build_timeout=600) with
    StoreClosedError saying the Lifecycle was closed."""
    async with wl.open_store("memory://") as store:
        await _stopped(store)
        waiter = Waiter()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as outer:
                async with wl.Lifecycle(store, build_timeout=600, agent_timeout=600) as lc:
                    outer.start_soon(_wait_on, waiter, lambda: lc.start_workspace(CHAT, owner=OWNER))
                    await anyio.wait_all_tasks_blocked()
                    assert not waiter.done.is_set()
                    assert await lc.state(CHAT) is WorkspaceState.BUILDING  # its build is pending
                await waiter.done.wait()
        assert waiter.result is None, f"answered as if the build had been awaited: {waiter.result}"
        assert isinstance(waiter.error, wl.StoreClosedError), repr(waiter.error)
        assert waiter.error is not None
        import re

        assert re.search(CLOSED, str(waiter.error)), str(waiter.error)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_closing_the_lifecycle_wakes_a_caller_waiting_for_the_agent() -> None:
    """The same while the caller waits for the agent (agent_timeout=600)."""
    async with wl.open_store("memory://") as store:
        await _stopped(store)
        waiter = Waiter()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as outer:
                async with wl.Lifecycle(store, build_timeout=600, agent_timeout=600) as lc:
                    outer.start_soon(_wait_on, waiter, lambda: lc.start_workspace(CHAT, owner=OWNER))
                    await anyio.wait_all_tasks_blocked()
                    build = await store.claim_build("w")
                    assert build is not None
                    await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
                    await anyio.wait_all_tasks_blocked()
                    assert not waiter.done.is_set()  # waiting for the agent to leave "created"
                await waiter.done.wait()
        assert isinstance(waiter.error, wl.StoreClosedError), (waiter.error, waiter.result)
        import re

        assert re.search(CLOSED, str(waiter.error)), str(waiter.error)


# --- 6. open_store left under a cancel scope --------------------------------------------------------


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settled(baseline: tuple[int, int], slack: int = 2, within: float = 5.0) -> tuple[int, int]:
    """Threads and fds now, after giving closing threads up to ``within`` seconds to end."""
    deadline = time.monotonic() + within
    while True:
        gc.collect()
        now = (threading.active_count(), _fds())
        if (now[0] <= baseline[0] + slack and now[1] <= baseline[1] + slack) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


async def _waiting(store: wl.Store, tg: anyio.abc.TaskGroup) -> None:
    """Somebody waits for the store's next change (as a Lifecycle's pump does), which starts
    the SQLite store's cross-process watcher."""
    tg.start_soon(store.wait_for_change, await store.head())
    await anyio.wait_all_tasks_blocked()


async def _release_leaked(stores: list[wl.Store], threads: int) -> None:
    """After a failure only: stop the connection threads the stores failed to stop, so that the
    test run itself can still exit (they are not daemon threads); give them a few seconds, with
    the event loop still running for their last callbacks."""
    with anyio.CancelScope(shield=True):
        for store in stores:
            conn = getattr(store, "_conn", None)
            if conn is not None:
                conn.stop()
        for _ in range(50):
            if threading.active_count() <= threads:
                return
            await anyio.sleep(0.1)


async def _cancelled_sqlite_round(url: str, i: int, rng: random.Random, stores: list[wl.Store]) -> None:
    def open_store() -> wl.Store:
        store = wl.open_store(url)
        stores.append(store)
        return store

    mode = i % 4
    if mode == 0:  # cancelled before open reaches its first checkpoint
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with open_store():
                pass
    elif mode == 1:  # a timeout somewhere during open (or right after it, while in use)
        with anyio.move_on_after(rng.uniform(0, 0.004)):
            async with open_store() as store, anyio.create_task_group() as tg:
                await _waiting(store, tg)
                await anyio.sleep_forever()
    elif mode == 2:  # a timeout during writes, with a waiter
        with anyio.move_on_after(rng.uniform(0.001, 0.01)):
            async with open_store() as store, anyio.create_task_group() as tg:
                await _waiting(store, tg)
                n = 0
                while True:
                    n += 1
                    await store.register_chat(f"c{i}-{n}", OWNER)
    else:  # cancelled at aclose: the scope is cancelled as the block ends
        with anyio.CancelScope() as scope:
            async with open_store() as store, anyio.create_task_group() as tg:
                await _waiting(store, tg)
                scope.cancel()


@pytest.mark.anyio
async def test_cancelled_sqlite_opens_and_closes_leak_nothing(tmp_path: Path) -> None:
    """~200 `async with open_store("sqlite:…")` cancelled during open, during writes and at
    aclose: threads and open fds come back to where they were (slack 2)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with wl.open_store(url) as store:  # the schema, once
        await store.head()
    gc.collect()
    baseline = (threading.active_count(), _fds())
    rng = random.Random(1234)
    stores: list[wl.Store] = []
    try:
        for i in range(200):
            await _cancelled_sqlite_round(url, i, rng, stores)
        threads, fds = _settled(baseline)
    except BaseException:
        await _release_leaked(stores, baseline[0])
        raise
    if threads > baseline[0] + 2 or fds > baseline[1] + 2:
        await _release_leaked(stores, baseline[0])
    leaked = (threads - baseline[0], fds - baseline[1])
    assert threads <= baseline[0] + 2 and fds <= baseline[1] + 2, (
        f"cancelled SQLite stores leaked {leaked[0]} threads and {leaked[1]} file descriptors"
    )


def test_interpreter_exits_after_cancelled_sqlite_closes(tmp_path: Path) -> None:
    """A process that left 20 SQLite stores under a cancelled scope still exits (no stray
    non-daemon connection thread)."""
    script = textwrap.dedent(
        """
        import sys
        import anyio
        import workspace_lifecycle as wl

        async def main(url):
            for _ in range(20):
                with anyio.CancelScope() as scope:
                    async with wl.open_store(url) as store, anyio.create_task_group() as tg:
                        tg.start_soon(store.wait_for_change, await store.head())
                        await anyio.wait_all_tasks_blocked()
                        scope.cancel()
            print("done", flush=True)

        anyio.run(main, sys.argv[1])
        """
    )
    url = f"sqlite:///{tmp_path / 'exit.db'}"
    try:
        proc = subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"the interpreter did not exit within 20 s after cancelled closes (stdout {exc.stdout!r})"
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"


def _pg_connections(pg_url: str, application_name: str) -> int:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'test' AND application_name = %s",
            (application_name,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _terminate(pg_url: str, application_name: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        )


@pytest.mark.postgres
@pytest.mark.anyio
async def test_cancelled_postgres_opens_leak_no_server_connections(pg_url: str, pg_schema_url: str) -> None:
    """~100 open_store("postgresql://…") cancelled while opening leave no server connection
    behind (counted by a unique application_name)."""
    name = f"wl-leak-{uuid.uuid4().hex[:10]}"
    url = f"{pg_schema_url}&application_name={name}"
    async with wl.open_store(url) as store:  # the schema, once; and the name reaches the server
        assert _pg_connections(pg_url, name) >= 1
        await store.head()
    before = _pg_connections(pg_url, name)
    rng = random.Random(99)
    for i in range(100):
        if i % 5 == 0:
            with anyio.CancelScope() as scope:
                scope.cancel()
                async with wl.open_store(url):
                    pass
        else:
            with anyio.move_on_after(rng.uniform(0, 0.05)):
                async with wl.open_store(url):
                    await anyio.sleep_forever()
    for _ in range(30):  # closed server connections take a moment to leave pg_stat_activity
        left = _pg_connections(pg_url, name)
        if left <= before:
            break
        await anyio.sleep(0.1)
    if left > before:
        _terminate(pg_url, name)  # leave the shared server as we found it
    assert left <= before, f"{left - before} PostgreSQL connections leaked by cancelled opens"
