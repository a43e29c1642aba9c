"""Hostile input: malformed URLs, strings built to break SQL or encodings, other owners' chats,
and unknown state strings written straight into storage.

Every value is either stored and returned exactly, or refused with a ``ValueError`` that says
why; nothing is ever executed; the store keeps working afterwards.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from figures import FIGURES, flush

import workspace_lifecycle as wl
from workspace_lifecycle import answers, checks
from workspace_lifecycle.faults import FaultyStore

pytestmark = pytest.mark.anyio

#: Strings that break naive SQL, formatting, encodings or size limits.
HOSTILE = {
    "sql": "x'); DROP TABLE chats; --",
    "quotes": "\"'`\\'\\\"",
    "like": "%_[]*?",
    "format": "%s %(x)s {0} {{}} $1 ?1 :name",
    "nul": "a\x00b",
    "surrogate": "a\ud800b",
    "bidi": "ü🚀\u202e\u200b\ufeff",
    "control": "a\nb\r\t\x1b[31m",
    "big": "x" * 1_000_000,
}

#: Known failures: (store kind, value key) -> why. strict xfail: they flip when fixed.
KNOWN: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    flush()


@contextlib.contextmanager
def _known(kind: str, key: str, *, store_level: bool) -> Iterator[None]:
    """Run the body; a known bug must still fail (then xfail), a fixed one fails the test."""
    reason = KNOWN.get((kind, key))
    # The runtime refuses NUL itself, so only direct store calls meet PostgreSQL's NUL bug.
    if reason is None or not (store_level or key != "nul"):
        yield
        return
    try:
        yield
    except (wl.StoreError, BaseExceptionGroup) as exc:
        if isinstance(exc, BaseExceptionGroup) and exc.subgroup(wl.StoreError) is None:
            raise
        pytest.xfail(f"{reason}: {exc!r}")
    pytest.fail(f"known bug no longer happens, remove it from KNOWN: {reason}")


async def _round_trip(call: Callable[[], Awaitable[object]], check: Callable[[], Awaitable[bool]]) -> str:
    """'stored' if the value came back exactly, 'refused' if a clear ValueError refused it."""
    try:
        await call()
    except ValueError as exc:
        assert str(exc), "a refusal must say why"
        assert not isinstance(exc, UnicodeError) or "utf" in str(exc).lower()
        return "refused"
    assert await check()
    return "stored"


@pytest.mark.parametrize(
    "url",
    [
        "",
        "memory",
        "memory://somewhere",
        "mysql://root@localhost/db",
        "sqlite://",
        "sqlite:///",
        "sqlite://relative.db",
        "sqlite:///:memory:",
        "sqlite:///x.db?busy_timeout=soon",
        "sqlite:///x.db?evil=1",
        "sqlite:////no/such/dir/x.db",
        "postgresql://u@127.0.0.1:1/db?schema=x;DROP SCHEMA public",
        'postgresql://u@127.0.0.1:1/db?schema="q"',
        "file:///etc/passwd",
        "\x00://",
    ],
)
async def test_malformed_url_is_a_value_error(url: str, tmp_path: Path) -> None:
    """Each malformed URL raises ValueError with a sentence, at open_store or at open."""
    FIGURES["inputs_tried"] += 1
    with pytest.raises(ValueError) as caught:
        async with wl.open_store(url):
            pass
    assert len(str(caught.value)) > 20


async def test_non_string_url_is_a_value_error() -> None:
    for url in (None, 42, b"memory://", Path("x.db")):
        FIGURES["inputs_tried"] += 1
        with pytest.raises(ValueError, match="accepted forms"):
            wl.open_store(url)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", sorted(HOSTILE))
async def test_store_round_trips_or_refuses(
    store: wl.Store, store_backend: tuple[str, str], key: str
) -> None:
    """Chat ids and owners at the store level: exact round trip or ValueError, never SQL."""
    with _known(store_backend[0], key, store_level=True):
        await _store_round_trip(store, key)


async def _store_round_trip(store: wl.Store, key: str) -> None:
    value = HOSTILE[key]
    for chat, owner in ((value, "alice"), (f"chat-{key}", value)):
        FIGURES["inputs_tried"] += 1

        async def check(chat: str = chat, owner: str = owner) -> bool:
            return await store.get_chat(chat) == wl.Chat(chat, owner, None)

        await _round_trip(lambda chat=chat, owner=owner: store.register_chat(chat, owner), check)
    # Workspace names are stored as given by the store (the runtime sanitises them first).
    FIGURES["inputs_tried"] += 1
    await store.register_chat("named", "alice")

    async def named() -> bool:
        chat = await store.get_chat("named")
        assert chat is not None and chat.workspace_id is not None
        return (await store.workspace_facts(chat.workspace_id)).workspace.name == value

    await _round_trip(lambda: store.create_workspace("named", value, expected_workspace_id=None), named)
    # Nothing was executed: every table is still there and answers.
    await store.register_chat("after", "bob")
    assert await store.get_chat("after") == wl.Chat("after", "bob", None)
    assert len(await store.list_chats()) >= 2


@pytest.mark.parametrize("key", sorted(HOSTILE))
async def test_lifecycle_round_trips_or_refuses(
    store: wl.Store, store_backend: tuple[str, str], key: str
) -> None:
    """Through the runtime: the chat id and owner come back exactly (or ValueError); a hostile
    name is refused in one line with a valid name to try, which is then kept exactly."""
    with _known(store_backend[0], key, store_level=False):
        await _lifecycle_round_trip(store, key)


async def _lifecycle_round_trip(store: wl.Store, key: str) -> None:
    value = HOSTILE[key]
    async with wl.SimulatedProvisioner(store, agent=None), wl.Lifecycle(store, build_timeout=10) as lc:
        for chat, owner in ((value, "alice"), (f"chat-{key}", value)):
            FIGURES["inputs_tried"] += 1
            try:
                await lc.register_chat(chat, owner=owner)
            except ValueError as exc:
                assert str(exc)
                continue
            # The name is kept or refused with a valid one to try; never renamed (a rename
            # left its giver with a name they did not choose, and did not say so).
            with pytest.raises(ValueError, match=r"^name must be 1 to 32 letters") as refused:
                await lc.create_workspace(chat, owner=owner, name=value)
            assert "\n" not in str(refused.value) and len(str(refused.value)) < 400
            name = str(refused.value).rsplit("; try ", 1)[1].strip("'")
            assert checks.workspace_name_valid(name), name
            assert await store.get_chat(chat) == wl.Chat(chat, owner, None)  # nothing created
            r = await lc.create_workspace(chat, owner=owner, name=name)
            assert not r.is_error, r.text
            assert r.data["workspace_name"] == f"{owner}/{name}"
            assert await lc.state(chat) is wl.WorkspaceState.RUNNING
            r = await lc.stop_workspace(chat, owner=owner)
            assert r.data.get("stopped") is True, r.data
            assert (await store.get_chat(chat)).owner == owner  # type: ignore[union-attr]
        rows = await store.list_chats()
        assert all(row.chat.owner in ("alice", value) for row in rows)


# --- another owner's chat ------------------------------------------------------------------------


async def test_other_owner_learns_nothing(store: wl.Store) -> None:
    """mallory's start/stop/delete/create/state/watch on alice's chat answer exactly as for a chat
    that does not exist, and write nothing."""
    async with wl.SimulatedProvisioner(store, agent=None), wl.Lifecycle(store, build_timeout=10) as lc:
        await lc.register_chat("alice-chat", owner="alice")
        assert not (await lc.create_workspace("alice-chat", owner="alice", name="dev")).is_error
        head = await store.head()
        for verb in ("create", "start", "stop", "delete"):
            method = getattr(lc, f"{verb}_workspace")
            for wait in (True, False):
                FIGURES["inputs_tried"] += 1
                theirs = await method("alice-chat", owner="mallory", wait=wait)
                unknown = await method("no-such-chat", owner="mallory", wait=wait)
                assert theirs == unknown and theirs.is_error
                expected = answers.CHAT_NOT_FOUND if verb == "create" else answers.NO_WORKSPACE
                assert theirs.text == expected
        assert await store.head() == head
        assert await lc.state("alice-chat", owner="mallory") is wl.WorkspaceState.NO_WORKSPACE
        assert await lc.state("alice-chat", owner="alice") is wl.WorkspaceState.RUNNING

        seen: dict[str, list[wl.StateChange]] = {"mallory": [], "alice": [], "mallory-all": []}
        alice_saw_stop = anyio.Event()

        async def follow(
            key: str, chat: str | None, owner: str, task_status: anyio.abc.TaskStatus[None]
        ) -> None:
            changes = lc.watch(chat, owner=owner)
            task_status.started()
            async for change in changes:
                seen[key].append(change)
                if key == "alice" and change.to_state is wl.WorkspaceState.STOPPED:
                    alice_saw_stop.set()

        async with anyio.create_task_group() as tg:
            await tg.start(follow, "mallory", "alice-chat", "mallory")
            await tg.start(follow, "mallory-all", None, "mallory")
            await tg.start(follow, "alice", "alice-chat", "alice")
            await anyio.sleep(0.05)  # the subscriptions are registered
            r = await lc.stop_workspace("alice-chat", owner="alice")
            assert r.data.get("stopped") is True
            with anyio.fail_after(5):
                await alice_saw_stop.wait()
            tg.cancel_scope.cancel()
        assert seen["alice"] and not seen["mallory"] and not seen["mallory-all"]


async def test_register_under_another_owner_is_refused(store: wl.Store) -> None:
    async with wl.Lifecycle(store) as lc:
        await lc.register_chat("c1", owner="alice")
        with pytest.raises(wl.OwnershipError):
            await lc.register_chat("c1", owner="mallory")
        assert (await store.get_chat("c1")).owner == "alice"  # type: ignore[union-attr]


# --- unknown state strings in storage ------------------------------------------------------------


def _corrupt(url: str, sql: str, params: tuple[object, ...]) -> None:
    """Write a row behind the store's back, with the database's own driver."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute(sql, params)
        return
    import psycopg

    parts = urlsplit(url)
    schema = parse_qs(parts.query)["schema"][0]
    with psycopg.connect(parts._replace(query="").geturl(), autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(sql.replace("?", "%s"), params)


@pytest.mark.parametrize(
    "store_backend",  # the stores with storage to corrupt (the memory store has none)
    [
        pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
        pytest.param(("postgres", "asyncio"), id="postgres-asyncio", marks=pytest.mark.postgres),
    ],
)
@pytest.mark.parametrize(
    ("table", "column", "key_column"),
    [
        ("builds", "status", "build_id"),
        ("builds", "transition", "build_id"),
        ("agents", "lifecycle", "workspace_id"),
        ("builds", "reason", "build_id"),
    ],
)
async def test_unknown_state_string_names_the_row(
    store: wl.Store, store_url: str, table: str, column: str, key_column: str
) -> None:
    await store.register_chat("c1", "alice")
    outcome = await store.create_workspace("c1", "dev", expected_workspace_id=None)
    ws = outcome.facts.workspace_id
    build = await store.claim_build("w")
    assert build is not None
    await store.finish_build(build.build_id, wl.JobStatus.SUCCEEDED, has_agent=True)
    key = build.build_id if key_column == "build_id" else ws
    _corrupt(store_url, f"UPDATE {table} SET {column} = ? WHERE {key_column} = ?", ("exploded", key))
    FIGURES["inputs_tried"] += 1
    with pytest.raises(wl.CorruptStateError) as caught:
        await store.workspace_facts(ws)
    err = caught.value
    assert (err.table, err.key, err.column, err.value) == (table, key, column, "exploded")
    assert table in str(err) and key in str(err) and "exploded" in str(err)
    assert isinstance(err, ValueError)
    # The runtime passes the same clear error to its caller; other chats keep working.
    async with wl.Lifecycle(store) as lc:
        with pytest.raises(wl.CorruptStateError, match=table):
            await lc.start_workspace("c1", owner="alice")
        await lc.register_chat("c2", owner="alice")
        r = await lc.create_workspace("c2", owner="alice", name="ok", wait=False)
        assert not r.is_error


@pytest.mark.parametrize(
    "store_backend",
    [
        pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
        pytest.param(("postgres", "asyncio"), id="postgres-asyncio", marks=pytest.mark.postgres),
    ],
)
async def test_corrupt_policy_and_deadline_columns_name_the_row(store: wl.Store, store_url: str) -> None:
    """A negative policy duration or an unknown deadline reason in storage names the row."""
    await store.register_chat("c1", "alice", policy=wl.Policy(idle_stop_after=60))
    ws = (await store.create_workspace("c1", "dev", expected_workspace_id=None)).facts.workspace_id
    build = await store.claim_build("w")
    assert build is not None
    await store.finish_build(build.build_id, wl.JobStatus.SUCCEEDED)
    assert (await store.workspace_facts(ws)).workspace.deadline is not None
    _corrupt(store_url, "UPDATE workspaces SET deadline_reason = ? WHERE workspace_id = ?", ("exploded", ws))
    with pytest.raises(wl.CorruptStateError) as caught:
        await store.workspace_facts(ws)
    assert (caught.value.table, caught.value.key, caught.value.column) == (
        "workspaces",
        ws,
        "deadline_reason",
    )
    _corrupt(store_url, "UPDATE chats SET idle_stop_after = ? WHERE chat_id = ?", (-5.0, "c1"))
    with pytest.raises(wl.CorruptStateError) as caught:
        await store.get_chat("c1")
    assert (caught.value.table, caught.value.key) == ("chats", "c1") and "-5" in str(caught.value)


async def test_one_corrupt_deadline_row_fires_nothing_and_stops_nobody(tmp_path: Path) -> None:
    """A runtime starts past a corrupt deadline row, and resyncs past one that went bad while it
    ran: the other deadlines load and fire; the bad one is named in the log and never fires."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    clock = wl.VirtualClock()

    class ExpiringOnce(FaultyStore):
        expire = False

        async def read_events(self, after: int, limit: int = 1000) -> Sequence[wl.StoreEvent]:
            if self.expire:  # the log was pruned past the pump's cursor: it must resync
                self.expire = False
                raise wl.CursorExpiredError(after, after + 1)
            return await super().read_events(after, limit)

    async with wl.open_store(url, clock=clock) as raw:
        ids = []
        for chat in ("c1", "c2", "c3"):
            await raw.register_chat(chat, "alice", policy=wl.Policy(idle_stop_after=600))
            ids.append(
                (await raw.create_workspace(chat, "dev", expected_workspace_id=None)).facts.workspace_id
            )
            build = await raw.claim_build("w")
            assert build is not None
            await raw.finish_build(build.build_id, wl.JobStatus.SUCCEEDED)
        bad_at_start, bad_later, good = ids
        _corrupt(url, "UPDATE workspaces SET deadline_reason = ? WHERE workspace_id = ?", ("x", bad_at_start))
        armed = await raw.armed_deadlines()
        assert set(armed.deadlines) == {bad_later, good} and set(armed.unreadable) == {bad_at_start}
        store = ExpiringOnce(raw)
        async with wl.Lifecycle(store, clock=clock) as lc:
            assert lc.deadlines_armed == 2
            _corrupt(
                url, "UPDATE workspaces SET deadline_reason = ? WHERE workspace_id = ?", ("x", bad_later)
            )
            store.expire = True
            await raw.register_chat("c4", "alice")
            await raw.create_workspace("c4", "dev", expected_workspace_id=None)  # wakes the pump
            for _ in range(500):  # the pump reads, finds its cursor expired and resyncs
                if not store.expire and lc.deadlines_armed == 1:
                    break
                await anyio.sleep(0.01)
            assert lc.deadlines_armed == 1  # the resync loaded the good one and named the bad one
            clock.advance(600)
            with anyio.fail_after(5):
                while True:  # the head first, then the check: a commit between them wakes us
                    head = await raw.head()
                    if (await raw.workspace_facts(good)).latest_build.number == 2:  # type: ignore[union-attr]
                        break
                    await raw.wait_for_change(head)
            assert (await lc.status("c3", owner="alice")).data["status"] == "building"
            events = await raw.read_events(0)
            fired = [
                e.workspace_id
                for e in events
                if e.kind is wl.EventKind.BUILD_QUEUED and e.reason is wl.Reason.IDLE
            ]
            assert fired == [good]  # the corrupt ones never fired


# --- text PostgreSQL cannot store ----------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_refuses_unstorable_text_clearly(pg_schema_url: str) -> None:
    """A lone surrogate (not UTF-8) or a NUL in a chat id, owner or name: a plain ValueError
    with a sentence naming the cause (not the driver's UnicodeEncodeError), and nothing written."""
    async with wl.open_store(pg_schema_url) as store:
        await store.register_chat("named", "alice")
        head = await store.head()
        for key, cause in (("surrogate", "UTF-8"), ("nul", "NUL")):
            value = HOSTILE[key]
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda value=value: store.register_chat(value, "alice"),
                lambda value=value, key=key: store.register_chat(f"chat-{key}", value),
                lambda value=value: store.create_workspace("named", value, expected_workspace_id=None),
            ]
            for call in calls:
                FIGURES["inputs_tried"] += 1
                with pytest.raises(ValueError, match=cause) as caught:
                    await call()
                assert type(caught.value) is ValueError, repr(caught.value)
                assert caught.value.__cause__ is None and caught.value.__suppress_context__
        assert await store.head() == head
        assert [row.chat for row in await store.list_chats()] == [wl.Chat("named", "alice", None)]


@pytest.mark.parametrize(
    "options",
    [
        {"build_timeout": math.nan},
        {"agent_timeout": math.inf},
        {"build_timeout": -1},
        {"build_timeout": "5"},
        {"resync_interval": 0},
        {"write_retries": True},
        {"write_retries": -1},
    ],
    ids=["nan", "inf", "negative", "string", "zero-interval", "bool-retries", "negative-retries"],
)
def test_lifecycle_refuses_bad_numbers_at_once(options: dict[str, object]) -> None:
    """Hardening 12: ``Lifecycle(build_timeout=nan)`` was accepted and failed later."""
    with pytest.raises(ValueError, match="must be"):
        wl.Lifecycle(wl.MemoryStore(), **options)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_create_with_a_non_string_name_writes_nothing() -> None:
    """Hardening 12: ``create_workspace(name=123)`` raised AttributeError deep in the runtime."""
    store = wl.MemoryStore()
    async with store, wl.Lifecycle(store) as lc:
        await lc.register_chat("c", owner="o")
        head = await store.head()
        with pytest.raises(ValueError, match="name must be a string"):
            await lc.create_workspace("c", owner="o", name=123)  # type: ignore[arg-type]
        assert await store.head() == head
