"""Group commit on the SQLite store: writes queued together commit in one transaction, with each
write's guarantees unchanged; reads never wait for the writer's thread; the rowid log migrates."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from workspaces import stopped

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, Transition
from workspace_lifecycle.adapters import base
from workspace_lifecycle.adapters.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLite is asyncio-only


@asynccontextmanager
async def writer_held(store: SQLiteStore) -> AsyncIterator[None]:
    """Keep the writer's thread busy: writes submitted meanwhile queue, and once it is free they
    are all found queued together, so they run as one batch."""
    gate = threading.Event()
    assert store.driver._connection is not None
    busy = store.driver._connection.submit(lambda conn: gate.wait(10))
    try:
        yield
    finally:
        gate.set()
        await busy


async def batch(store: SQLiteStore, calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run ``calls`` as one batch (checked: one COMMIT, or none); each result or its exception."""
    results: list[Any] = [None] * len(calls)

    async def run(i: int) -> None:
        try:
            results[i] = await calls[i]()
        except Exception as exc:
            results[i] = exc

    commits = store.commits
    async with anyio.create_task_group() as tg, writer_held(store):
        for i in range(len(calls)):
            tg.start_soon(run, i)
            await wait_all_tasks_blocked()  # submitted, in this order
    assert store.commits - commits <= 1, "the writes did not run as one batch"
    return results


async def agent_ready(store: SQLiteStore, chat: str) -> str:
    """A workspace of ``chat`` whose start build succeeded with an agent (in ``created``)."""
    await store.register_chat(chat, "alice")
    ws = (await store.create_workspace(chat, "dev", expected_workspace_id=None)).facts.workspace_id
    build = await store.claim_build("w")
    assert build is not None and build.workspace_id == ws
    await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
    return ws


class TestBatch:
    async def test_a_failing_write_fails_only_itself(self, tmp_path: Path) -> None:
        """Refused, missing, foreign-owned and half-done writes in a batch fail (or are refused)
        alone; the others commit, and nothing of the failed ones is left."""
        async with SQLiteStore(tmp_path / "x.db") as store:
            ws = await stopped(store, "c1", "alice")
            await store.register_chat("taken", "bob")
            head = await store.head()

            def half_done(tx: Any) -> None:  # writes a row, then fails: rolled back to its savepoint
                tx.conn.execute("INSERT INTO chats (chat_id, owner) VALUES ('ghost', 'eve')")
                raise wl.NotFoundError("no such thing")

            results = await batch(
                store,
                [
                    lambda: store.register_chat("a", "alice"),
                    lambda: store.report_agent("nowhere", AgentLifecycle.READY),
                    lambda: store.request_build(ws, Transition.START, expected_build_number=2),
                    lambda: store.register_chat("taken", "alice"),
                    lambda: store.driver._write(half_done),
                    lambda: store.request_build(ws, Transition.STOP, expected_build_number=2),  # refused
                    lambda: store.register_chat("b", "alice"),
                ],
            )
            assert results[0] == wl.Chat("a", "alice")
            assert isinstance(results[1], wl.NotFoundError)
            assert results[2].fired and results[2].build.number == 3
            assert isinstance(results[3], wl.OwnershipError)
            assert isinstance(results[4], wl.NotFoundError) and str(results[4]) == "no such thing"
            assert results[5].fired is False  # a refused compare-and-set is an outcome, not a failure
            assert results[5].facts.latest_build.number == 3  # it saw the start committed before it
            assert results[6] == wl.Chat("b", "alice")
            assert await store.get_chat("ghost") is None
            assert await store.get_chat("taken") == wl.Chat("taken", "bob")
            events = await store.read_events(head)
            assert [e.kind for e in events] == [wl.EventKind.BUILD_QUEUED]
            assert store.transactions >= 4

    async def test_events_are_numbered_in_commit_order(self, tmp_path: Path) -> None:
        """A batch's writes commit in the order they were submitted, their events numbered in that
        order without gaps; each caller's facts carry its own position; the doorbell rings once,
        with the batch's head."""
        async with SQLiteStore(tmp_path / "x.db") as store:
            workspaces = [await agent_ready(store, f"c{i}") for i in range(6)]
            head = await store.head()
            rings: list[int] = []
            saw = base.Doorbell.saw

            def counting(self: base.Doorbell, seen: int, *, force: bool = False) -> bool:
                rings.append(seen)
                return saw(self, seen, force=force)

            calls: list[Callable[[], Awaitable[Any]]] = []
            for i, ws in enumerate(workspaces):
                if i % 2:
                    calls.append(lambda ws=ws: store.report_agent(ws, AgentLifecycle.READY))
                else:
                    calls.append(
                        lambda ws=ws: store.request_build(ws, Transition.STOP, expected_build_number=1)
                    )
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(base.Doorbell, "saw", counting)
                results = await batch(store, calls)
            events = await store.read_events(head)
            assert [e.seq for e in events] == list(range(head + 1, head + 7))
            assert [e.workspace_id for e in events] == workspaces
            for i in range(0, 6, 2):
                assert results[i].fired and results[i].facts.seq == events[i].seq
            assert rings == [head + 6]
            assert await store.head() == head + 6
            # Claims follow the order the builds were queued in.
            claimed = [await store.claim_build("w") for _ in range(3)]
            assert [b.workspace_id if b else None for b in claimed] == workspaces[0::2]

    async def test_a_failed_commit_fails_every_write_of_the_batch(self, tmp_path: Path) -> None:
        """COMMIT itself fails (here a deferred foreign key a second program added, checked only
        at COMMIT): every write of the batch fails with the error one write alone gets, none is
        delivered as committed, and nothing of the batch is in the file."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path) as store:
            ws = await agent_ready(store, "c0")
            head = await store.head()
            with sqlite3.connect(path) as other:
                other.executescript(
                    "CREATE TABLE parent (id TEXT PRIMARY KEY);"
                    "CREATE TABLE guard (chat_id TEXT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
                    "CREATE TRIGGER guarded AFTER INSERT ON chats BEGIN "
                    "INSERT INTO guard (chat_id) VALUES (new.chat_id); END;"
                )
            other.close()
            assert store.driver._connection is not None
            await store.driver._connection.submit(lambda conn: conn.execute("PRAGMA foreign_keys = ON"))
            assert store.driver._inline is not None and store.driver._inline.conn is not None
            store.driver._inline.conn.execute("PRAGMA foreign_keys = ON")  # the loop's connection too
            commits = store.commits

            with pytest.raises(wl.StoreError, match="FOREIGN KEY") as alone:
                await store.register_chat("single", "alice")
            results = await batch(
                store,
                [
                    lambda: store.register_chat("a", "alice"),
                    lambda: store.report_agent(ws, AgentLifecycle.READY),  # fine by itself
                    lambda: store.register_chat("b", "alice"),
                ],
            )
            assert all(type(r) is type(alone.value) and str(r) == str(alone.value) for r in results), results
            assert store.commits == commits
            assert await store.head() == head
            assert await store.read_events(head) == []
            assert [await store.get_chat(c) for c in ("single", "a", "b")] == [None, None, None]
            facts = await store.workspace_facts(ws)
            assert facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.CREATED

            with sqlite3.connect(path) as other:
                other.execute("DROP TRIGGER guarded")
            other.close()
            # The connection is usable again: nothing was left open.
            assert await store.register_chat("a", "alice") == wl.Chat("a", "alice")
            await store.report_agent(ws, AgentLifecycle.READY)
            assert [e.seq for e in await store.read_events(head)] == [head + 1]

    async def test_cancelled_callers_writes_still_commit_and_ring(self, tmp_path: Path) -> None:
        async with SQLiteStore(tmp_path / "x.db") as store:
            workspaces = [await agent_ready(store, f"c{i}") for i in range(3)]
            head = await store.head()
            async with anyio.create_task_group() as tg, writer_held(store):
                for ws in workspaces:
                    tg.start_soon(store.report_agent, ws, AgentLifecycle.READY)
                await wait_all_tasks_blocked()
                tg.cancel_scope.cancel()
            with anyio.fail_after(5):
                await store.wait_for_change(head + 2)  # rung by the batch nobody waited for
            assert await store.head() == head + 3


class TestReads:
    async def test_reads_do_not_wait_for_a_long_batch(self, tmp_path: Path) -> None:
        """While the writer's thread runs a long transaction (it holds the write lock), every
        read answers at once, from the last committed state."""
        async with SQLiteStore(tmp_path / "x.db") as store:
            ws = await stopped(store, "c1", "alice")
            facts = await store.workspace_facts(ws)
            assert facts.latest_build is not None
            head = await store.head()
            started = threading.Event()

            def long_write(tx: Any) -> None:
                tx.conn.execute("INSERT INTO chats (chat_id, owner) VALUES ('slow', 'alice')")
                started.set()
                time.sleep(1.5)

            async with anyio.create_task_group() as tg:
                thread = store.driver._connection
                assert thread is not None  # the long write runs on the writer's thread, not inline

                async def on_the_thread() -> None:
                    await thread.submit(long_write, write=True)

                tg.start_soon(on_the_thread)
                await anyio.to_thread.run_sync(started.wait, 5)
                t0 = time.monotonic()
                with anyio.fail_after(1):
                    assert await store.head() == head
                    assert await store.get_chat("slow") is None
                    assert await store.get_chat("c1") == wl.Chat("c1", "alice", ws)
                    assert (await store.workspace_facts(ws)).latest_build == facts.latest_build
                    assert len(await store.read_events(0)) == head
                    assert [r.chat.chat_id for r in await store.list_chats()] == ["c1"]
                    assert await store.get_build(facts.latest_build.build_id) == facts.latest_build
                assert time.monotonic() - t0 < 1.0
            assert await store.get_chat("slow") == wl.Chat("slow", "alice")

    async def test_a_read_sees_the_write_its_caller_awaited(self, tmp_path: Path) -> None:
        async with SQLiteStore(tmp_path / "x.db") as store:
            for i in range(50):
                await store.register_chat(f"c{i}", "alice")
                assert await store.get_chat(f"c{i}") == wl.Chat(f"c{i}", "alice")


class TestRowidLog:
    async def test_pruning_everything_never_reuses_a_number(self, tmp_path: Path) -> None:
        async with SQLiteStore(tmp_path / "x.db") as store:
            await stopped(store, "c1", "alice")
            head = await store.head()
            assert await store.prune_events(time.time() + 10) == head
        async with SQLiteStore(tmp_path / "x.db") as store:
            assert await store.head() == head
            await store.register_chat("c2", "alice")
            await store.create_workspace("c2", "dev", expected_workspace_id=None)
            events = await store.read_events(head)
            assert [e.seq for e in events] == [head + 1, head + 2]
            with pytest.raises(wl.CursorExpiredError):
                await store.read_events(head - 1)

    @pytest.mark.parametrize("kept", [0, 2])
    async def test_a_version_2_file_migrates_and_keeps_its_numbering(self, tmp_path: Path, kept: int) -> None:
        """A file written by schema 2 (a head counter row; a pruned log whose head is beyond its
        last kept event, or an empty one) keeps its events, cursors and numbering."""
        path = tmp_path / "old.db"
        with sqlite3.connect(path, isolation_level=None) as conn:
            for version in (0, 1):
                conn.executescript(MIGRATIONS[version])
            conn.execute("PRAGMA user_version = 2")
            conn.execute("INSERT INTO chats (chat_id, owner) VALUES ('c', 'alice')")
            for seq in range(11 - kept, 11):
                conn.execute(
                    "INSERT INTO events (seq, kind, workspace_id, chat_id, build_number, payload, at) "
                    "VALUES (?, 'chat_bound', 'w', 'c', 0, '{}', ?)",
                    (seq, time.time()),
                )
            conn.execute("UPDATE log_state SET head = 12, pruned_through = ?", (10 - kept,))
        conn.close()
        async with SQLiteStore(path) as store:
            assert await store.head() == 12
            assert len(await store.read_events(10 - kept)) == kept
            with pytest.raises(wl.CursorExpiredError):
                await store.read_events(9 - kept)
            await store.create_workspace("c", "dev", expected_workspace_id=None)
            assert [e.seq for e in await store.read_events(12)] == [13, 14]
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            columns = [r[1] for r in conn.execute("PRAGMA table_info(log_state)")]
        conn.close()
        assert "head" not in columns


class TestOrder:
    async def test_a_writer_runs_before_the_waiters_its_commit_wakes(self, tmp_path: Path) -> None:
        """However a waiter learns of a commit (the writer's ring, a concurrent read of the head,
        the watcher), the writer's own task resumes first: what it does right after its write
        returns happens before any waiter it woke runs."""
        async with SQLiteStore(tmp_path / "x.db") as store:
            ws = await agent_ready(store, "c0")
            lifecycles = [AgentLifecycle.STARTING, AgentLifecycle.READY]
            state = {"head": 0, "returned": False, "reading": False, "late": 0}

            async def reader() -> None:
                while state["reading"]:  # reads of the head race the writer's hand-over
                    await store.head()

            async def waiter() -> None:
                await store.wait_for_change(state["head"])
                state["late"] += not state["returned"]

            for i in range(400):
                state.update(head=await store.head(), returned=False, reading=True)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(waiter)
                    tg.start_soon(reader)
                    await wait_all_tasks_blocked()
                    await store.report_agent(ws, lifecycles[i % 2])
                    state.update(returned=True, reading=False)
            assert state["late"] == 0
