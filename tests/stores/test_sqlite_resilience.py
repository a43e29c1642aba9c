"""The SQLite store under trouble: driver errors, a failing watcher, cancelled opens and closes,
foreign locks, absurd numbers and unusable paths (issue "Hardening", items 7, 10-12; issue 18)."""

from __future__ import annotations

import ast
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from workspaces import stopped

import workspace_lifecycle as wl
from workspace_lifecycle.adapters import sqlite as sqlite_adapter
from workspace_lifecycle.adapters.sqlite import SQLiteStore, map_exceptions

pytestmark = pytest.mark.anyio


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tree(path: Path) -> list[Path]:
    return sorted(path.rglob("*"))


async def eventually(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds (it watches a thread's progress; polled every 10 ms)."""
    while True:
        if condition():
            return
        await anyio.sleep(0.01)


class TestErrorMapping:
    """Driver errors become the library's in one place; nothing above sees a ``sqlite3`` one."""

    @pytest.mark.parametrize(
        ("raised", "expected", "transient"),
        [
            (sqlite3.OperationalError("database is locked"), wl.StoreBusyError, True),
            (sqlite3.OperationalError("database table is locked"), wl.StoreBusyError, True),
            (sqlite3.OperationalError("disk I/O error"), wl.StoreUnavailableError, True),
            (sqlite3.OperationalError("unable to open database file"), wl.StoreUnavailableError, True),
            (sqlite3.OperationalError("attempt to write a readonly database"), wl.StoreError, False),
            (sqlite3.DatabaseError("file is not a database"), wl.StoreError, False),
            (sqlite3.IntegrityError("UNIQUE constraint failed"), wl.StoreError, False),
            (sqlite3.ProgrammingError("Cannot operate on a closed database."), wl.StoreClosedError, False),
        ],
    )
    def test_driver_errors(self, raised: Exception, expected: type[Exception], transient: bool) -> None:
        """Each sqlite3 error maps to one class of ours, transient or not, naming the file."""
        with pytest.raises(expected) as caught, map_exceptions("x.db", 5):
            raise raised
        assert isinstance(caught.value, wl.TransientStoreError) is transient
        assert not isinstance(caught.value, sqlite3.Error)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
        if expected is not wl.StoreClosedError:
            assert "'x.db'" in str(caught.value)

    @pytest.mark.parametrize(
        "raised",
        [UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogates not allowed"), OverflowError("too big")],
    )
    def test_bad_input_is_a_plain_value_error(self, raised: Exception) -> None:
        """Bad caller input on its way into the driver is a ValueError with a sentence."""
        with pytest.raises(ValueError) as caught, map_exceptions("x.db", 5):
            raise raised
        assert type(caught.value) is ValueError and len(str(caught.value)) > 20

    async def test_real_read_only_error_is_not_transient(self, tmp_path: Path) -> None:
        """A real SQLITE_READONLY (with its error code) is a plain StoreError."""
        path = tmp_path / "x.db"
        async with wl.open_store(url(path)):
            pass
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            with pytest.raises(wl.StoreError, match="read-only") as caught, map_exceptions(str(path), 5):
                conn.execute("INSERT INTO chats (chat_id, owner) VALUES ('c', 'o')")
            assert not isinstance(caught.value, wl.TransientStoreError)
        finally:
            conn.close()

    async def test_surrogate_through_the_store_is_a_value_error(self, tmp_path: Path) -> None:
        async with wl.open_store(url(tmp_path / "x.db")) as store:
            head = await store.head()
            with pytest.raises(ValueError, match="UTF-8") as caught:
                await store.register_chat("a\ud800b", "alice")
            assert type(caught.value) is ValueError
            assert await store.head() == head

    def test_no_private_driver_api(self) -> None:
        """Transactions run on the store's own thread through public calls only (aiosqlite's
        one-hop route was its private ``Connection._execute``)."""
        tree = ast.parse(Path(sqlite_adapter.__file__).read_text())
        imported = {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names
        }
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "aiosqlite" not in imported
        assert not {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} & {"_execute", "_tx"}

    async def test_one_hop_per_transaction(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A write (reads, decision, rows, events, commit) is one job for the connection's thread."""
        jobs = []
        submit = sqlite_adapter._Connection.submit

        def counting(self: Any, fn: Any, **kw: Any) -> Any:
            jobs.append(fn)
            return submit(self, fn, **kw)

        async with wl.open_store(url(tmp_path / "x.db"), inline=False) as store:  # the thread's path
            ws = await stopped(store)
            monkeypatch.setattr(sqlite_adapter._Connection, "submit", counting)
            outcome = await store.request_build(ws, wl.Transition.START, expected_build_number=2)
            assert outcome.fired and len(jobs) == 1


# --- the cross-process watcher survives ------------------------------------------------------------


class Breakable:
    """Patches ``sqlite3.connect`` so that connections made from now on (the watcher's; the
    stores are opened first) fail on demand: ``fail_next`` statements raise a disk I/O error,
    and while ``down`` every statement and every new connection fails."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fail_next = 0
        self.down = False
        self.connects = 0
        real = sqlite3.connect

        def connect(*args: Any, **kwargs: Any) -> Any:
            self.connects += 1
            if self.down:
                raise sqlite3.OperationalError("unable to open database file")
            return _BreakableConnection(real(*args, **kwargs), self)

        monkeypatch.setattr(sqlite3, "connect", connect)

    def check(self) -> None:
        if self.down:
            raise sqlite3.OperationalError("disk I/O error")
        if self.fail_next > 0:
            self.fail_next -= 1
            raise sqlite3.OperationalError("disk I/O error")


class _BreakableConnection:
    def __init__(self, conn: sqlite3.Connection, breaker: Breakable) -> None:
        self._conn = conn
        self._breaker = breaker

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self._breaker.check()
        return self._conn.execute(sql, params)

    def close(self) -> None:
        self._conn.close()


async def commit_wakes_a_waiter(here: wl.Store, there: wl.Store, chat: str) -> None:
    """A task sleeping in ``here.wait_for_change`` wakes for a commit made through ``there``."""
    before = await here.head()
    woke = anyio.Event()

    async def wait() -> None:
        await here.wait_for_change(before)
        woke.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await anyio.sleep(0.05)  # asleep, its recheck done
        await there.register_chat(chat, "alice")
        await there.create_workspace(chat, "dev", expected_workspace_id=None)
        with anyio.fail_after(3):
            await woke.wait()
    assert await here.head() > before


class TestWatcher:
    async def test_one_transient_error_does_not_end_the_watcher(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A single disk I/O error in the watcher (it used to end its thread for good: from then
        on other processes' commits were never noticed) is logged once; the watcher reconnects
        and a later commit from another connection still wakes a waiter."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path, wakeups="poll") as here, SQLiteStore(path) as there:
            breaker = Breakable(monkeypatch)
            await commit_wakes_a_waiter(here, there, "c0")  # the watcher runs, through the breaker
            assert breaker.connects == 1
            caplog.set_level(logging.WARNING, "workspace_lifecycle.sqlite")
            breaker.fail_next = 1
            async with anyio.create_task_group() as tg:
                tg.start_soon(here.wait_for_change, await here.head())  # keeps the watcher polling
                with anyio.fail_after(3):
                    await eventually(lambda: not breaker.fail_next and breaker.connects >= 2)
                tg.cancel_scope.cancel()
            await commit_wakes_a_waiter(here, there, "c1")
            await commit_wakes_a_waiter(here, there, "c2")
            failures = [r for r in caplog.records if "failed" in r.getMessage()]
            assert len(failures) == 1, caplog.records

    async def test_a_lasting_outage_is_an_error_then_recovers(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While the watcher cannot reconnect, waiters get StoreUnavailableError (not a silent
        hang through commits nobody reports); once it can, they sleep and wake as before."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path, wakeups="poll") as here, SQLiteStore(path) as there:
            breaker = Breakable(monkeypatch)
            await commit_wakes_a_waiter(here, there, "c0")
            breaker.down = True
            with anyio.fail_after(3), pytest.raises(wl.StoreUnavailableError, match="watch"):
                await here.wait_for_change(await here.head())
            with pytest.raises(wl.StoreUnavailableError):  # at once, while it lasts
                await here.wait_for_change(await here.head())
            await there.register_chat("during", "alice")  # made while nobody watches
            breaker.down = False
            with anyio.fail_after(5):
                while True:
                    try:
                        with anyio.move_on_after(0.05):
                            await here.wait_for_change(await here.head())
                        break  # it slept: the watcher is back
                    except wl.StoreUnavailableError:
                        await anyio.sleep(0.05)
            await commit_wakes_a_waiter(here, there, "c1")

    async def test_runtime_follows_other_processes_through_an_outage(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The pump of a Lifecycle keeps up with another process's build through a watcher
        outage (it retries on the store error) and after it."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path, wakeups="poll") as here, SQLiteStore(path) as there:
            ws = await stopped(here, "c", "alice")
            breaker = Breakable(monkeypatch)
            answers: list[wl.ToolResult] = []
            async with wl.Lifecycle(here, build_timeout=10) as lc:
                assert await lc.state("c", owner="alice") is wl.WorkspaceState.STOPPED
                breaker.down = True

                async def start() -> None:
                    answers.append(await lc.start_workspace("c", owner="alice"))

                with anyio.fail_after(8):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(start)
                        build = None
                        while build is None:
                            build = await there.claim_build("w")
                            await anyio.sleep(0.01)
                        assert build.workspace_id == ws
                        await there.finish_build(build.build_id, wl.JobStatus.SUCCEEDED, has_agent=False)
                breaker.down = False
            assert not answers[0].is_error and answers[0].data.get("started") is True, answers[0]


# --- closing and opening under cancellation ----------------------------------------------------------


class TestCancellation:
    async def test_cancelled_opens_and_closes_leak_nothing(self, tmp_path: Path) -> None:
        """200 stores left by a cancel scope (at open, mid-use with the watcher running, in the
        close itself) leave no thread and no file descriptor behind."""
        path = tmp_path / "x.db"
        async with wl.open_store(url(path)) as store:
            await store.register_chat("c", "alice")
        threads, fds = threading.active_count(), open_fds()
        for i in range(200):
            with anyio.move_on_after((0, 0.0003, 0.002, 0.01)[i % 4]):
                async with wl.open_store(url(path)) as store:
                    await store.wait_for_change(await store.head())  # starts the watcher
        # At most as many as before: a thread an earlier test left may end meanwhile, and its
        # files with it; a leak here would add one thread and several descriptors per store.
        assert threading.active_count() <= threads
        assert open_fds() <= fds

    async def test_close_cancelled_by_a_task_group(self, tmp_path: Path) -> None:
        """A task group cancelled while its task is inside ``async with`` still closes the store:
        its thread and files are gone, later calls raise StoreClosedError."""
        threads, fds = threading.active_count(), open_fds()
        stores: list[wl.Store] = []

        async def use(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with wl.open_store(url(tmp_path / "x.db")) as store:
                with anyio.move_on_after(0.05):
                    await store.wait_for_change(await store.head())  # the watcher runs
                stores.append(store)
                task_status.started()
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            await tg.start(use)
            tg.cancel_scope.cancel()
        assert threading.active_count() == threads and open_fds() == fds
        with pytest.raises(wl.StoreClosedError):
            await stores[0].head()

    def test_interpreter_exits_promptly(self, tmp_path: Path) -> None:
        """A process whose stores were all left by cancel scopes exits at once (the connection's
        thread used to be a non-daemon thread that was never stopped, so it never exited)."""
        script = textwrap.dedent(
            f"""
            import anyio, threading
            import workspace_lifecycle as wl

            async def main():
                for i in range(20):
                    with anyio.move_on_after((0, 0.001, 0.01)[i % 3]):
                        async with wl.open_store({url(tmp_path / "x.db")!r}) as store:
                            await store.wait_for_change(await store.head())
                print(threading.active_count())

            anyio.run(main, backend="asyncio")
            """
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 15
        assert done.stdout.strip() == "1"


# --- a foreign lock ------------------------------------------------------------------------------


class TestForeignLock:
    async def test_queued_writes_fail_at_their_own_timeout(self, tmp_path: Path) -> None:
        """Another program holds the write lock: every write queued behind the first gets its
        StoreBusyError when its own busy_timeout is up, not after the writes ahead of it each
        waited theirs (8 writes x 0.3 s used to make the last one wait 2.4 s)."""
        path = tmp_path / "x.db"
        async with SQLiteStore(path, busy_timeout=0.3) as store:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            waited: list[float] = []

            async def write(i: int) -> None:
                started = time.monotonic()
                with pytest.raises(wl.StoreBusyError, match="locked"):
                    await store.register_chat(f"c{i}", "alice")
                waited.append(time.monotonic() - started)

            try:
                async with anyio.create_task_group() as tg:
                    for i in range(8):
                        tg.start_soon(write, i)
            finally:
                other.execute("ROLLBACK")
                other.close()
            assert len(waited) == 8 and max(waited) < 1.0, waited
            # The lock gone, writes wait their full timeout again and succeed.
            assert await store.register_chat("after", "alice") == wl.Chat("after", "alice")

    async def test_busy_error_is_transient_and_nothing_is_written(self, tmp_path: Path) -> None:
        path = tmp_path / "x.db"
        async with SQLiteStore(path, busy_timeout=0.2) as store:
            ws = await stopped(store)
            head = await store.head()
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                with pytest.raises(wl.TransientStoreError):
                    await store.request_build(ws, wl.Transition.START, expected_build_number=2)
                other.execute("ROLLBACK")
            finally:
                other.close()
            assert await store.head() == head


# --- absurd numbers ------------------------------------------------------------------------------


class TestNumbers:
    async def test_cursor_beyond_any_head_reads_nothing(self, tmp_path: Path) -> None:
        """``read_events(2**70)`` is a cursor beyond the head: no events (it raised OverflowError);
        an absurd limit reads everything."""
        async with wl.open_store(url(tmp_path / "x.db")) as store:
            await stopped(store)
            head = await store.head()
            assert await store.read_events(2**70) == []
            assert await store.read_events(2**63 - 1) == []
            assert len(await store.read_events(0, limit=2**70)) == head
            assert await store.head() == head

    @pytest.mark.parametrize(
        "query",
        ["busy_timeout=inf", "busy_timeout=nan", "busy_timeout=1e12", "poll_interval=inf", "retention=inf"],
    )
    def test_absurd_url_options_are_value_errors(self, tmp_path: Path, query: str) -> None:
        """A URL option SQLite cannot take is a ValueError naming it, before any file exists."""
        path = tmp_path / "x.db"
        with pytest.raises(ValueError, match=query.split("=")[0]) as caught:
            wl.open_store(f"{url(path)}?{query}")
        assert type(caught.value) is ValueError
        assert not path.exists()


# --- paths SQLite cannot use ---------------------------------------------------------------------


class TestPaths:
    @pytest.mark.parametrize(
        ("make", "says"),
        [
            (lambda tmp: tmp / "nope" / "x.db", "does not exist"),
            (lambda tmp: tmp, "is a directory"),
            (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "x.db", "is not a directory"),
        ],
        ids=["missing-directory", "a-directory", "under-a-file"],
    )
    async def test_unusable_path_is_one_sentence(self, tmp_path: Path, make: Any, says: str) -> None:
        """A path SQLite cannot use fails at open with one sentence naming it, and creates
        nothing."""
        path = make(tmp_path)
        before = tree(tmp_path)
        with pytest.raises(ValueError) as caught:
            async with wl.open_store(url(path)):
                pass
        message = str(caught.value)
        assert says in message and repr(str(path)) in message and "\n" not in message
        assert not isinstance(caught.value, sqlite3.Error) and caught.value.__cause__ is None
        assert tree(tmp_path) == before
