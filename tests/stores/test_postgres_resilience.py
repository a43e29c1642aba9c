"""The PostgreSQL store under hostile conditions: a hung LISTEN backend, stray notifications,
cancelled opens and closes, and fast, clear errors at open for the URLs users write."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import anyio
import psycopg
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.adapters.postgres import PostgresStore

pytestmark = pytest.mark.postgres


def schema_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["schema"][0]


def base_of(url: str) -> str:
    return url.partition("?")[0]


async def make_workspace(store: wl.Store, chat: str) -> str:
    await store.register_chat(chat, "alice")
    return (await store.create_workspace(chat, "dev", expected_workspace_id=None)).facts.workspace_id


def backends(url: str, app: str) -> int:
    """How many server connections carry ``application_name = app``."""
    with psycopg.connect(base_of(url), autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def until_no_backends(url: str, app: str, seconds: float = 3.0) -> float:
    """Wait until no connection of ``app`` is left; return how long that took."""
    started = time.monotonic()
    with anyio.fail_after(seconds):
        while backends(url, app):  # noqa: ASYNC110 - the server's state, not this process's
            await anyio.sleep(0.05)
    return time.monotonic() - started


# --- a hung LISTEN connection -------------------------------------------------------------------


@pytest.mark.anyio
async def test_hung_listener_does_not_silence_the_replica(pg_schema_url: str) -> None:
    """The listener's backend stops answering (SIGSTOP: the socket stays open, nothing comes
    back): a commit by another store still wakes a waiter within a few poll intervals, because
    the fallback poll runs on the pool; the hung listener is then detected and replaced."""
    app = f"wl_hung_{uuid.uuid4().hex[:8]}"
    async with (
        wl.open_store(f"{pg_schema_url}&application_name={app}", poll_interval=0.2) as victim,
        wl.open_store(pg_schema_url) as other,
    ):
        assert isinstance(victim, PostgresStore)
        pid = victim.listener_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await anyio.sleep(0.3)  # the listener is stuck now
            head = await victim.head()
            woke = anyio.Event()

            async def waiter() -> None:
                await victim.wait_for_change(head)
                woke.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(0.05)
                await make_workspace(other, "c1")
                started = time.monotonic()
                with anyio.fail_after(3):
                    await woke.wait()
            assert time.monotonic() - started < 5 * victim.poll_interval
            with anyio.fail_after(12):  # the ping times out; psycopg gives up on the stuck query
                while victim.listener_connects < 2:  # noqa: ASYNC110 - set by the store's own task
                    await anyio.sleep(0.05)
            assert victim.listener_pid != pid
        finally:
            os.kill(pid, signal.SIGCONT)
        # The new listener works: a NOTIFY wakes the waiter long before the fallback poll would.
        victim.poll_interval = 60.0
        await anyio.sleep(0.3)  # the poller's current sleep ends; it now sleeps a minute
        head = await victim.head()
        async with anyio.create_task_group() as tg:
            tg.start_soon(victim.wait_for_change, head)
            await anyio.sleep(0.05)
            with anyio.fail_after(2):
                await make_workspace(other, "c2")


# --- stray notifications ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stray_notify_does_not_spin_an_idle_replica(pg_schema_url: str) -> None:
    """``NOTIFY channel, '99999999999'`` from anyone: an idle waiter keeps sleeping (the payload
    is only a hint, confirmed against the log), the stray payloads are counted, and a real commit
    still wakes the waiter at once."""
    async with wl.open_store(pg_schema_url, poll_interval=60) as store, wl.open_store(pg_schema_url) as other:
        assert isinstance(store, PostgresStore)
        await make_workspace(other, "c0")
        head = await store.head()
        wakes = 0
        got: list[wl.StoreEvent] = []

        async def runtime_like_follower() -> None:
            nonlocal wakes
            while not got:
                await store.wait_for_change(head)
                wakes += 1
                got.extend(await store.read_events(head))

        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime_like_follower)
            await anyio.sleep(0.05)
            with psycopg.connect(base_of(pg_schema_url), autocommit=True) as conn:
                channel = f"workspace_lifecycle_{schema_of(pg_schema_url)}"
                for payload in ("99999999999", "hello", "", "-1", "1e9"):
                    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))
            await anyio.sleep(1.0)
            assert wakes <= 1, f"{wakes} wake-ups in 1 s of an idle log"
            assert store.stray_notifications == 5
            started = time.monotonic()
            await make_workspace(other, "c1")
            with anyio.fail_after(2):
                while not got:  # noqa: ASYNC110 - the follower task fills it
                    await anyio.sleep(0.01)
            assert time.monotonic() - started < 1.0
        assert [e.kind.value for e in got] == ["chat_bound", "build_queued"]


# --- cancelled opens and closes -----------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_opens_and_closes_leak_no_connections(pg_schema_url: str) -> None:
    """A hundred opens cancelled at random points (while connecting, migrating, opening the pool,
    or once open), then cancelled closes: every server connection is gone within a second or two."""
    app = f"wl_cancel_{uuid.uuid4().hex[:8]}"
    url = f"{pg_schema_url}&application_name={app}"
    async with wl.open_store(url):  # migrate once, so later opens are quick and cancellable anywhere
        pass
    started = time.monotonic()
    async with wl.open_store(url):
        pass
    open_seconds = time.monotonic() - started
    rng = random.Random(11)
    opened = 0
    for _ in range(100):
        with anyio.move_on_after(rng.uniform(0, 1.5 * open_seconds)):
            async with wl.open_store(url):
                opened += 1
                await anyio.sleep(1)  # cancelled here: __aexit__ closes inside a cancelled scope
    assert 0 < opened < 100  # cancellations hit both the opening and the open store
    for _ in range(20):
        store = wl.open_store(url)
        await store.open()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await store.aclose()  # a close in a cancelled scope still completes
        with pytest.raises(wl.StoreClosedError):
            await store.head()
    assert await until_no_backends(url, app) < 2.0


# --- fast, clear errors at open -----------------------------------------------------------------


@pytest.mark.anyio
async def test_refused_connection_fails_fast_with_one_sentence(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on the port: a StoreUnavailableError naming the cause in well under five
    seconds, and no retry warnings before it."""
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(wl.StoreUnavailableError) as caught:
        async with wl.open_store("postgresql://postgres@127.0.0.1:1/test"):
            pass
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/test" in message
    assert "refused" in message and "\n" not in message
    assert not [r for r in caplog.records if r.name.startswith("psycopg")], caplog.records


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "cause"),
    [("", 'database "wl_no_such_database" does not exist'), ("?sslmode=bogus", "sslmode")],
)
async def test_missing_database_or_bad_parameter_fails_fast(pg_url: str, query: str, cause: str) -> None:
    """The server answers but refuses (no such database), or libpq refuses a parameter value:
    a StoreError (not transient: retrying will not help) naming the cause, at once."""
    url = f"{pg_url.rpartition('/')[0]}/wl_no_such_database{query}"
    started = time.monotonic()
    with pytest.raises(wl.StoreError, match=cause) as caught:
        async with wl.open_store(url):
            pass
    assert time.monotonic() - started < 5
    assert not isinstance(caught.value, wl.TransientStoreError)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("postgresql://h/db?bogus=1", "bogus"),
        ("postgresql://h:notaport/db", "port"),
        ("postgresql+asyncpg://h/db", r"\+psycopg, \+psycopg2"),
        ("postgres+pg8000://h/db", r"\+psycopg, \+psycopg2"),
    ],
)
def test_malformed_url_is_a_value_error_at_once(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wl.open_store(url)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "form",
    [
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
        "postgresql+psycopg2://postgres@127.0.0.1:5432/test",
        "postgresql:///test?host=/var/run/postgresql&user=postgres",
        "postgresql://postgres@%2Fvar%2Frun%2Fpostgresql/test",
    ],
)
async def test_url_forms_users_write(pg_schema_url: str, form: str) -> None:
    """SQLAlchemy's driver suffixes and libpq's Unix-socket forms open the same database."""
    socket = "%2F" in form or "host=/" in form
    if socket and not await anyio.Path("/var/run/postgresql").is_dir():
        pytest.skip("no local Unix socket directory")
    schema = schema_of(pg_schema_url)
    url = f"{form}{'&' if '?' in form else '?'}schema={schema}"
    async with wl.open_store(pg_schema_url) as reference, wl.open_store(url) as store:
        await make_workspace(store, "c1")
        assert (await reference.get_chat("c1")) is not None
        assert "+" not in form or store.url.startswith(form.partition("://")[0])
