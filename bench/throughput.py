"""4. Durable throughput: store events/s against the storage's bare one-row-transaction loop.

Each store write is ``report_agent``: one transaction that updates the agent row and appends one
event. SQLite: against a stdlib ``sqlite3`` loop of ``BEGIN IMMEDIATE; INSERT one row; COMMIT``
on a file with the store's pragmas (WAL, ``synchronous`` as the store sets it, the same
``busy_timeout``). PostgreSQL: against a bare psycopg loop (reusing
:mod:`bench.postgres_throughput`: 1, 4 and 16 writers, the goals at 1 and 16). SQLite: one
writer (the goal), and 4 concurrent writers for reference.
SQLite's one writer is also measured against the same transaction sent in one hop to the
store's own connection thread: the ceiling of a store on that thread, to tell its cost from ours.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio

import workspace_lifecycle as wl

from . import common, postgres_throughput
from .common import Context, Result, Row


async def sqlite_store_rate(url: str, seconds: float, writers: int, **options: Any) -> float:
    async with wl.open_store(url, **options) as store:
        return await common.report_agent_rate(store, seconds, writers)


def _prepare(conn: sqlite3.Connection, synchronous: str, busy_timeout: float) -> None:
    """The store's pragmas, and the one-row table of the bare loops."""
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE IF NOT EXISTS bare (id INTEGER PRIMARY KEY, payload TEXT)")


def _one_row_tx(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO bare (payload) VALUES (?)", ("x",))
    conn.execute("COMMIT")


def sqlite_bare_rate(path: Path, seconds: float, synchronous: str, busy_timeout: float) -> float:
    """Stdlib ``sqlite3``, in this thread: one-row transactions per second."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _prepare(conn, synchronous, busy_timeout)
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            _one_row_tx(conn)
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        conn.close()


async def sqlite_one_hop_rate(path: Path, seconds: float, synchronous: str, busy_timeout: float) -> float:
    """The same one-row transaction sent whole, in one hop, to the store's own connection thread
    (as the store runs its transactions): the ceiling of any store written on that thread."""
    from workspace_lifecycle.adapters.sqlite import _Connection

    conn = _Connection(
        lambda: sqlite3.connect(path, isolation_level=None, check_same_thread=False),
        path=str(path),
        busy_timeout=busy_timeout,
    )
    try:
        await conn.submit(lambda raw: _prepare(raw, synchronous, busy_timeout))
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            await conn.submit(_one_row_tx)
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        await conn.stop()


async def run_async(ctx: Context) -> Result:
    result = Result("throughput", ctx.quick)
    seconds = 0.1 if ctx.quick else 3.0
    if ctx.local:
        url = f"sqlite:///{ctx.tmp / f'tput-{time.monotonic_ns()}.db'}"
        async with wl.open_store(url) as s:
            synchronous = str(getattr(s, "_synchronous", "NORMAL"))
            busy = float(getattr(s, "busy_timeout", 5.0))
        bare_path = ctx.tmp / f"bare-{time.monotonic_ns()}.db"
        for writers in (1, 4):
            ours = await sqlite_store_rate(f"{url[:-3]}-{writers}.db", seconds, writers)
            bare = await anyio.to_thread.run_sync(sqlite_bare_rate, bare_path, seconds, synchronous, busy)
            result.data[f"sqlite_{writers}"] = {"ours": ours, "bare": bare}
            result.add(
                Row(
                    f"SQLite events/s, {writers} writer{'s' if writers > 1 else ''}",
                    ours,
                    "events/s",
                    bare,
                    "stdlib sqlite3 1-row tx",
                    ours / bare,
                    "ours/bare",
                    "≥ 0.5x" if writers == 1 else "",
                    ours / bare >= 0.5 if writers == 1 else None,
                    note=f"synchronous={synchronous}, WAL"
                    + ("; bare loop has 1 writer" if writers > 1 else ""),
                )
            )
            if writers == 1:
                hop = await sqlite_one_hop_rate(
                    ctx.tmp / f"hop-{time.monotonic_ns()}.db", seconds, synchronous, busy
                )
                result.data["sqlite_1"]["thread_one_hop"] = hop
                result.add(
                    Row(
                        "SQLite events/s, 1 writer, against the driver's ceiling",
                        ours,
                        "events/s",
                        hop,
                        "1-row tx in one hop to the store's thread",
                        ours / hop,
                        "ours/bare",
                        note=f"the hop alone: the store's thread at {hop / bare:.2f}x of stdlib sqlite3",
                    )
                )
    if ctx.pg_url is not None:
        pg = await postgres_throughput.measure(ctx.pg_url, seconds, 1 if ctx.quick else 3)
        result.data.update(pg)
        for row in postgres_throughput.rows(pg):
            result.add(row)
    else:
        result.note("PostgreSQL skipped (no server)")
    return result


def run(ctx: Context) -> Result:
    return anyio.run(run_async, ctx, backend="asyncio")
