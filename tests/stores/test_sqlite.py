"""The SQLite store's own promises: files, schema versions, bad rows, locks, retention, trio."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
import pytest
from workspaces import stopped

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, Transition, WorkspaceState
from workspace_lifecycle.adapters.sqlite import SCHEMA_VERSION, SQLiteStore

pytestmark = pytest.mark.anyio


def url(path: Path) -> str:
    return f"sqlite:///{path}"


class TestUrlsAndFiles:
    @pytest.mark.parametrize(
        "bad",
        [
            "sqlite://relative.db",
            "sqlite:///",
            "sqlite:///:memory:",
            "sqlite:/x.db",
            "sqlite:///x.db?bogus=1",
        ],
    )
    def test_malformed_urls(self, bad: str) -> None:
        """Each malformed URL is a ValueError naming the accepted forms or the bad option."""
        with pytest.raises(ValueError, match=r"sqlite:///|option|names no file"):
            wl.open_store(bad)

    def test_relative_and_absolute(self, tmp_path: Path) -> None:
        assert SQLiteStore.from_url("sqlite:///rel/x.db").path == "rel/x.db"
        assert SQLiteStore.from_url(f"sqlite:///{tmp_path}/x.db").path == f"{tmp_path}/x.db"
        store = SQLiteStore.from_url("sqlite:///x.db?busy_timeout=0.5&poll_interval=0.01&retention=60")
        assert (store.busy_timeout, store.poll_interval, store.retention) == (0.5, 0.01, 60.0)

    async def test_directory_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="is a directory"):
            async with wl.open_store(url(tmp_path)):
                pass

    async def test_missing_directory_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="does not exist"):
            async with wl.open_store(url(tmp_path / "nope" / "x.db")):
                pass

    async def test_not_a_database(self, tmp_path: Path) -> None:
        """A file that is not SQLite is a StoreError naming the file, and it is left untouched."""
        path = tmp_path / "notes.txt"
        path.write_bytes(b"not a database, just words " * 100)
        with pytest.raises(wl.StoreError, match=r"notes\.txt"):
            async with wl.open_store(url(path)):
                pass
        assert path.read_bytes() == b"not a database, just words " * 100

    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_trio_is_refused_plainly(self, tmp_path: Path) -> None:
        with pytest.raises(wl.UnsupportedBackendError, match="needs the asyncio backend"):
            async with wl.open_store(url(tmp_path / "x.db")):
                pass


class TestSchema:
    async def test_reopen_keeps_everything(self, tmp_path: Path) -> None:
        """A store reopened on the same file sees the same rows and continues the log."""
        async with wl.open_store(url(tmp_path / "x.db")) as store:
            ws = await stopped(store, "c", "o")
            head = await store.head()
        async with wl.open_store(url(tmp_path / "x.db")) as store:
            assert wl.derive_state(await store.workspace_facts(ws)) is WorkspaceState.STOPPED
            assert await store.head() == head
            await store.request_build(ws, Transition.START, expected_build_number=2)
            assert [e.seq for e in await store.read_events(head)] == [head + 1]

    async def test_newer_schema_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "x.db"
        async with wl.open_store(url(path)):
            pass
        with sqlite3.connect(path) as conn:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        with pytest.raises(wl.StoreError, match="newer than this library"):
            async with wl.open_store(url(path)):
                pass

    async def test_unknown_status_names_the_row(self, tmp_path: Path) -> None:
        """An unknown string in storage is a CorruptStateError naming table, row and column."""
        path = tmp_path / "x.db"
        async with wl.open_store(url(path)) as store:
            ws = await stopped(store, "c", "o")
            with sqlite3.connect(path) as conn:
                (build_id,) = conn.execute("SELECT build_id FROM builds WHERE number = 2").fetchone()
                conn.execute("UPDATE builds SET status = 'exploded' WHERE number = 2")
            with pytest.raises(wl.CorruptStateError) as caught:
                await store.workspace_facts(ws)
            assert (caught.value.table, caught.value.key, caught.value.column) == (
                "builds",
                build_id,
                "status",
            )
            assert "exploded" in str(caught.value)

    async def test_unknown_event_kind_names_the_row(self, tmp_path: Path) -> None:
        path = tmp_path / "x.db"
        async with wl.open_store(url(path)) as store:
            await stopped(store, "c", "o")
            with sqlite3.connect(path) as conn:
                conn.execute("UPDATE events SET kind = 'mystery' WHERE seq = 3")
            with pytest.raises(wl.CorruptStateError, match=r"events.*3.*kind"):
                await store.read_events(0)


class TestLocking:
    async def test_writer_lock_held_too_long(self, tmp_path: Path) -> None:
        """Another program holding the write lock past busy_timeout: StoreBusyError, nothing lost."""
        path = tmp_path / "x.db"
        async with wl.open_store(url(path), busy_timeout=0.2) as store:
            ws = await stopped(store, "c", "o")
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                started = time.monotonic()
                with pytest.raises(wl.StoreBusyError, match="locked"):
                    await store.request_build(ws, Transition.START, expected_build_number=2)
                assert time.monotonic() - started < 5
                other.execute("ROLLBACK")
            finally:
                other.close()
            again = await store.request_build(ws, Transition.START, expected_build_number=2)
            assert again.fired

    async def test_cancelled_caller_leaves_connection_usable(self, tmp_path: Path) -> None:
        """Cancelling callers mid-write leaves no transaction open and no half-written build."""
        async with wl.open_store(url(tmp_path / "x.db")) as store:
            ws = await stopped(store, "c", "o")
            for _ in range(20):
                with anyio.move_on_after(0):
                    await store.request_build(ws, Transition.START, expected_build_number=2)
            # A cancelled caller abandons only its wait: its write may still be queued. A write
            # awaited now runs after every one queued before it (the writer's thread is FIFO),
            # so the reads below see them all, and see the same rows.
            assert (await store.request_build(ws, Transition.STOP, expected_build_number=0)).fired is False
            facts = await store.workspace_facts(ws)
            assert facts.latest_build is not None and facts.latest_build.number in (2, 3)
            events = await store.read_events(0)
            assert (
                len([e for e in events if e.kind is wl.EventKind.BUILD_QUEUED]) == facts.latest_build.number
            )


class TestRetention:
    async def test_retention_prunes_and_runtime_resyncs(self, tmp_path: Path) -> None:
        """With retention on, old events go; a runtime whose cursor fell behind re-derives state."""
        async with wl.open_store(url(tmp_path / "x.db")) as store:
            ws = await stopped(store, "c", "o")
            async with wl.Lifecycle(store) as lc:
                await lc.register_chat("c", owner="o")
                r = await lc.start_workspace("c", owner="o", wait=False)
                assert r.data["status"] == "building"
                # Prune everything, including the events this runtime has not read yet.
                await store.prune_events(time.time() + 1)
                with pytest.raises(wl.CursorExpiredError):
                    await store.read_events(0)
                build = await store.claim_build("w")
                assert build is not None
                await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
                with anyio.fail_after(5):
                    answer = await lc.start_workspace("c", owner="o")
                assert answer.data["no_build"] is True
                assert await lc.state("c") is WorkspaceState.RUNNING
            assert wl.derive_state(await store.workspace_facts(ws)) is WorkspaceState.RUNNING

    async def test_retention_option_prunes_on_writes(self, tmp_path: Path) -> None:
        clock = [1000.0]
        async with SQLiteStore(tmp_path / "x.db", retention=10, clock=lambda: clock[0]) as store:
            await stopped(store, "a", "o")
            first = len(await store.read_events(0))
            clock[0] += 100
            await stopped(store, "b", "o")
            with pytest.raises(wl.CursorExpiredError):
                await store.read_events(0)
            assert first == 7  # chat_bound, then queued, claimed, finished for two builds
