"""The SQLite store's watcher costs and the driver details it relies on (see also test_sqlite.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.adapters.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


async def test_read_only_file_is_refused(tmp_path: Path) -> None:
    """A database file without write permission is a StoreError naming it (even for root,
    whom SQLite would let write), and the file is left as it was."""
    path = tmp_path / "ro.db"
    async with wl.open_store(f"sqlite:///{path}") as store:
        await store.register_chat("c1", "alice")
    before = path.read_bytes()
    os.chmod(path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        with pytest.raises(wl.StoreError, match=r"ro\.db.*read-only"):
            async with wl.open_store(f"sqlite:///{path}"):
                pass
    finally:
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    assert path.read_bytes() == before


async def test_watcher_cost_does_not_grow_with_waiters(tmp_path: Path) -> None:
    """One watcher per store: 100 waiters cost the same data_version checks as one, and none
    are made while nobody waits."""
    async with SQLiteStore(tmp_path / "x.db", poll_interval=0.01, wakeups="poll") as store:
        head = await store.head()

        async def polls_while_waiting(waiters: int) -> int:
            async with anyio.create_task_group() as tg:
                for _ in range(waiters):
                    tg.start_soon(store.wait_for_change, head)
                await anyio.sleep(0.05)
                before = store.watcher_polls
                await anyio.sleep(0.3)
                polls = store.watcher_polls - before
                tg.cancel_scope.cancel()
            return polls

        one = await polls_while_waiting(1)
        hundred = await polls_while_waiting(100)
        assert 0 < one <= 60 and 0 < hundred <= 60  # ~0.3 s / 10 ms (slack for a busy CI), not per waiter
        await anyio.sleep(0.05)
        idle = store.watcher_polls
        await anyio.sleep(0.2)
        assert store.watcher_polls == idle


async def test_watcher_polls_fast_right_after_a_change(tmp_path: Path) -> None:
    """After another connection commits, the watcher checks every poll_min for a while, so the
    next events of a burst arrive quickly; it then backs off to poll_interval."""
    path = tmp_path / "x.db"
    async with SQLiteStore(path, poll_interval=0.05, wakeups="poll") as store, SQLiteStore(path) as other:
        await other.register_chat("c1", "alice")
        head = await store.head()
        woke = anyio.Event()

        async def wait() -> None:
            await store.wait_for_change(head)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.1)
            await other.create_workspace("c1", "dev", expected_workspace_id=None)
            with anyio.fail_after(5):
                await woke.wait()
            # Inside the burst window the watcher polls every millisecond, not every 50 ms.
            tg.start_soon(store.wait_for_change, await store.head())
            before = store.watcher_polls
            await anyio.sleep(0.1)
            assert store.watcher_polls - before >= 10
            tg.cancel_scope.cancel()


async def test_commit_without_events_wakes_nobody(tmp_path: Path) -> None:
    """Another connection's commit that appends no event (register_chat) leaves waiters asleep;
    the next one that does wakes them (the watcher reads the head once per change)."""
    path = tmp_path / "x.db"
    async with SQLiteStore(path) as store, SQLiteStore(path) as other:
        head = await store.head()
        woke = anyio.Event()

        async def wait() -> None:
            await store.wait_for_change(head)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.02)
            await other.register_chat("c1", "alice")
            await anyio.sleep(0.1)
            assert not woke.is_set()
            await other.create_workspace("c1", "dev", expected_workspace_id=None)
            with anyio.fail_after(5):
                await woke.wait()
