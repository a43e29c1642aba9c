"""One corrupt chat must not take the others down (reported bug).

The rows of one chat are corrupted behind the store's back with the stdlib ``sqlite3`` module (an
unparseable log entry and a builds row with an unknown status, as a bad migration or a foreign
writer would leave them). Requests about that chat fail with :class:`wl.CorruptStateError`
naming the row; the Lifecycle, the reaper and ``watch(None)`` keep serving every other chat.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import anyio
import attrs
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, Transition, WorkspaceState

pytestmark = pytest.mark.anyio

OWNER = "alice"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLite is asyncio-only


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def _corrupt_build(db: Path, build_id: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE builds SET status = 'exploded' WHERE build_id = ?", (build_id,))


def _corrupt_event(db: Path, workspace_id: str, chat_id: str) -> int:
    """Append an unparseable entry to the log (as the next seq); return its seq."""
    with sqlite3.connect(db) as conn:
        seq = conn.execute(
            "INSERT INTO events (kind, workspace_id, chat_id, build_number, payload, at) "
            "VALUES ('exploded', ?, ?, 1, '{}', ?)",
            (workspace_id, chat_id, time.time()),
        ).lastrowid
        assert seq is not None
        return seq


async def _complete(store: wl.Store, status: JobStatus = JobStatus.SUCCEEDED) -> wl.Build:
    with anyio.fail_after(5):
        while True:
            cursor = await store.head()
            build = await store.claim_build("test-worker")
            if build is not None:
                return await store.finish_build(build.build_id, status, has_agent=False)
            await store.wait_for_change(cursor)


async def _bad_chat(store: wl.Store) -> tuple[str, wl.Build]:
    """Chat ``bad`` with a workspace whose start build is claimed (running); ids returned."""
    await store.register_chat("bad", OWNER)
    ws = (await store.create_workspace("bad", "dev", expected_workspace_id=None)).facts.workspace_id
    build = await store.claim_build("w")
    assert build is not None and build.workspace_id == ws
    return ws, build


@attrs.define
class Outcome:
    result: wl.ToolResult | None = None
    error: BaseException | None = None
    done: anyio.Event = attrs.Factory(anyio.Event)


async def _capture(out: Outcome, fn: Callable[[], Awaitable[wl.ToolResult]]) -> None:
    try:
        out.result = await fn()
    except Exception as exc:
        out.error = exc
    finally:
        out.done.set()


async def _settle(store: wl.Store) -> None:
    """Let background requests reach their wait. SQLite runs each call on the connection's one
    thread, first come first served: a round trip of ours returns after every call queued before
    it, and wait_all_tasks_blocked then lets their callers move on to their next call."""
    for _ in range(10):
        await anyio.wait_all_tasks_blocked()
        await store.head()
    await anyio.wait_all_tasks_blocked()


def _names_the_build(exc: BaseException | None, build: wl.Build) -> bool:
    return isinstance(exc, wl.CorruptStateError) and exc.table == "builds" and exc.key == build.build_id


async def test_corrupt_chat_does_not_stop_the_lifecycle(db: Path) -> None:
    """A tracked chat's unparseable event and corrupt builds row: the pump skips the event, its
    resync meets the corrupt row; that must fail only that chat's requests, with
    CorruptStateError naming the row, while create/stop/start of other chats keep working."""
    async with wl.open_store(f"sqlite:///{db}") as store:
        bad_ws, bad_build = await _bad_chat(store)
        with anyio.fail_after(15):
            async with wl.Lifecycle(store, build_timeout=60) as lc:
                await lc.register_chat("good", owner=OWNER)
                await lc.register_chat("fresh", owner=OWNER)
                assert not (await lc.create_workspace("good", owner=OWNER, name="dev", wait=False)).is_error
                await _complete(store)
                assert await lc.state("good") is WorkspaceState.RUNNING
                async with anyio.create_task_group() as tg:
                    waiter = Outcome()  # a caller tracking the bad chat's workspace
                    tg.start_soon(_capture, waiter, lambda: lc.start_workspace("bad", owner=OWNER))
                    await _settle(store)
                    assert not waiter.done.is_set()
                    _corrupt_build(db, bad_build.build_id)
                    _corrupt_event(db, bad_ws, "bad")
                    # Another chat's request wakes the pump: it reads the corrupt entry first.
                    stop = Outcome()
                    tg.start_soon(_capture, stop, lambda: lc.stop_workspace("good", owner=OWNER))
                    await _complete(store)  # good's stop build
                    await stop.done.wait()
                    assert stop.error is None, f"another chat's stop failed: {stop.error!r}"
                    assert stop.result is not None and stop.result.data.get("stopped") is True, stop.result
                    await waiter.done.wait()
                assert _names_the_build(waiter.error, bad_build), (waiter.error, waiter.result)

                # Other chats: start, create, all still answered.
                async with anyio.create_task_group() as tg:
                    start = Outcome()
                    tg.start_soon(_capture, start, lambda: lc.start_workspace("good", owner=OWNER))
                    await _complete(store)
                await start.done.wait()
                assert start.error is None and start.result is not None, start.error
                assert start.result.data.get("started") is True, start.result.data
                created = await lc.create_workspace("fresh", owner=OWNER, name="dev", wait=False)
                assert not created.is_error and created.data["status"] == "building"

                # The corrupt chat: a clear error naming the row, every time.
                for request in (lc.start_workspace, lc.stop_workspace):
                    with pytest.raises(wl.CorruptStateError, match="builds") as caught:
                        await request("bad", owner=OWNER)
                    assert _names_the_build(caught.value, bad_build)
                    assert bad_build.build_id in str(caught.value)


@pytest.mark.parametrize("column", ["status", "lease_expires_at"])
async def test_reaper_reaps_other_chats_despite_a_corrupt_row(db: Path, column: str) -> None:
    """LeaseReaper: one corrupt builds row (its lease running out first) must not stop it from
    failing another chat's build whose lease ran out; the bad row is set aside, once."""
    clock = wl.VirtualClock(start=1_000.0)
    async with wl.open_store(f"sqlite:///{db}", clock=clock) as store:
        _, bad_build = await _bad_chat(store)
        with sqlite3.connect(db) as conn:
            value = "exploded" if column == "status" else "soon"
            conn.execute(f"UPDATE builds SET {column} = ? WHERE build_id = ?", (value, bad_build.build_id))
        await store.register_chat("good", OWNER)
        await store.create_workspace("good", "dev", expected_workspace_id=None)
        orphan = await store.claim_build("dead-worker", lease_seconds=60)
        assert orphan is not None and orphan.transition is Transition.START
        async with wl.LeaseReaper(store, clock=clock) as reaper:
            clock.advance(61)
            with anyio.fail_after(5):
                while not reaper.expired:
                    head = await store.head()  # the expiry is a write: it moves the log
                    if not reaper.expired:
                        await store.wait_for_change(head)
            for _ in range(100):  # the row read after it (setting a row aside writes nothing)
                if reaper.unreadable:
                    break
                await anyio.sleep(0.01)
        assert reaper.expired == 1 and reaper.unreadable == {bad_build.build_id}
        facts = await store.workspace_facts(orphan.workspace_id)
        assert facts.latest_build is not None and facts.latest_build.status is JobStatus.FAILED


async def test_watch_all_yields_other_chats_despite_a_corrupt_row(db: Path) -> None:
    """watch(None) with one chat's builds row corrupt still yields the other chats' changes."""
    async with wl.open_store(f"sqlite:///{db}") as store:
        _, bad_build = await _bad_chat(store)
        _corrupt_build(db, bad_build.build_id)
        with anyio.fail_after(10):
            async with wl.Lifecycle(store) as lc:
                await lc.register_chat("good", owner=OWNER)
                seen: list[wl.StateChange] = []
                failure: list[BaseException] = []

                async def watch() -> None:
                    try:
                        async with aclosing(lc.watch(None)) as stream:
                            async for change in stream:
                                if change.chat_id == "good":
                                    seen.append(change)
                                    if change.to_state is WorkspaceState.RUNNING:
                                        return
                    except Exception as exc:
                        failure.append(exc)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch)
                    await _settle(store)
                    assert not failure, f"watch(None) failed for every chat: {failure[0]!r}"
                    assert not (await lc.create_workspace("good", owner=OWNER, wait=False)).is_error
                    await _complete(store)
                assert not failure, f"watch(None) failed for every chat: {failure[0]!r}"
                assert [c.to_state for c in seen] == [WorkspaceState.BUILDING, WorkspaceState.RUNNING]


def test_status_lists_the_other_chats_and_names_the_unreadable_one(tmp_path: Path) -> None:
    """``workspace-lifecycle status`` with one corrupt builds row: every other chat is listed,
    the corrupt one says it is unreadable and why (before: one traceback, no listing)."""
    import subprocess
    import sys

    db = tmp_path / "s.db"

    async def setup() -> None:
        async with wl.open_store(f"sqlite:///{db}") as store:
            for chat in ("good", "bad"):
                await store.register_chat(chat, "o")
                await store.create_workspace(chat, "dev", expected_workspace_id=None)

    anyio.run(setup)
    with sqlite3.connect(db) as conn:
        bad = conn.execute("SELECT workspace_id FROM chats WHERE chat_id = 'bad'").fetchone()[0]
        conn.execute("UPDATE builds SET status = 'exploded' WHERE workspace_id = ?", (bad,))
    out = subprocess.run(
        [sys.executable, "-m", "workspace_lifecycle", "status", "--db", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert "building" in lines["good"]
    assert "unreadable" in lines["bad"] and "exploded" in lines["bad"]
