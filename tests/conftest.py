"""Shared fixtures: the anyio backends, and one ``store`` fixture over every adapter.

Each store runs on the backends it supports: the memory store on asyncio and trio, SQLite and
PostgreSQL on asyncio. PostgreSQL tests read ``WORKSPACE_LIFECYCLE_PG_URL`` (default: the local
server); when it is unreachable they skip, except under ``CI=true``, where that is a failure.

The suite runs in parallel (pytest-xdist, ``-n`` in pyproject's ``addopts``): every test keeps to
its own temporary directory, PostgreSQL schema and ports. The one test that restarts the
PostgreSQL server takes ``pg_exclusive``; every other test that reaches the server holds a shared
lock on the same file meanwhile (``pg_shared``), so no test meets the restart halfway.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import workspace_lifecycle as wl

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "large", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

PG_URL = os.environ.get("WORKSPACE_LIFECYCLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: (store kind, anyio backend) pairs every store test runs on.
STORE_BACKENDS = [
    pytest.param(("memory", "asyncio"), id="memory-asyncio"),
    pytest.param(("memory", "trio"), id="memory-trio"),
    pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
    pytest.param(("postgres", "asyncio"), id="postgres-asyncio", marks=pytest.mark.postgres),
]
#: PostgreSQL notifying by workspace shard (``?shards=4``): the suites that must hold in that
#: mode too add it to their ``store_backend`` (not every store test: it would double their time).
SHARDED_POSTGRES = pytest.param(
    ("postgres-shards", "asyncio"), id="postgres-shards-asyncio", marks=pytest.mark.postgres
)


def pg_available() -> bool:
    """True if the PostgreSQL server answers; under CI a missing server fails the run."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL at {PG_URL} is unreachable: {exc}")
        return False


@pytest.fixture(scope="session")
def pg_url() -> str:
    if not pg_available():
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable (set WORKSPACE_LIFECYCLE_PG_URL)")
    return PG_URL


@contextmanager
def _server_lock(mode: int) -> Iterator[None]:
    """``flock`` on a file named after the server (shared by every worker and every run on this
    machine): ``LOCK_SH`` to use the server, ``LOCK_EX`` to restart it. A turnstile taken first
    keeps new users out while a restart waits for the current ones (flock alone lets a stream of
    shared holders starve it)."""
    digest = hashlib.sha256(PG_URL.encode()).hexdigest()[:12]
    base = os.path.join(tempfile.gettempdir(), f"workspace-lifecycle-pg-{digest}")
    with open(f"{base}.turnstile", "a") as turnstile, open(f"{base}.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, mode)
        finally:
            if mode == fcntl.LOCK_SH:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.fixture
def pg_exclusive(pg_url: str) -> Iterator[str]:
    """The server to oneself (to restart it): waits until no other test is using it, and hands
    it back only once it answers again (whatever the test did to it)."""
    from pg_server import wait_until_answering

    with _server_lock(fcntl.LOCK_EX):
        yield pg_url
        wait_until_answering(pg_url, seconds=120, pause=0.2)


@pytest.fixture(autouse=True)
def pg_shared(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that reaches PostgreSQL (``postgres`` mark or a ``pg_url`` fixture) holds the
    server's shared lock from its first fixture to its last teardown."""
    uses_server = "pg_url" in request.fixturenames or request.node.get_closest_marker("postgres")
    if not uses_server or "pg_exclusive" in request.fixturenames:
        yield
        return
    with _server_lock(fcntl.LOCK_SH):
        yield


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """A URL of the test database with a fresh schema of its own, dropped afterwards."""
    import psycopg

    schema = f"wl_test_{uuid.uuid4().hex[:12]}"
    yield f"{pg_url}?schema={schema}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    kind, backend = request.param
    return kind, backend


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Tests that take ``store_backend`` run on that store's backend; others on asyncio."""
    if "store_backend" in request.fixturenames:
        return str(request.getfixturevalue("store_backend")[1])
    return "asyncio"


@pytest.fixture
def store_url(store_backend: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> str:
    kind = store_backend[0]
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = str(request.getfixturevalue("pg_schema_url"))
    return f"{url}&shards=4" if kind == "postgres-shards" else url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[wl.Store]:
    async with wl.open_store(store_url) as s:
        yield s


#: Tests that take seconds each (real processes, real sleeps, many Hypothesis histories), marked
#: ``slow`` here in one place besides the ``@pytest.mark.slow`` in their files: measured with
#: ``--durations`` (3 s and more on 2 cores). ``-m "not slow"`` leaves them out while working.
SLOW = (
    "tests/stores/test_bench_smoke.py::test_quick_mode",
    "tests/stores/test_postgres_replicas.py",
    "tests/stores/test_pool_races.py",
    "tests/stores/test_deadline_processes.py",
    "tests/stores/test_deferred_processes.py",
    "tests/runtime/test_deferred_histories.py",
    "tests/stores/test_hold_processes.py",
    "tests/stores/test_postgres_races.py::test_many_writers_on_many_workspaces_keep_the_log_whole",
    "tests/stores/test_postgres_resilience.py::test_cancelled_opens_and_closes_leak_no_connections",
    "tests/stores/test_store_kit.py::test_the_postgres_store_passes_on_a_fresh_schema",
    "tests/runtime/test_reliability_histories.py::test_",
    "tests/core/test_properties.py::TestHoldsMachine",
    "tests/runtime/test_history_invariants.py::test_histories_keep_unbound_workspaces_down_and_answers_true",
    "tests/docs/test_cli_readme.py::test_two_terminals_as_written",
    "tests/docs/test_docs_examples.py::test_example_runs",
    "tests/provisioners/test_provisioner_kit.py::test_the_simulated_provisioner_passes",
    "tests/provisioners/test_process_provisioner.py::test_it_passes_the_provisioner_kit",
    "tests/docs/test_mcp_docs.py",
    "tests/docs/test_cli_docs.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the ``SLOW`` tests, then order the run:

    1. the tests that restart PostgreSQL (``pg_exclusive``), at once: later, each waited for
       every test then holding the server (the longest take a minute on a loaded machine), and
       every other server test of every worker waited behind it;
    2. the slow tests that leave the server alone, which keep the other workers busy meanwhile;
    3. the slow server tests: spread over the workers from the start they overlap, where at the
       end one of them would keep the run waiting alone;
    4. the rest.
    """
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> int:
        fixtures = getattr(item, "fixturenames", ())
        if "pg_exclusive" in fixtures:
            return 0
        if not item.get_closest_marker("slow"):
            return 3
        return 2 if "pg_url" in fixtures or item.get_closest_marker("postgres") else 1

    items.sort(key=rank)
