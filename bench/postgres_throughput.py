"""Durable events/s of the PostgreSQL store against a bare psycopg one-row-transaction loop.

Both run in the same process, against the same server, in a throwaway schema, one after the
other, with 1, 4 and 16 concurrent writers (each pair measured ``--rounds`` times, alternately;
the medians are shown). Each store write here is ``report_agent`` on the writer's own workspace:
one guarded statement in autocommit that updates the agent row and appends one event under the
log's commit-order lock, with its NOTIFY; concurrent writes of the process are group-committed.
The bare loop is ``BEGIN; INSERT one row; COMMIT`` on one connection per writer. A third loop,
the bare one plus ``pg_advisory_xact_lock`` in each transaction, shows what any design pays
that serialises commits on one lock held until the commit is durable, as the log's lock does.

    python -m bench.postgres_throughput [--url postgresql://postgres@127.0.0.1:5432/test]
                                        [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import anyio
import psycopg

import workspace_lifecycle as wl

from . import common

DEFAULT_URL = os.environ.get("WORKSPACE_LIFECYCLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
WRITERS = (1, 4, 16)
#: goal ratios (ours / bare) by number of writers
GOALS = {1: 1.0, 16: 1.5}


async def store_rate(url: str, seconds: float, tasks: int) -> float:
    return (await store_rate_and_batches(url, seconds, tasks))[0]


async def store_rate_and_batches(url: str, seconds: float, tasks: int) -> tuple[float, float]:
    """Events/s, and the mean number of writes per batch of more than one (0: none)."""
    async with wl.open_store(url, pool_max_size=max(tasks, 2)) as store:
        rate = await common.report_agent_rate(store, seconds, tasks)
        batches, writes = getattr(store, "batches", 0), getattr(store, "batched_writes", 0)
        return rate, (writes / batches if batches else 0.0)


async def statement_rate(url: str, seconds: float) -> float:
    """One writer: the store's own write (the pure decision, then its one guarded statement)
    in a bare loop on one connection, without the pool, the group commit or the error
    boundary: the ceiling of this statement shape on this server."""
    from workspace_lifecycle import writes
    from workspace_lifecycle.adapters.postgres import PostgresStore, _Seen

    async with wl.open_store(url) as store:
        assert isinstance(store, PostgresStore)
        await common.report_agent_rate(store, 0.0, 1)  # one workspace with an agent
        (ws,) = [e.workspace_id for e in await store.read_events(0) if e.kind.value == "chat_bound"]
        await store.report_agent(ws, wl.AgentLifecycle.READY)  # the store now knows its rows
        lifecycles = [wl.AgentLifecycle.STARTING, wl.AgentLifecycle.READY]
        async with await psycopg.AsyncConnection.connect(url.partition("?")[0], autocommit=True) as conn:
            await conn.execute("SELECT set_config('search_path', %s, false)", (f'"{store.schema}"',))
            count = 0
            started = time.perf_counter()
            while not count or time.perf_counter() - started < seconds:  # at least one
                known = store._known[ws]
                assert known.facts.agent is not None
                write = writes.report_agent(
                    known.facts.agent, known.facts.workspace, lifecycles[count % 2], at=0.0
                )
                query, params = store._statement(write, _Seen(ws, known.version))
                cur = await conn.execute(query, params)
                row = await cur.fetchone()
                assert row is not None
                store._known[ws] = known.after(write, int(row[0]))
                count += 1
            return count / (time.perf_counter() - started)


async def bare_rate(base_url: str, schema: str, seconds: float, tasks: int, *, lock: bool = False) -> float:
    table = "bare_locked" if lock else "bare"
    async with await psycopg.AsyncConnection.connect(base_url, autocommit=True) as setup:
        await setup.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await setup.execute(f'CREATE TABLE "{schema}".{table} (id bigserial PRIMARY KEY, payload text)')
    count = 0
    connected = 0
    go = anyio.Event()
    deadline = started = 0.0

    async def writer() -> None:
        # Every writer connects before the window opens, and commits at least once in it: the
        # window measures transactions, not connection set-up (which, with 16 writers in quick
        # mode on a loaded machine, once took the whole window: no transaction, no rate).
        nonlocal count, connected, deadline, started
        async with await psycopg.AsyncConnection.connect(base_url, autocommit=True) as conn:
            connected += 1
            if connected == tasks:
                started = time.perf_counter()
                deadline = started + seconds
                go.set()
            await go.wait()
            while True:
                async with conn.transaction():
                    if lock:
                        await conn.execute("SELECT pg_advisory_xact_lock(1464598783, 0)")
                    await conn.execute(f'INSERT INTO "{schema}".{table} (payload) VALUES (%s)', ("x",))
                count += 1
                if time.perf_counter() >= deadline:
                    break

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(writer)
    return count / (time.perf_counter() - started)


async def measure(pg_url: str, seconds: float, rounds: int) -> dict[str, Any]:
    """``{"postgres_N": {"ours", "bare", "ratio", "batch", "rounds": [...]}}`` and, for the
    most writers, the bare loop with a commit-serialising lock (``"locked"``)."""
    data: dict[str, Any] = {}
    for writers in WRITERS:
        runs = []
        for _ in range(rounds):
            with common.pg_schema(pg_url) as url:
                schema = url.rsplit("schema=", 1)[1]
                ours, batch = await store_rate_and_batches(url, seconds, writers)
                bare = await bare_rate(pg_url, schema, seconds, writers)
                locked = statement = None
                if writers == 1:
                    with common.pg_schema(pg_url) as own:
                        statement = await statement_rate(own, seconds)
                if writers == WRITERS[-1]:
                    locked = await bare_rate(pg_url, schema, seconds, writers, lock=True)
            runs.append(
                {
                    "ours": ours,
                    "bare": bare,
                    "ratio": ours / bare,
                    "batch": batch,
                    "locked": locked,
                    "statement": statement,
                }
            )
        entry: dict[str, Any] = {
            key: statistics.median(r[key] for r in runs) for key in ("ours", "bare", "ratio", "batch")
        }
        if writers == WRITERS[-1]:
            entry["locked"] = statistics.median(r["locked"] for r in runs)
        if writers == 1:
            entry["statement"] = statistics.median(r["statement"] for r in runs)
        entry["rounds"] = runs
        data[f"postgres_{writers}"] = entry
    return data


def _times(a: float, b: float) -> str:
    """``a / b`` as ``"1.23x"``; a loop that completed nothing in its window (a loaded machine
    in quick mode) has no ratio, and says so rather than dividing by zero."""
    r = common.ratio(a, b)
    return "no ratio (a loop completed nothing)" if r is None else f"{r:.2f}x"


def rows(data: dict[str, Any]) -> list[common.Row]:
    """The RESULTS.md rows of :func:`measure`'s data."""
    out = []
    for writers in WRITERS:
        d = data[f"postgres_{writers}"]
        goal = GOALS.get(writers)
        note = f"median of {len(d['rounds'])} alternating rounds; ratio = median of the rounds' ratios"
        if d["batch"]:
            note += f"; {d['batch']:.1f} writes per group commit"
        out.append(
            common.Row(
                f"PostgreSQL events/s, {writers} writer{'s' if writers > 1 else ''}",
                d["ours"],
                "events/s",
                d["bare"],
                "bare psycopg 1-row tx",
                d["ratio"],
                "ours/bare",
                f"≥ {goal}x" if goal else "",
                d["ratio"] >= goal if goal else None,
                note=note,
            )
        )
    d = data["postgres_1"]
    out.append(
        common.Row(
            "PostgreSQL events/s, 1 writer, the store's write statement in a bare loop",
            d["statement"],
            "events/s",
            d["bare"],
            "bare psycopg 1-row tx",
            common.ratio(d["statement"], d["bare"]),
            "ours/bare",
            note=(
                "the decision and its one guarded statement on one connection, without pool, group "
                f"commit or error boundary; the store reaches {_times(d['ours'], d['statement'])} of it"
            ),
        )
    )
    last = WRITERS[-1]
    d = data[f"postgres_{last}"]
    out.append(
        common.Row(
            f"PostgreSQL events/s, {last} writers, against a commit-serialising lock",
            d["ours"],
            "events/s",
            d["locked"],
            "bare 1-row tx + pg_advisory_xact_lock",
            common.ratio(d["ours"], d["locked"]),
            "ours/bare",
            note=(
                f"the bare loop itself: {_times(d['locked'], d['bare'])} of its unlocked rate; "
                "one lock held until each commit is durable forfeits PostgreSQL's group commit"
            ),
        )
    )
    return out


async def main(url: str, seconds: float, rounds: int) -> None:
    data = await measure(url, seconds, rounds)
    print(f"{'writers':>8} {'store events/s':>15} {'bare psycopg tx/s':>18} {'ratio':>6} {'goal':>6}  met")
    for writers in WRITERS:
        d = data[f"postgres_{writers}"]
        goal = GOALS.get(writers)
        met = "" if goal is None else ("met" if d["ratio"] >= goal else "not met")
        shown = f"{goal:.1f}x" if goal else ""
        print(f"{writers:>8} {d['ours']:>15.0f} {d['bare']:>18.0f} {d['ratio']:>6.2f} {shown:>6}  {met}")
    d = data[f"postgres_{WRITERS[-1]}"]
    print(f"bare loop with a commit-serialising advisory lock, {WRITERS[-1]} writers: {d['locked']:.0f} tx/s")
    print(
        f"the store's write statement in a bare loop, 1 writer: {data['postgres_1']['statement']:.0f} events/s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    anyio.run(main, args.url, args.seconds, args.rounds, backend="asyncio")
