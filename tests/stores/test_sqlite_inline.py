"""The SQLite store's inline path: writes and reads on the event loop when they cannot block,
the writes of one loop tick in one transaction, the thread when the write lock is taken."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from workspaces import stopped

import workspace_lifecycle as wl
from workspace_lifecycle import Transition
from workspace_lifecycle.adapters.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLite is asyncio-only


def thread_commits(store: SQLiteStore) -> int:
    assert store.driver._connection is not None
    return store.driver._connection.commits


class TestGroupCommitWithinATick:
    async def test_writes_of_one_tick_share_one_commit(self, tmp_path: Path) -> None:
        """Twenty writes started in the same tick commit in one transaction, on the loop."""
        async with SQLiteStore(tmp_path / "x.db") as store:
            await store.register_chat("warm", "alice")
            commits, on_thread = store.commits, thread_commits(store)
            async with anyio.create_task_group() as tg:
                for i in range(20):
                    tg.start_soon(store.register_chat, f"c{i}", "alice")
            assert store.commits - commits == 1
            assert thread_commits(store) == on_thread  # none went to the thread
            assert [await store.get_chat(f"c{i}") for i in range(20)] == [
                wl.Chat(f"c{i}", "alice") for i in range(20)
            ]

    async def test_writes_of_different_ticks_commit_apart(self, tmp_path: Path) -> None:
        """One caller's writes, one after the other: one commit each (none waits for others)."""
        async with SQLiteStore(tmp_path / "x.db") as store:
            commits = store.commits
            for i in range(5):
                await store.register_chat(f"c{i}", "alice")
            assert store.commits - commits == 5

    async def test_compare_and_set_stays_exact_inside_one_commit(self, tmp_path: Path) -> None:
        """Ten starts of one stopped workspace in one tick, one transaction: exactly one fires
        (each decides after the one before it in the same transaction)."""
        async with SQLiteStore(tmp_path / "x.db") as store:
            ws = await stopped(store)
            number = (await store.workspace_facts(ws)).latest_build
            assert number is not None
            fired: list[bool] = []

            async def start() -> None:
                outcome = await store.request_build(ws, Transition.START, expected_build_number=number.number)
                fired.append(outcome.fired)

            commits = store.commits
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(start)
            assert store.commits - commits == 1
            assert sorted(fired) == [False] * 9 + [True]

    async def test_a_cancelled_caller_s_write_still_commits_with_its_tick(self, tmp_path: Path) -> None:
        """Cancelled while its write waits for the flush: the caller loses its answer, the write
        commits with the others of its tick (nothing is half-done either way)."""
        async with SQLiteStore(tmp_path / "x.db") as store:
            commits = store.commits
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.register_chat, "kept", "alice")
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await store.register_chat("abandoned", "alice")
            assert scope.cancelled_caught
            assert store.commits - commits == 1
            assert await store.get_chat("abandoned") == wl.Chat("abandoned", "alice")
            assert await store.get_chat("kept") == wl.Chat("kept", "alice")


class TestFallbackToTheThread:
    async def test_a_held_write_lock_sends_the_write_to_the_thread(self, tmp_path: Path) -> None:
        """Another connection holds BEGIN IMMEDIATE: the write is not refused and does not
        block the loop; it waits on the writer's thread and commits once the lock is free."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path) as store:
            await store.register_chat("warm", "alice")
            holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN IMMEDIATE")
            on_thread = thread_commits(store)
            done = anyio.Event()
            ticks = 0

            async def write() -> None:
                await store.register_chat("late", "alice")
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                started = time.monotonic()
                while time.monotonic() - started < 0.3:  # the loop keeps running meanwhile
                    await anyio.sleep(0.01)
                    ticks += 1
                assert not done.is_set()
                assert store.driver._inline is not None and store.driver._inline.fallbacks >= 1
                assert await store.get_chat("warm") == wl.Chat("warm", "alice")  # reads answer
                holder.execute("COMMIT")
                with anyio.fail_after(5):
                    await done.wait()
            holder.close()
            assert ticks >= 10
            assert thread_commits(store) == on_thread + 1
            assert await store.get_chat("late") == wl.Chat("late", "alice")
            # The lock is free again: the next write runs inline.
            await store.register_chat("inline", "alice")
            assert thread_commits(store) == on_thread + 1

    async def test_another_process_holding_the_lock(self, tmp_path: Path) -> None:
        """A real second process holds the write lock for a while: writes wait for it on the
        thread (with the real busy_timeout), then commit, in order."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path) as store:
            await store.register_chat("warm", "alice")
            script = textwrap.dedent(
                f"""
                import sqlite3, sys, time
                conn = sqlite3.connect({str(path)!r}, isolation_level=None)
                conn.execute("BEGIN IMMEDIATE")
                print("held", flush=True)
                time.sleep(0.4)
                conn.execute("COMMIT")
                """
            )
            async with await anyio.open_process([sys.executable, "-c", script]) as proc:
                assert proc.stdout is not None
                with anyio.fail_after(30):
                    assert (await proc.stdout.receive()).startswith(b"held")
                started = time.monotonic()
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        for i in range(3):
                            tg.start_soon(store.register_chat, f"c{i}", "alice")
                waited = time.monotonic() - started
                assert await proc.wait() == 0
            assert waited > 0.1  # they waited for the other process, not failed
            assert store.driver._inline is not None and store.driver._inline.fallbacks >= 1
            assert [await store.get_chat(f"c{i}") for i in range(3)] == [
                wl.Chat(f"c{i}", "alice") for i in range(3)
            ]

    async def test_a_lock_held_past_busy_timeout_is_store_busy(self, tmp_path: Path) -> None:
        """The thread waits only busy_timeout, then the write fails as it always did."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path, busy_timeout=0.2) as store:
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                with anyio.fail_after(5), pytest.raises(wl.StoreBusyError):
                    await store.register_chat("c", "alice")
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert await store.get_chat("c") is None


class TestInlineOff:
    async def test_inline_false_runs_everything_on_the_threads(self, tmp_path: Path) -> None:
        store = SQLiteStore(tmp_path / "x.db", inline=False)
        async with store:
            await store.register_chat("c", "alice")
            assert store.driver._inline is None
            assert thread_commits(store) == store.commits >= 1
            assert store.wakeups == "poll"  # inotify confirms on the loop's connection


class TestClosing:
    async def test_a_read_whose_turn_comes_after_closing_fails_closed(self, tmp_path: Path) -> None:
        """A read asked for just before the loop's connection closed raises StoreClosedError
        when its turn comes (it does not wait for a thread that is gone)."""
        async with SQLiteStore(tmp_path / "x.db") as store:
            inline = store.driver._inline
            assert inline is not None
            pending = inline.read_soon(lambda conn: conn.execute("SELECT 1").fetchone())
            inline.close()
            with anyio.fail_after(5), pytest.raises(wl.StoreClosedError):
                await pending
