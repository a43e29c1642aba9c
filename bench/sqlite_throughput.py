"""Durable events/s of the SQLite store against a stdlib ``sqlite3`` one-row-transaction loop.

Both run in this process, one after the other, on fresh files with the same pragmas (WAL, the
same ``synchronous``, the same ``busy_timeout``), for each ``synchronous`` setting asked for.
Each store write is ``report_agent``: one ``BEGIN IMMEDIATE`` transaction that reads and updates
the agent row and appends one event, run whole on aiosqlite's connection thread. The bare loop
is ``BEGIN IMMEDIATE; INSERT one row; COMMIT`` on a stdlib connection in this thread (no hop).

    python bench/sqlite_throughput.py [--seconds 3] [--synchronous NORMAL FULL]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus

LIFECYCLES = [AgentLifecycle.STARTING, AgentLifecycle.READY]


async def store_rate(path: Path, seconds: float, synchronous: str) -> float:
    async with wl.open_store(f"sqlite:///{path}", synchronous=synchronous) as store:
        await store.register_chat("bench", "bench")
        out = await store.create_workspace("bench", "dev", expected_workspace_id=None)
        build = await store.claim_build("bench")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
        ws = out.facts.workspace_id
        before = await store.head()
        started = time.perf_counter()
        deadline = started + seconds
        i = 0
        while time.perf_counter() < deadline:
            await store.report_agent(ws, LIFECYCLES[i % 2])
            i += 1
        elapsed = time.perf_counter() - started
        events = len(await store.read_events(before, limit=10**9))
        assert events == i
        return events / elapsed


def bare_rate(path: Path, seconds: float, synchronous: str, busy_timeout_ms: int = 5000) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode = WAL").fetchone()
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        started = time.perf_counter()
        deadline = started + seconds
        n = 0
        while time.perf_counter() < deadline:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO rows (payload) VALUES (?)", ('{"agent":"ready"}',))
            conn.execute("COMMIT")
            n += 1
        return n / (time.perf_counter() - started)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--synchronous", nargs="+", default=["NORMAL", "FULL"])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for synchronous in args.synchronous:
            store = anyio.run(store_rate, Path(tmp) / f"store-{synchronous}.db", args.seconds, synchronous)
            bare = bare_rate(Path(tmp) / f"bare-{synchronous}.db", args.seconds, synchronous)
            results.append(
                {
                    "synchronous": synchronous,
                    "store_events_per_s": round(store),
                    "stdlib_tx_per_s": round(bare),
                    "ratio": round(store / bare, 3),
                }
            )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
