"""A frozen PostgreSQL backend (SIGSTOP: a paused VM, a network black hole whose kernel still
acknowledges) must not hold a caller past its own timeout: every store call is bounded by the
caller's cancel scope and by the client's ``client_timeout``, the interrupted connection is
discarded, nothing is left half-written, and the store works again once the backend resumes.

Each test freezes only the backends of its own store (found by ``application_name`` in
``pg_stat_activity``), never the server; a watchdog process resumes them should the test
process die before its ``finally``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import psycopg
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.adapters.postgres import PostgresStore
from workspace_lifecycle.values import EventKind, JobStatus, Transition

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

#: What a call may take beyond its caller's timeout: the grace of a statement under way
#: (CANCEL_GRACE, 0.25 s), and the scheduler of a busy 2-core machine.
MARGIN = 0.75


def backend_pids(url: str, app: str) -> list[int]:
    """The server processes of every connection named ``app`` (the pool's and the listener's)."""
    with psycopg.connect(url.partition("?")[0], autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app,),
        ).fetchall()
    return [int(row[0]) for row in rows]


@contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP ``pids`` for the block; SIGCONT them after it, or from a watchdog in 30 s."""
    assert pids
    watchdog = subprocess.Popen(
        ["sh", "-c", f"sleep 30; kill -CONT {' '.join(map(str, pids))}"], start_new_session=True
    )
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        watchdog.kill()
        watchdog.wait()


def app_url(pg_schema_url: str) -> tuple[str, str]:
    app = f"wl_frozen_{uuid.uuid4().hex[:8]}"
    return f"{pg_schema_url}&application_name={app}&pool_max_size=1", app


async def make_workspace(store: wl.Store, chat: str) -> str:
    """A workspace whose first build (its start) finished: the next build may be requested."""
    await store.register_chat(chat, "alice")
    ws = (await store.create_workspace(chat, "dev", expected_workspace_id=None)).facts.workspace_id
    build = await store.claim_build("setup")
    assert build is not None
    await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
    return ws


async def latest_number(store: wl.Store, ws: str) -> int:
    latest = (await store.workspace_facts(ws)).latest_build
    return 0 if latest is None else latest.number


async def test_a_read_on_a_frozen_backend_ends_at_the_callers_timeout(pg_schema_url: str) -> None:
    """The pool's one backend is frozen: ``workspace_facts`` under ``move_on_after(1)`` returns
    (cancelled) within the second plus a margin, instead of when the backend resumes; after
    SIGCONT the store reads and writes again, on a fresh connection."""
    url, app = app_url(pg_schema_url)
    async with wl.open_store(url, statement_timeout=30) as store:
        assert isinstance(store, PostgresStore)
        ws = await make_workspace(store, "c1")
        pool_pids = [p for p in backend_pids(url, app) if p != store.listener_pid]
        with frozen(pool_pids):
            started = time.monotonic()
            with anyio.move_on_after(1) as scope:
                await store.workspace_facts(ws)
            took = time.monotonic() - started
        assert scope.cancelled_caught
        assert took < 1 + MARGIN, took
        with anyio.fail_after(5):
            assert (await store.workspace_facts(ws)).workspace_id == ws
            outcome = await store.request_build(ws, Transition.STOP, expected_build_number=1)
        assert outcome.fired
        assert pool_pids[0] not in backend_pids(url, app)  # the interrupted connection is gone


async def test_a_write_cut_by_the_deadline_is_whole_or_absent(pg_schema_url: str) -> None:
    """A build request whose backend freezes is cut by the caller's timeout; once the backend
    resumes, the build is either there with its event or absent with none (never a row
    without its event), and the next request decides on what is there: refused while that
    build is queued, taken when there is none."""
    url, app = app_url(pg_schema_url)
    async with wl.open_store(url) as store:
        assert isinstance(store, PostgresStore)
        ws = await make_workspace(store, "c1")
        before = await latest_number(store, ws)
        head = await store.head()
        pool_pids = [p for p in backend_pids(url, app) if p != store.listener_pid]
        with frozen(pool_pids):
            started = time.monotonic()
            with anyio.move_on_after(0.5) as scope:
                await store.request_build(ws, Transition.STOP, expected_build_number=before)
            took = time.monotonic() - started
        assert scope.cancelled_caught and took < 0.5 + MARGIN, took
        await anyio.sleep(0.2)  # the resumed backend finishes (or rolls back) what it had
        async with wl.open_store(pg_schema_url) as check:
            latest = await latest_number(check, ws)
            queued = [e for e in await check.read_events(head) if e.kind is EventKind.BUILD_QUEUED]
        assert latest in (before, before + 1)
        assert [e.build_number for e in queued] == ([] if latest == before else [latest])
        with anyio.fail_after(5):  # a build still queued refuses the next; none queued takes it
            outcome = await store.request_build(ws, Transition.STOP, expected_build_number=latest)
        assert outcome.fired is (latest == before)


async def test_client_timeout_bounds_a_caller_without_a_timeout(pg_schema_url: str) -> None:
    """A caller with no deadline of its own: the client's ``client_timeout`` ends the call with
    one clear ``StoreUnavailableError``, the frozen connection discarded."""
    url, app = app_url(pg_schema_url)
    async with wl.open_store(url, client_timeout=0.8) as store:
        assert isinstance(store, PostgresStore) and store.client_timeout == 0.8
        ws = await make_workspace(store, "c1")
        pool_pids = [p for p in backend_pids(url, app) if p != store.listener_pid]
        with frozen(pool_pids):
            started = time.monotonic()
            with pytest.raises(wl.StoreUnavailableError, match=r"client_timeout=0\.8s"):
                await store.workspace_facts(ws)
            took = time.monotonic() - started
        assert 0.8 <= took < 0.8 + MARGIN, took
        with anyio.fail_after(5):
            assert (await store.workspace_facts(ws)).workspace_id == ws


async def test_status_on_a_frozen_replica_keeps_the_callers_timeout(pg_schema_url: str) -> None:
    """The issue's attack: every backend of a replica (its pool and its LISTEN connection)
    frozen, ``Lifecycle.status`` under ``move_on_after`` returns by the timeout; resumed, the
    replica answers again."""
    url, app = app_url(pg_schema_url)
    async with wl.open_store(url, poll_interval=0.2) as store, wl.Lifecycle(store) as lc:
        await make_workspace(store, "c1")
        assert not (await lc.status("c1", owner="alice")).is_error
        with frozen(backend_pids(url, app)):
            started = time.monotonic()
            with anyio.move_on_after(1) as scope:
                await lc.status("c1", owner="alice")
            took = time.monotonic() - started
        assert scope.cancelled_caught and took < 1 + MARGIN, took
        with anyio.fail_after(5):
            assert not (await lc.status("c1", owner="alice")).is_error
