"""A batch of writes on SQLite runs without a savepoint per write unless one of its writes failed
after it wrote something: refusals (decided before anything is written) need nothing undone."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_sqlite_group_commit import batch
from workspaces import stopped

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, Transition
from workspace_lifecycle.adapters.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLite is asyncio-only


def traced(store: SQLiteStore) -> list[str]:
    """The statements the writer's thread runs from now on."""
    statements: list[str] = []
    conn = store.driver._connection
    assert conn is not None

    def trace(db: sqlite3.Connection) -> None:
        db.set_trace_callback(statements.append)

    conn.submit(trace)
    return statements


async def test_refusals_in_a_batch_take_no_savepoint_per_write(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "x.db", inline=False) as store:
        ws = await stopped(store, "c1", "alice")
        statements = traced(store)
        results = await batch(
            store,
            [
                lambda: store.register_chat("a", "alice"),
                lambda: store.report_agent("nowhere", AgentLifecycle.READY),  # refused: no agent
                lambda: store.request_build(ws, Transition.START, expected_build_number=2),
                lambda: store.register_chat("b", "alice"),
            ],
        )
        assert isinstance(results[1], wl.NotFoundError)
        assert results[2].fired
        assert await store.get_chat("b") == wl.Chat("b", "alice")
        savepoints = [s for s in statements if s.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK"))]
        assert savepoints == ["SAVEPOINT batch", "RELEASE batch"]


async def test_a_write_failing_after_it_wrote_reruns_the_batch_with_savepoints(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "x.db", inline=False) as store:
        statements = traced(store)
        runs: list[str] = []

        def half_done(tx: Any) -> None:
            runs.append("half")
            tx.conn.execute("INSERT INTO chats (chat_id, owner) VALUES ('ghost', 'eve')")
            raise wl.NotFoundError("no such thing")

        results = await batch(
            store,
            [
                lambda: store.register_chat("a", "alice"),
                lambda: store.driver._write(half_done),
                lambda: store.register_chat("b", "alice"),
            ],
        )
        assert results[0] == wl.Chat("a", "alice") and results[2] == wl.Chat("b", "alice")
        assert isinstance(results[1], wl.NotFoundError)
        assert runs == ["half", "half"]  # once without savepoints, once with
        assert "ROLLBACK TO batch" in statements and "ROLLBACK TO w" in statements
        assert await store.get_chat("ghost") is None
        assert await store.get_chat("a") == wl.Chat("a", "alice")
