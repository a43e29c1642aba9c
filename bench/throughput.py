"""4. Durable throughput: store events/s against the storage's bare one-row-transaction loop.

Each store write is ``report_agent``: one transaction that updates the agent row and appends one
event. SQLite: against a stdlib ``sqlite3`` loop of ``BEGIN IMMEDIATE; INSERT one row; COMMIT``
on a file with the store's pragmas (WAL, ``synchronous`` as the store sets it, the same
``busy_timeout``), at 1, 4, 16 and 64 concurrent writers (the store commits concurrent writes
together; the bare loop has one writer: it is what one program gets from SQLite one transaction
at a time). SQLite's one writer is also measured against the same one-row transaction sent in
one hop to the store's own connection thread: the ceiling of any store that awaits each write
through that thread, to tell the hop's cost from ours. PostgreSQL: against a bare psycopg loop
(reusing :mod:`bench.postgres_throughput`: 1, 4 and 16 writers, the goals at 1 and 16).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle.adapters.driver import Plan
from workspace_lifecycle.adapters.store import DriverStore

from . import common, postgres_throughput
from .common import Context, Result, Row


async def sqlite_store_rate(url: str, seconds: float, writers: int, **options: Any) -> float:
    return (await sqlite_store_figures(url, seconds, writers, **options))[0]


async def sqlite_store_figures(url: str, seconds: float, writers: int, **options: Any) -> tuple[float, float]:
    """Events/s of ``writers`` concurrent ``report_agent`` loops, and the writes per COMMIT
    (group commit's batch size; the set-up writes, made one at a time, are included)."""
    async with wl.open_store(url, **options) as store:
        rate = await common.report_agent_rate(store, seconds, writers)
        writes, commits = getattr(store, "transactions", 0), getattr(store, "commits", 0)
        return rate, writes / commits if commits else 1.0


#: SQLite's goals (ours/bare) by number of concurrent writers.
SQLITE_GOALS = {1: 0.25, 64: 1.0}


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
        while True:  # at least one: a short window on a loaded machine may be over before it
            _one_row_tx(conn)
            count += 1
            if time.perf_counter() >= deadline:
                break
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
        while True:  # at least one (the rows divide by this rate)
            await conn.submit(_one_row_tx)
            count += 1
            if time.perf_counter() >= deadline:
                break
        return count / (time.perf_counter() - started)
    finally:
        await conn.stop()


async def sqlite_write_work_rate(
    path: Path, seconds: float, synchronous: str, busy_timeout: float, batch: int = 64
) -> float:
    """The store's own work for ``report_agent`` (its read, the decision, the agent row, the
    event, each in a savepoint) run back to back on one thread, ``batch`` writes per COMMIT, with
    no hop and no event loop: the ceiling of group commit at that batch size. The work is the
    driver's transaction body for the very plans the store makes (caught on their way to it)."""
    from workspace_lifecycle.adapters.sqlite.driver import transaction_body
    from workspace_lifecycle.adapters.sqlite.persist import Tx

    async with wl.open_store(
        f"sqlite:///{path}", synchronous=synchronous, busy_timeout=busy_timeout
    ) as store:
        await store.register_chat("c", "bench")
        ws = (await store.create_workspace("c", "dev", expected_workspace_id=None)).facts.workspace_id
        build = await store.claim_build("bench")
        assert build is not None
        await store.finish_build(build.build_id, wl.JobStatus.SUCCEEDED, has_agent=True)
    bodies = [transaction_body(await _plan_of_report_agent(ws, lifecycle)) for lifecycle in _LIFECYCLES]

    def loop() -> float:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            _prepare(conn, synchronous, busy_timeout)
            count = 0
            started = time.perf_counter()
            deadline = started + seconds
            while True:  # at least one COMMIT (the rows divide by this rate)
                conn.execute("BEGIN IMMEDIATE")
                for _ in range(batch):
                    conn.execute("SAVEPOINT w")
                    bodies[count % 2](Tx(conn))
                    conn.execute("RELEASE w")
                    count += 1
                conn.execute("COMMIT")
                if time.perf_counter() >= deadline:
                    break
            return count / (time.perf_counter() - started)
        finally:
            conn.close()

    return await anyio.to_thread.run_sync(loop)


_LIFECYCLES = (wl.AgentLifecycle.STARTING, wl.AgentLifecycle.READY)


class _PlanCatcher:
    """Stands for a driver just long enough to catch the plan a store write hands it."""

    def __init__(self) -> None:
        self.url = "catch://"
        self.clock = time.time
        self.plans: list[Plan[Any]] = []

    async def transact(self, plan: Plan[Any]) -> None:
        self.plans.append(plan)


async def _plan_of_report_agent(workspace_id: str, lifecycle: wl.AgentLifecycle) -> Plan[Any]:
    catcher = _PlanCatcher()
    await DriverStore(catcher).report_agent(workspace_id, lifecycle)  # type: ignore[arg-type]
    return catcher.plans[0]


async def run_async(ctx: Context) -> Result:
    result = Result("throughput", ctx.quick)
    seconds = 0.05 if ctx.quick else 3.0
    if ctx.quick:
        result.note(f"quick mode: each rate over {seconds:g} s; PostgreSQL's pairs once each, not 3 times")
    if ctx.local:
        url = f"sqlite:///{ctx.tmp / f'tput-{time.monotonic_ns()}.db'}"
        async with wl.open_store(url) as s:
            synchronous = str(getattr(getattr(s, "driver", s), "_synchronous", "NORMAL"))
            busy = float(getattr(s, "busy_timeout", 5.0))
        bare_path = ctx.tmp / f"bare-{time.monotonic_ns()}.db"

        async def bare_rate() -> float:
            return await anyio.to_thread.run_sync(sqlite_bare_rate, bare_path, seconds, synchronous, busy)

        # On a shared machine one bare sample can land in a quiet or a busy second: it is
        # measured between every two figures, and every ratio is taken against the best sample.
        bare_samples = [await bare_rate()]
        figures: dict[int, tuple[float, float]] = {}
        for writers in (1, 4, 16, 64):
            figures[writers] = await sqlite_store_figures(f"{url[:-3]}-{writers}.db", seconds, writers)
            bare_samples.append(await bare_rate())
        hop = await sqlite_one_hop_rate(ctx.tmp / f"hop-{time.monotonic_ns()}.db", seconds, synchronous, busy)
        work = await sqlite_write_work_rate(
            ctx.tmp / f"work-{time.monotonic_ns()}.db", seconds, synchronous, busy
        )
        work_1 = await sqlite_write_work_rate(
            ctx.tmp / f"work1-{time.monotonic_ns()}.db", seconds, synchronous, busy, batch=1
        )
        bare_samples.append(await bare_rate())
        bare = max(bare_samples)
        result.data["sqlite_bare_samples"] = bare_samples
        for writers, (ours, per_commit) in figures.items():
            result.data[f"sqlite_{writers}"] = {"ours": ours, "bare": bare, "writes_per_commit": per_commit}
            goal = SQLITE_GOALS.get(writers)
            result.add(
                Row(
                    f"SQLite events/s, {writers} writer{'s' if writers > 1 else ''}",
                    ours,
                    "events/s",
                    bare,
                    "stdlib sqlite3 1-row tx",
                    ours / bare,
                    "ours/bare",
                    f"≥ {goal:g}x" if goal is not None else "",
                    ours / bare >= goal if goal is not None else None,
                    note=f"synchronous={synchronous}, WAL; {per_commit:.1f} writes per COMMIT; "
                    f"bare loop: 1 writer, best of {len(bare_samples)} samples in this run",
                )
            )
            if writers == 1:
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
                result.data["sqlite_1"]["write_work_alone"] = work_1
                bound = 1 / (1 / hop + 1 / work_1)
                result.add(
                    Row(
                        "SQLite events/s, 1 writer, against the write's own work",
                        ours,
                        "events/s",
                        work_1,
                        "report_agent's statements and decision, 1 per COMMIT, no hop",
                        ours / work_1,
                        "ours/bare",
                        note=f"the hop plus this work, one after the other: {bound:,.0f} events/s, "
                        f"{bound / bare:.2f}x of stdlib sqlite3",
                    )
                )
            if writers == 64:
                result.data["sqlite_64"]["write_work_batched"] = work
                result.add(
                    Row(
                        "SQLite events/s, 64 writers, against the write's own work",
                        ours,
                        "events/s",
                        work,
                        "report_agent's statements and decision, 64 per COMMIT, no hop",
                        ours / work,
                        "ours/bare",
                        note=f"the write's own work alone: {work / bare:.2f}x of stdlib sqlite3",
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
