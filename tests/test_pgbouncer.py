"""The PostgreSQL store behind a real PgBouncer (the Debian package, 1.18) in transaction pooling.

The test starts its own PgBouncer on a free port of 127.0.0.1 with a generated ini, in front of
the database of ``WORKSPACE_LIFECYCLE_PG_URL``; each test gets a PgBouncer database of its own
whose ``connect_query`` sets the search_path to the test's schema (added by a reload). Under
``CI=true`` a missing ``pgbouncer`` binary or PostgreSQL fails, never skips.

The store conformance suite runs here in both modes: ``listen`` (the pool through PgBouncer,
LISTEN on a direct connection) and ``poll`` (no LISTEN at all).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import anyio
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
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
from workspace_lifecycle.adapters.postgres import PostgresStore

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

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

#: The store's own default statement_timeout, which each database's connect_query sets.
STATEMENT_TIMEOUT_MS = 30_000


class Bouncer:
    """A PgBouncer process of this test run, in transaction pooling mode."""

    def __init__(self, pg_url: str, binary: str) -> None:
        self.target = conninfo_to_dict(pg_url)
        self.user = str(self.target.get("user", "postgres"))
        self.dir = Path(tempfile.mkdtemp(prefix="wl_pgbouncer_"))
        self.ini = self.dir / "pgbouncer.ini"
        self.log = self.dir / "pgbouncer.log"
        self.port = _free_port()
        self.databases: dict[str, str] = {}
        (self.dir / "users.txt").write_text(f'"{self.user}" ""\n')
        self.add("plain")  # no connect_query: what a store that says nothing meets
        argv = [binary, str(self.ini)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root: it switches user itself
            account = "postgres" if _user_exists("postgres") else "nobody"
            entry = pwd.getpwnam(account)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            argv[1:1] = ["-u", account]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.wait_for("plain")

    def _target(self) -> str:
        host = self.target.get("host", "127.0.0.1")
        port = self.target.get("port", "5432")
        return f"host={host} port={port} dbname={self.target.get('dbname', 'test')}"

    def _write(self) -> None:
        lines = ["[databases]", *(f"{name} = {spec}" for name, spec in self.databases.items())]
        lines += [
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir / 'users.txt'}",
            "pool_mode = transaction",
            "default_pool_size = 20",
            "max_client_conn = 500",
            f"logfile = {self.log}",
            f"pidfile = {self.dir / 'pgbouncer.pid'}",
        ]
        self.ini.write_text("\n".join(lines) + "\n")

    def add(self, name: str, connect_query: str | None = None) -> None:
        spec = self._target()
        if connect_query is not None:
            spec += f" connect_query='{connect_query}'"
        self.databases[name] = spec
        self._write()

    def url(self, name: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def wait_for(self, name: str) -> None:
        """Until PgBouncer serves database ``name`` (after a start or a reload)."""
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"PgBouncer exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with psycopg.connect(self.url(name), connect_timeout=2, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def database(self, schema: str) -> str:
        """A new PgBouncer database whose server connections use ``schema`` (its URL)."""
        name = f"db_{schema}"
        self.add(name, f"SET search_path TO {schema}; SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        self.proc.send_signal(signal.SIGHUP)  # reload the ini
        self.wait_for(name)
        return self.url(name)

    def log_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else "(no log)"

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: immediate shutdown
        self.proc.wait(timeout=10)
        with pytest.raises(ProcessLookupError):
            os.kill(self.proc.pid, 0)
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", self.port))
        shutil.rmtree(self.dir)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def bouncer(pg_url: str) -> Iterator[Bouncer]:
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the pgbouncer binary is missing (apt-get install pgbouncer)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    proc = Bouncer(pg_url, binary)
    yield proc
    proc.stop()


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    name = f"wl_pgb_{uuid.uuid4().hex[:12]}"
    yield name
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
            head = await waiter.head()
            woke: list[float] = []

            async def wait(cursor: int = head, woke: list[float] = woke) -> None:
                await waiter.wait_for_change(cursor)
                woke.append(time.monotonic())

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await anyio.sleep(0.3)  # asleep (and, polling, through at least one poll)
                assert not woke
                await writer.register_chat(f"c{i}", "alice")
                written = time.monotonic()
                await writer.create_workspace(f"c{i}", "dev", expected_workspace_id=None)
            assert await waiter.head() > head
            # Listening: a NOTIFY, long before the minute of the poll. Polling: the next poll.
            assert woke[0] - written < (5.0 if mode == "listen" else 0.2 + 2.0)
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
