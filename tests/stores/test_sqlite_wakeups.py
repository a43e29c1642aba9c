"""How a SQLite store learns of other processes' commits: inotify on the ``-wal`` file where it
works (chosen at open, reported as ``store.wakeups``), polling ``data_version`` otherwise."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.adapters.sqlite import SQLiteStore, wakeups
from workspace_lifecycle.adapters.sqlite.wakeups import FileWatch
from workspace_lifecycle.adapters.sqlite.watcher import Watcher

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLite is asyncio-only


def commit_from_another_process(path: Path, chat: str) -> subprocess.Popen[bytes]:
    """A child process that opens its own store on ``path`` and registers ``chat`` with a
    workspace (a commit that appends events)."""
    script = textwrap.dedent(
        f"""
        import anyio, workspace_lifecycle as wl
        async def main():
            async with wl.open_store("sqlite:///{path}") as store:
                await store.register_chat({chat!r}, "alice")
                await store.create_workspace({chat!r}, "dev", expected_workspace_id=None)
        anyio.run(main)
        """
    )
    return subprocess.Popen([sys.executable, "-c", script])


async def wait_then_set(store: wl.Store, head: int, woke: anyio.Event) -> None:
    await store.wait_for_change(head)
    woke.set()


class TestChoice:
    async def test_inotify_on_a_local_filesystem(self, tmp_path: Path) -> None:
        async with SQLiteStore(tmp_path / "x.db") as store:
            assert store.wakeups == "inotify"
            assert isinstance(store.driver.watcher, FileWatch)

    async def test_poll_when_asked(self, tmp_path: Path) -> None:
        async with wl.open_store(f"sqlite:///{tmp_path / 'x.db'}?wakeups=poll") as store:
            assert isinstance(store, SQLiteStore)
            assert store.wakeups == "poll"
            assert isinstance(store.driver.watcher, Watcher)

    async def test_a_bad_option_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="wakeups must be auto, inotify or poll"):
            SQLiteStore(tmp_path / "x.db", wakeups="kqueue")

    async def test_poll_without_inotify_simple(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The library missing (or another platform): polling, and still woken across
        connections."""
        monkeypatch.setitem(sys.modules, "inotify_simple", None)  # import fails
        path = tmp_path / "x.db"
        async with SQLiteStore(path, poll_interval=0.01) as store, SQLiteStore(path) as other:
            assert store.wakeups == "poll"
            assert "inotify_simple" in store.driver.wakeups_reason
            head = await store.head()
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.wait_for_change, head)
                await anyio.sleep(0.05)
                await other.register_chat("c", "alice")
                await other.create_workspace("c", "dev", expected_workspace_id=None)
            assert store.watcher_polls > 0

    async def test_poll_when_the_inotify_limits_are_reached(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import inotify_simple

        def refuse(*args: object, **kwargs: object) -> None:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(inotify_simple, "INotify", refuse)
        async with SQLiteStore(tmp_path / "x.db") as store:
            assert store.wakeups == "poll"
            assert "Too many open files" in store.driver.wakeups_reason
        with pytest.raises(wl.StoreUnavailableError, match="inotify"):
            async with SQLiteStore(tmp_path / "y.db", wakeups="inotify"):
                pass

    async def test_poll_on_a_network_filesystem(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """inotify does not see other machines' writes to an NFS file."""
        monkeypatch.setattr(wakeups, "filesystem", lambda path: "nfs4")
        async with SQLiteStore(tmp_path / "x.db") as store:
            assert store.wakeups == "poll"
            assert "nfs4" in store.driver.wakeups_reason

    def test_the_filesystem_is_told(self, tmp_path: Path) -> None:
        kind = wakeups.filesystem(str(tmp_path))
        assert kind is not None and kind not in wakeups.NETWORK_FILESYSTEMS


class TestInotify:
    async def test_another_process_commit_wakes_through_inotify(self, tmp_path: Path) -> None:
        """A commit by another process wakes the waiter through a file event, well before the
        first safety check would have noticed it."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path) as store:
            watch = store.driver.watcher
            assert isinstance(watch, FileWatch)
            head = await store.head()
            woke = anyio.Event()
            committed_at: list[float] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_then_set, store, head, woke)
                await anyio.sleep(0.02)
                proc = commit_from_another_process(path, "c")
                assert await anyio.to_thread.run_sync(proc.wait) == 0
                committed_at.append(time.monotonic())
                with anyio.fail_after(5):
                    await woke.wait()
            assert watch.signals >= 1
            assert await store.head() > head
            # Confirmed by data_version checks made on signals, a handful, not a poll's worth.
            assert 1 <= watch.polls < 50

    async def test_nothing_runs_while_nobody_waits(self, tmp_path: Path) -> None:
        path = tmp_path / "x.db"
        async with SQLiteStore(path) as store, SQLiteStore(path, wakeups="poll") as other:
            watch = store.driver.watcher
            assert isinstance(watch, FileWatch)
            head = await store.head()
            with anyio.move_on_after(0.05):
                await store.wait_for_change(head)
            assert not watch.running
            polls, signals = watch.polls, watch.signals
            for i in range(5):
                await other.register_chat(f"c{i}", "alice")
            await anyio.sleep(0.1)
            assert (watch.polls, watch.signals) == (polls, signals)

    async def test_a_replaced_file_falls_back_to_polling(self, tmp_path: Path) -> None:
        """The database renamed away (and back) while watched: the store polls from then on,
        and a waiter is still woken by the next commit."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path, poll_interval=0.01) as store, SQLiteStore(path) as other:
            assert store.wakeups == "inotify"
            head = await store.head()
            woke = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_then_set, store, head, woke)
                await anyio.sleep(0.02)
                os.rename(path, tmp_path / "moved.db")
                os.rename(tmp_path / "moved.db", path)
                with anyio.fail_after(5):
                    while store.wakeups != "poll":  # noqa: ASYNC110 - the switch is what we watch
                        await anyio.sleep(0.01)
                assert isinstance(store.driver.watcher, Watcher)
                await other.register_chat("c", "alice")
                await other.create_workspace("c", "dev", expected_workspace_id=None)
                with anyio.fail_after(5):
                    await woke.wait()
            assert "replaced or removed" in store.driver.wakeups_reason
