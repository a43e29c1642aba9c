"""The PostgreSQL store beyond the conformance suite: commit order, migrations, wake-ups, faults."""

from __future__ import annotations

import random
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import anyio
import psycopg
import pytest
from pg_server import wait_until_answering

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, Transition
from workspace_lifecycle.adapters.postgres import SCHEMA_VERSION, PostgresStore, UnsupportedBackendError

pytestmark = pytest.mark.postgres


def schema_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["schema"][0]


def base_of(url: str) -> str:
    return url.partition("?")[0]


def pg(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A raw autocommit connection whose search_path is the URL's schema."""
    conn = psycopg.connect(base_of(url), autocommit=True)
    conn.execute("SELECT set_config('search_path', %s, false)", (f'"{schema_of(url)}"',))
    return conn


async def make_workspace(store: wl.Store, chat: str) -> str:
    await store.register_chat(chat, "alice")
    return (await store.create_workspace(chat, "dev", expected_workspace_id=None)).facts.workspace_id


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    """Poll ``check`` until it holds (for conditions another store or process changes)."""
    with anyio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 - the condition lives outside this process
            await anyio.sleep(0.01)


async def follow(store: wl.Store, seen: list[int], stop: anyio.Event) -> None:
    """A reader that trusts ``seq > cursor``: whatever it skips is lost for good."""
    cursor = 0
    while not stop.is_set():
        for event in await store.read_events(cursor):
            seen.append(event.seq)
            cursor = event.seq
        await anyio.sleep(0.002)
    for event in await store.read_events(cursor):
        seen.append(event.seq)


# --- the commit-ordered log -------------------------------------------------------------------


def test_bigserial_cursor_reader_skips_rows(pg_schema_url: str) -> None:
    """The fault the store avoids: a later id committed first makes a cursor reader skip one."""
    with pg(pg_schema_url) as setup:
        setup.execute(f'CREATE SCHEMA "{schema_of(pg_schema_url)}"')
        setup.execute("CREATE TABLE naive (id bigserial PRIMARY KEY)")
    with pg(pg_schema_url) as long, pg(pg_schema_url) as short, pg(pg_schema_url) as reader:
        long.execute("BEGIN")
        first = long.execute("INSERT INTO naive DEFAULT VALUES RETURNING id").fetchone()
        short.execute("INSERT INTO naive DEFAULT VALUES")  # autocommit: commits at once
        seen = [r[0] for r in reader.execute("SELECT id FROM naive WHERE id > 0 ORDER BY id")]
        long.execute("COMMIT")
        seen += [r[0] for r in reader.execute("SELECT id FROM naive WHERE id > %s", (seen[-1],))]
    assert first is not None and first[0] not in seen  # skipped for good


@pytest.mark.anyio
async def test_log_is_commit_ordered_under_interleaved_transactions(pg_schema_url: str) -> None:
    """Long and short writing transactions interleave on two stores (replicas); a reader that
    follows ``seq > cursor`` while they run sees exactly the final log, in order."""
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
        assert isinstance(a, PostgresStore)
        rng = random.Random(4)

        async def slow_commit() -> None:  # a long transaction: holds its seq before committing
            await anyio.sleep(rng.choice([0.0, 0.0, 0.002, 0.03]))

        a.driver.committer._before_commit = slow_commit
        seen: list[int] = []
        stop = anyio.Event()
        async with anyio.create_task_group() as readers:
            readers.start_soon(follow, a, seen, stop)
            async with anyio.create_task_group() as writers:
                for i in range(30):
                    writers.start_soon(make_workspace, a if i % 2 else b, f"c{i}")
            stop.set()
        everything = [e.seq for e in await a.read_events(0)]
        assert len(everything) == 60
        assert seen == everything


@pytest.mark.anyio
async def test_short_transaction_waits_for_long_one(pg_schema_url: str) -> None:
    """A short write that starts while a long one holds its seq commits after it, with a later seq."""
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
        assert isinstance(a, PostgresStore)
        for chat in ("long", "short"):
            await a.register_chat(chat, "alice")
        entered = anyio.Event()

        async def hold() -> None:
            entered.set()
            await anyio.sleep(0.3)

        a.driver.committer._before_commit = hold
        done: dict[str, tuple[float, int]] = {}

        async def create(store: wl.Store, chat: str) -> None:
            outcome = await store.create_workspace(chat, "dev", expected_workspace_id=None)
            done[chat] = (time.monotonic(), outcome.facts.seq)

        async with anyio.create_task_group() as tg:
            tg.start_soon(create, a, "long")
            await entered.wait()
            tg.start_soon(create, b, "short")
            await anyio.sleep(0.1)
            assert await b.read_events(0) == []  # nothing visible, nothing to skip
        assert done["long"][0] <= done["short"][0]
        assert done["long"][1] < done["short"][1]


# --- schema and migrations ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_replicas_migrate_a_fresh_schema_together(pg_schema_url: str) -> None:
    """Six stores opening one fresh schema at once: one applies the migrations, all work."""
    stores = [wl.open_store(pg_schema_url) for _ in range(6)]
    async with anyio.create_task_group() as tg:
        for store in stores:
            tg.start_soon(store.open)
    try:
        await make_workspace(stores[0], "c1")
        assert (await stores[5].get_chat("c1")) is not None
    finally:
        for store in stores:
            await store.aclose()
    with pg(pg_schema_url) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


@pytest.mark.anyio
async def test_newer_schema_is_refused(pg_schema_url: str) -> None:
    async with wl.open_store(pg_schema_url):
        pass
    with pg(pg_schema_url) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(wl.StoreError, match="newer than this workspace-lifecycle understands"):
        async with wl.open_store(pg_schema_url):
            pass


def test_url_options_and_bad_schema() -> None:
    store = PostgresStore.from_url(
        "postgres://u:pw@h:1/db?schema=s1&statement_timeout=1.5&sslmode=disable&poll_interval=3"
    )
    assert (store.url, store.schema, store.statement_timeout, store.poll_interval) == (
        "postgres://u@h:1/db?schema=s1",
        "s1",
        1.5,
        3.0,
    )
    assert "sslmode=disable" in store._conninfo and "schema" not in store._conninfo
    for bad in ("1abc", "a;drop", 'x"y', "a" * 64, ""):
        with pytest.raises(ValueError, match="invalid schema name"):
            wl.open_store(f"postgresql://h/db?schema={bad}")
    with pytest.raises(ValueError, match="statement_timeout"):
        wl.open_store("postgresql://h/db?statement_timeout=soon")


def test_pgbouncer_options_are_validated() -> None:
    """pool_mode and listen_url (see tests/stores/test_pgbouncer.py for them at work): a listen_url is a
    PostgreSQL URL of libpq parameters or ``none``; transaction pooling needs one; passwords
    never reach the shown URL."""
    listen = "postgresql%3A%2F%2Fu%3Apw%40direct%3A5432%2Fdb%3Fsslmode%3Drequire"
    store = PostgresStore.from_url(
        f"postgresql://u:pw@bouncer:6432/db?pool_mode=transaction&listen_url={listen}"
    )
    assert store.url == (
        "postgresql://u@bouncer:6432/db?pool_mode=transaction&listen_url=postgresql%3A%2F%2Fu%40direct%3A5432%2Fdb"
    )
    assert (store.pool_mode, store.listens) == ("transaction", True)
    assert "direct" in store._listen_conninfo and "sslmode=require" in store._listen_conninfo
    assert "bouncer" in store._pool_conninfo and "listen_url" not in store._pool_conninfo
    poll = PostgresStore.from_url("postgresql://bouncer/db?pool_mode=transaction&listen_url=none")
    assert (poll.listens, poll.url) == (
        False,
        "postgresql://bouncer/db?pool_mode=transaction&listen_url=none",
    )
    assert PostgresStore.from_url("postgresql://h/db?listen_url=none").listens is False  # direct, polling
    assert PostgresStore.from_url("postgresql://h/db?pool_mode=session").pool_mode == "session"
    with pytest.raises(ValueError, match="pool_mode='transaction' needs listen_url"):
        wl.open_store("postgresql://bouncer/db?pool_mode=transaction")
    with pytest.raises(ValueError, match="statement' cannot work"):
        wl.open_store("postgresql://bouncer/db?pool_mode=statement")
    with pytest.raises(ValueError, match="pool_mode must be 'session' or 'transaction'"):
        wl.open_store("postgresql://bouncer/db", pool_mode="Transaction")
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        wl.open_store("postgresql://bouncer/db", pool_mode="transaction", listen_url="mysql://h/db")
    with pytest.raises(
        ValueError, match="listen_url takes libpq parameters only, not the store's option 'schema'"
    ):
        wl.open_store("postgresql://bouncer/db", listen_url="postgresql://h/db?schema=x")
    with pytest.raises(ValueError, match="malformed PostgreSQL URL"):
        wl.open_store("postgresql://bouncer/db", listen_url="postgresql://h/db?nosuch=1")


@pytest.mark.anyio
async def test_direct_store_may_listen_elsewhere_or_nowhere(pg_schema_url: str) -> None:
    """listen_url without a pooler: a store that listens nowhere is woken by its poll, one whose
    listen_url is the same database by NOTIFY (its poll a minute away)."""
    base = pg_schema_url.partition("?")[0]
    async with (
        wl.open_store(f"{pg_schema_url}&listen_url=none", poll_interval=0.1) as polling,
        wl.open_store(f"{pg_schema_url}&listen_url={quote(base, safe='')}", poll_interval=60) as listening,
        wl.open_store(pg_schema_url) as writer,
    ):
        assert isinstance(polling, PostgresStore) and isinstance(listening, PostgresStore)
        assert polling.listener_pid is None and listening.listener_pid is not None
        await writer.register_chat("c", "alice")
        heads = (await polling.head(), await listening.head())
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(polling.wait_for_change, heads[0])
                tg.start_soon(listening.wait_for_change, heads[1])
                await anyio.sleep(0.2)
                await writer.create_workspace("c", "dev", expected_workspace_id=None)
        assert polling.polls >= 1 and listening.polls == 0


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_is_refused_clearly(pg_schema_url: str) -> None:
    with pytest.raises(UnsupportedBackendError, match="needs the asyncio backend"):
        async with wl.open_store(pg_schema_url):
            pass


@pytest.mark.anyio
async def test_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(wl.StoreError, match="cannot connect"):
        async with wl.open_store("postgresql://postgres@127.0.0.1:1/test?pool_timeout=0.5"):
            pass


# --- corrupt rows ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unknown_enum_strings_name_the_row(pg_schema_url: str) -> None:
    async with wl.open_store(pg_schema_url) as store:
        ws = await make_workspace(store, "c1")
        with pg(pg_schema_url) as conn:
            build_id = conn.execute("UPDATE builds SET status = 'exploded' RETURNING build_id").fetchone()
            seq = conn.execute(
                "UPDATE events SET kind = 'mystery' WHERE seq = (SELECT max(seq) FROM events) RETURNING seq"
            ).fetchone()
        assert build_id is not None and seq is not None
        with pytest.raises(wl.CorruptStateError) as info:
            await store.workspace_facts(ws)
        assert (info.value.table, info.value.key, info.value.column) == ("builds", build_id[0], "status")
        assert "exploded" in str(info.value)
        with pytest.raises(wl.CorruptStateError) as info:
            await store.read_events(0)
        assert (info.value.table, info.value.key, info.value.column) == ("events", seq[0], "kind")
        with pg(pg_schema_url) as conn:
            conn.execute("UPDATE agents SET lifecycle = 'x'")  # no agent yet: nothing to corrupt
            conn.execute("UPDATE builds SET status = 'running'")
        build = await store.claim_build("w")
        assert build is None  # the build is running, not pending
        with pg(pg_schema_url) as conn:
            conn.execute("UPDATE builds SET status = 'pending'")
        build = await store.claim_build("w")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED)
        with pg(pg_schema_url) as conn:
            conn.execute("UPDATE agents SET lifecycle = 'dancing'")
        with pytest.raises(wl.CorruptStateError, match=r"agents .*lifecycle.*dancing"):
            await store.workspace_facts(ws)


# --- wake-ups -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_many_waiters_wake_on_one_commit_from_another_store(pg_schema_url: str) -> None:
    """A thousand waiters share one wake-up: the listener wakes them all on one NOTIFY."""
    async with wl.open_store(pg_schema_url, poll_interval=60) as a, wl.open_store(pg_schema_url) as b:
        head = await a.head()
        woke = 0
        all_woke = anyio.Event()

        async def waiter() -> None:
            nonlocal woke
            await a.wait_for_change(head)
            woke += 1
            if woke == 1000:
                all_woke.set()

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(waiter)
            await anyio.sleep(0.05)
            assert woke == 0
            await make_workspace(b, "c1")
            with anyio.fail_after(5):
                await all_woke.wait()


@pytest.mark.anyio
async def test_round_trips_count_the_pool_calls(pg_schema_url: str) -> None:
    """The benchmarks' counter: one per statement or transaction on the pool, none for the listener."""
    async with wl.open_store(pg_schema_url, poll_interval=60) as store:
        assert isinstance(store, PostgresStore)
        before = store.round_trips
        await store.head()
        await store.get_chat("nobody")
        assert store.round_trips == before + 2
        await make_workspace(store, "c1")  # register_chat and create_workspace: a transaction each
        assert store.round_trips == before + 4


@pytest.mark.anyio
async def test_fallback_poll_finds_a_commit_without_notify(pg_schema_url: str) -> None:
    """NOTIFY is only a hint: an event committed without one is found by the slow poll."""
    async with wl.open_store(pg_schema_url, poll_interval=0.2) as store:
        await make_workspace(store, "c1")
        head = await store.head()
        with pg(pg_schema_url) as conn:  # an event row written behind the store's back
            conn.execute(
                "INSERT INTO events (kind, workspace_id, chat_id, build_number, payload, at)"
                " SELECT kind, workspace_id, chat_id, build_number, payload, at FROM events"
                " WHERE seq = %s",
                (head,),
            )
        with anyio.fail_after(3):
            await store.wait_for_change(head)
        assert len(await store.read_events(head)) == 1


# --- faults -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_statement_timeout_is_an_error_not_a_hang(pg_schema_url: str) -> None:
    async with wl.open_store(pg_schema_url, statement_timeout=0.3) as store:
        ws = await make_workspace(store, "c1")
        build = await store.claim_build("w")
        assert build is not None
        await store.finish_build(build.build_id, "succeeded")
        with pg(pg_schema_url) as blocker:
            blocker.execute("BEGIN")
            blocker.execute("SELECT 1 FROM workspaces WHERE workspace_id = %s FOR UPDATE", (ws,))
            started = time.monotonic()
            # The stop is decided on what it read, then waits for the row lock of its guard.
            with pytest.raises(wl.StoreBusyError, match="statement_timeout"):
                await store.request_build(ws, Transition.STOP, expected_build_number=1)
            assert time.monotonic() - started < 3
            blocker.execute("ROLLBACK")
        outcome = await store.request_build(ws, Transition.STOP, expected_build_number=1)
        assert outcome.fired  # the timed-out statement changed nothing
        assert [e.kind.value for e in await store.read_events(0)][-1] == "build_queued"


@pytest.mark.anyio
async def test_cancelled_caller_leaves_the_store_usable(pg_schema_url: str) -> None:
    async with wl.open_store(pg_schema_url, pool_max_size=2) as store:
        await store.register_chat("c1", "alice")
        for _ in range(5):
            with anyio.move_on_after(0.001):
                await store.create_workspace("c1", "dev", expected_workspace_id=None)
        chat = await store.get_chat("c1")
        assert chat is not None and chat.workspace_id is not None
        events = await store.read_events(0)
        assert [e.kind.value for e in events] == ["chat_bound", "build_queued"]  # one create, whole


@pytest.mark.anyio
async def test_terminated_backends_are_recovered(pg_schema_url: str) -> None:
    """pg_terminate_backend on every connection of a store: calls reconnect, the listener too."""
    app = f"wl_victim_{uuid.uuid4().hex[:8]}"
    victim_url = f"{pg_schema_url}&application_name={app}"
    async with wl.open_store(victim_url, poll_interval=60) as victim, wl.open_store(pg_schema_url) as other:
        assert isinstance(victim, PostgresStore)
        ws = await make_workspace(victim, "c1")
        with psycopg.connect(base_of(pg_schema_url), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                (app,),
            ).fetchone()
        assert killed is not None and killed[0] >= 2  # the pool's and the listener's
        facts = await victim.workspace_facts(ws)  # retried on a fresh connection
        assert facts.latest_build is not None

        async def reconnected() -> bool:
            return victim.listener_connects >= 2

        await until(reconnected, 5)
        head = await victim.head()
        async with anyio.create_task_group() as tg:
            tg.start_soon(victim.wait_for_change, head)
            await anyio.sleep(0.05)
            with anyio.fail_after(5):
                await make_workspace(other, "c2")  # wakes the victim through its new LISTEN


def _restart_server(pg_url: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    wait_until_answering(pg_url)


@pytest.mark.slow
@pytest.mark.anyio
async def test_server_restart_while_runtimes_wait(pg_exclusive: str, pg_url: str, pg_schema_url: str) -> None:
    """PostgreSQL restarts while two replicas wait for a start build: both get the answer after
    it comes back, with one start build and no event lost."""
    if not await anyio.Path("/etc/postgresql").is_dir():
        pytest.skip("needs a local pg_ctlcluster-managed server to restart")
    async with wl.open_store(pg_schema_url) as setup:
        ws = await make_workspace(setup, "c1")
        for number, transition in ((1, None), (2, Transition.STOP)):
            if transition is not None:
                await setup.request_build(ws, transition, expected_build_number=number - 1)
            build = await setup.claim_build("setup")
            assert build is not None
            await setup.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
        first_seq = await setup.head()

    async with (
        wl.open_store(pg_schema_url, poll_interval=0.5) as one,
        wl.open_store(pg_schema_url, poll_interval=0.5) as two,
        wl.Lifecycle(one, build_timeout=60, agent_timeout=60) as lc1,
        wl.Lifecycle(two, build_timeout=60, agent_timeout=60) as lc2,
    ):
        seen: list[int] = []

        async def subscriber() -> None:  # a cursor reader that retries through the outage
            cursor = first_seq
            while True:
                try:
                    for event in await two.read_events(cursor):
                        seen.append(event.seq)
                        cursor = event.seq
                    await two.wait_for_change(cursor)
                except wl.StoreError:
                    await anyio.sleep(0.1)

        results: list[wl.ToolResult] = []

        async def start(lc: wl.Lifecycle) -> None:
            results.append(await lc.start_workspace("c1", owner="alice"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(subscriber)
            tg.start_soon(start, lc1)
            tg.start_soon(start, lc2)

            async def queued() -> bool:  # the start build is queued before the restart
                latest = (await one.workspace_facts(ws)).latest_build
                return latest is not None and latest.number == 3

            async def answered() -> bool:
                return len(results) == 2

            async def subscriber_caught_up() -> bool:
                return bool(seen) and seen[-1] >= await two.head()

            await until(queued)
            await anyio.to_thread.run_sync(_restart_server, pg_url)
            # The provisioner arrives after the restart, on the same store as one waiter.
            async with wl.SimulatedProvisioner(one, build_seconds=0.05):
                await until(answered, 30)
                await one.report_agent(ws, AgentLifecycle.READY)
            await until(subscriber_caught_up)
            tg.cancel_scope.cancel()

        assert [r.is_error for r in results] == [False, False], results
        assert {r.data["build_id"] for r in results} == {results[0].data["build_id"]}
        async with wl.open_store(pg_schema_url) as check:
            facts = await check.workspace_facts(ws)
            assert facts.latest_build is not None and facts.latest_build.number == 3
            assert facts.latest_build.build_id == results[0].data["build_id"]
            assert seen == [e.seq for e in await check.read_events(first_seq)]
