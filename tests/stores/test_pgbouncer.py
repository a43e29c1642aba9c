"""The PostgreSQL store behind a real PgBouncer (the Debian package, 1.18) in transaction pooling.

The module starts its own PgBouncer (:mod:`bench.pgbouncer`: a free port of 127.0.0.1, a
generated ini) in front of the database of ``WORKSPACE_LIFECYCLE_PG_URL``, and checks that it is
gone at the end; each test gets a PgBouncer database of its own whose ``connect_query`` sets the
search_path to the test's schema (added by a reload). Under
``CI=true`` a missing ``pgbouncer`` binary or PostgreSQL fails, never skips.

The store conformance suite runs here in both modes: ``listen`` (the pool through PgBouncer,
LISTEN on a direct connection) and ``poll`` (no LISTEN at all).
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import anyio
import psycopg
import pytest
from test_store_conformance import (
    TestChats,
    TestClosed,
    TestCreate,
    TestEventLog,
    TestPostgresChatBinding,
    TestProvisionerSide,
    TestRequestBuild,
    TestRequestsAsData,
    TestStringValues,
)

import workspace_lifecycle as wl
from bench import pgbouncer
from bench.pgbouncer import Bouncer
from workspace_lifecycle.adapters.postgres import PostgresStore

# One PgBouncer for the module: `--dist loadgroup` keeps its tests on one xdist worker where
# pytest's node ids still take xdist's group suffix (not on pytest 9.2: pytest-xdist#1386);
# there, each worker that runs some of them starts a PgBouncer of its own, on a port of its own.
pytestmark = [pytest.mark.postgres, pytest.mark.anyio, pytest.mark.xdist_group("pgbouncer")]

__all__ = [  # the conformance suite, collected again here against PgBouncer
    "TestChats",
    "TestClosed",
    "TestCreate",
    "TestEventLog",
    "TestPostgresChatBinding",
    "TestProvisionerSide",
    "TestRequestBuild",
    "TestRequestsAsData",
    "TestStringValues",
]


@pytest.fixture(scope="module")
def bouncer(pg_url: str) -> Iterator[Bouncer]:
    executable = pgbouncer.binary()
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the pgbouncer binary is missing (apt-get install pgbouncer)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    proc = Bouncer(pg_url, executable)
    yield proc
    proc.stop()
    with pytest.raises(ProcessLookupError):  # the process is gone, and so is its port
        os.kill(proc.proc.pid, 0)
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect(("127.0.0.1", proc.port))


@pytest.fixture
def schema(pg_url: str, bouncer: Bouncer) -> Iterator[str]:
    name = f"wl_pgb_{uuid.uuid4().hex[:12]}"
    yield name
    try:
        bouncer.release()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _mode_url(bouncer: Bouncer, schema: str, mode: str, pg_url: str) -> str:
    """The URL of a store behind ``bouncer`` in ``mode``: ``listen`` or ``poll``."""
    listen = "none" if mode == "poll" else quote(pg_url, safe="")
    return f"{bouncer.database(schema)}?schema={schema}&pool_mode=transaction&listen_url={listen}"


# --- the conformance suite, in both modes ---------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param(("listen", "asyncio"), id="pgbouncer-listen"),
        pytest.param(("poll", "asyncio"), id="pgbouncer-poll"),
    ]
)
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    mode, backend = request.param
    return mode, backend


@pytest.fixture
def store_url(store_backend: tuple[str, str], bouncer: Bouncer, schema: str, pg_url: str) -> str:
    return _mode_url(bouncer, schema, store_backend[0], pg_url)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[wl.Store]:
    async with wl.open_store(store_url) as s:
        assert isinstance(s, PostgresStore) and s.pool_mode == "transaction"
        yield s


# --- wake-ups across replicas ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["listen", "poll"])
async def test_a_replica_wakes_on_another_replicas_write(
    bouncer: Bouncer, schema: str, pg_url: str, mode: str
) -> None:
    """Two replicas (two stores, each with its own connections) behind PgBouncer: one sleeps
    in wait_for_change, the other writes through PgBouncer, and the sleeper wakes. Listening, the
    fallback poll is a minute away, so only the NOTIFY on the direct connection can wake it;
    polling, the poll every 0.2 s does."""
    url = _mode_url(bouncer, schema, mode, pg_url)
    poll_interval = 60.0 if mode == "listen" else 0.2
    async with (
        wl.open_store(url, poll_interval=poll_interval) as waiter,
        wl.open_store(url, poll_interval=poll_interval) as writer,
    ):
        assert isinstance(waiter, PostgresStore)
        assert waiter.listens is (mode == "listen")
        for i in range(3):
            await writer.register_chat(f"c{i}", "alice")  # no event: wakes nobody
            create = functools.partial(writer.create_workspace, f"c{i}", "dev", expected_workspace_id=None)
            # Asleep 0.3 s first (polling: through at least one poll that found nothing).
            latency = await pgbouncer.wake_up(waiter, create, 0.3)
            # Listening: a NOTIFY, long before the minute of the poll. Polling: the next poll.
            assert latency < (5.0 if mode == "listen" else 0.2 + 2.0)
        if mode == "listen":
            assert waiter.listener_wakeups >= 3 and waiter.polls == 0
        else:
            assert waiter.listener_pid is None and waiter.polls >= 3


async def test_poll_only_store_polls_only_while_someone_waits(
    bouncer: Bouncer, schema: str, pg_url: str
) -> None:
    """Without LISTEN the store reads the head every poll_interval while a task waits, and not
    once while nobody does; a write of its own wakes its waiters at once, without a poll."""
    url = _mode_url(bouncer, schema, "poll", pg_url)
    async with wl.open_store(url, poll_interval=0.05) as store:
        assert isinstance(store, PostgresStore)
        await store.register_chat("c", "alice")
        await anyio.sleep(0.3)  # six intervals, nobody waiting
        assert store.polls == 0
        head = await store.head()
        with anyio.move_on_after(0.3):
            await store.wait_for_change(head)
        assert store.polls >= 2  # polled while it waited (nothing new: it stayed asleep)
        polls = store.polls
        await anyio.sleep(0.3)
        assert store.polls == polls  # and stopped with the waiter

        async with anyio.create_task_group() as tg:
            tg.start_soon(store.wait_for_change, head)
            await anyio.wait_all_tasks_blocked()
            await store.create_workspace("c", "dev", expected_workspace_id=None)
        assert store.polls <= polls + 1  # woken by its own commit, not by waiting for a poll


# --- what a store that does not say it is behind PgBouncer meets ----------------------------


async def test_a_plain_store_behind_pgbouncer_is_refused_at_open(
    bouncer: Bouncer, schema: str, pg_url: str
) -> None:
    """A store given the PgBouncer URL without pool_mode would lose its search_path, its
    prepared statements and its notifications between transactions: it fails at open with a
    clear error, having created nothing and left no session setting on PgBouncer's server
    connections."""
    url = f"{bouncer.url('plain')}?schema={schema}"
    with pytest.raises(wl.StoreError, match="through a connection pooler such as PgBouncer") as info:
        async with wl.open_store(url):
            pass
    assert "pool_mode=transaction" in str(info.value) and "listen_url" in str(info.value)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None
    with psycopg.connect(bouncer.url("plain"), prepare_threshold=None) as conn:
        for _ in range(5):  # whichever server connection answers, it has the server's defaults
            row = conn.execute("SELECT current_setting('search_path')").fetchone()
            assert row is not None and schema not in row[0]


async def test_listen_url_through_pgbouncer_is_refused(bouncer: Bouncer, schema: str) -> None:
    """LISTEN through transaction pooling would go quiet: a listen_url that reaches a pooler
    fails at open."""
    url = bouncer.database(schema)
    listen = quote(bouncer.url("plain"), safe="")
    with pytest.raises(wl.StoreError, match="listen_url must reach PostgreSQL directly"):
        async with wl.open_store(f"{url}?schema={schema}&pool_mode=transaction&listen_url={listen}"):
            pass


async def test_listen_url_of_another_database_is_refused(bouncer: Bouncer, schema: str, pg_url: str) -> None:
    """A NOTIFY reaches only listeners of its own database: a listen_url of another one fails
    at open, having migrated nothing there (the store's URL migrates)."""
    other = pg_url.rpartition("/")[0] + "/postgres"
    url = (
        f"{bouncer.database(schema)}?schema={schema}&pool_mode=transaction&listen_url={quote(other, safe='')}"
    )
    with pytest.raises(
        wl.StoreError, match="listen_url reaches database 'postgres', but the store's URL reaches"
    ):
        async with wl.open_store(url):
            pass
    with psycopg.connect(other) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None
    with psycopg.connect(pg_url) as conn:  # migrated where the store's data lives
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


async def test_server_settings_are_checked_not_set(bouncer: Bouncer, schema: str) -> None:
    """Behind transaction pooling the store sets no session state: a PgBouncer database whose
    server connections do not use the store's schema, or another statement_timeout, is refused
    at open with what to configure; statement_timeout=0 keeps the server's."""
    plain = f"{bouncer.url('plain')}?schema={schema}&pool_mode=transaction&listen_url=none"
    with pytest.raises(
        wl.StoreError, match=f"connect_query.*search_path to {schema}|search_path to {schema}"
    ):
        async with wl.open_store(plain):
            pass
    url = f"{bouncer.database(schema)}?schema={schema}&pool_mode=transaction&listen_url=none"
    with pytest.raises(wl.StoreError, match="the server's is 30000 ms"):
        async with wl.open_store(url, statement_timeout=5):
            pass
    async with wl.open_store(url, statement_timeout=0) as store:
        assert isinstance(store, PostgresStore) and store.statement_timeout is None
        await store.register_chat("c", "alice")
