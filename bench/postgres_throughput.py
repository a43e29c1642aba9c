"""Durable events/s of the PostgreSQL store against a bare psycopg one-row-transaction loop.

Both run in the same process, against the same server, in a throwaway schema, one after the
other, sequentially (one writer) and with ``--tasks`` concurrent writers. Each store write here
is ``report_agent``: one transaction that updates the agent row and appends one event (under the
log's commit-order lock, with its NOTIFY). The bare loop is ``BEGIN; INSERT one row; COMMIT``
on one connection per writer.

    python -m bench.postgres_throughput [--url postgresql://postgres@127.0.0.1:5432/test]
                                        [--seconds 3] [--tasks 8]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import anyio
import psycopg

import workspace_lifecycle as wl

from . import common

DEFAULT_URL = os.environ.get("WORKSPACE_LIFECYCLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def store_rate(url: str, seconds: float, tasks: int) -> float:
    async with wl.open_store(url, pool_max_size=max(tasks, 2)) as store:
        return await common.report_agent_rate(store, seconds, tasks)


async def bare_rate(base_url: str, schema: str, seconds: float, tasks: int) -> float:
    async with await psycopg.AsyncConnection.connect(base_url, autocommit=True) as setup:
        await setup.execute(f'CREATE TABLE "{schema}".bare (id bigserial PRIMARY KEY, payload text)')
    count = 0
    deadline = time.perf_counter() + seconds

    async def writer() -> None:
        nonlocal count
        async with await psycopg.AsyncConnection.connect(base_url, autocommit=True) as conn:
            while time.perf_counter() < deadline:
                async with conn.transaction():
                    await conn.execute(f'INSERT INTO "{schema}".bare (payload) VALUES (%s)', ("x",))
                count += 1

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(writer)
    return count / (time.perf_counter() - started)


async def main(url: str, seconds: float, tasks: int) -> None:
    schema = f"wl_bench_{uuid.uuid4().hex[:8]}"
    try:
        rows = []
        for n in (1, tasks):
            sub = f"{schema}_{n}"
            s = await store_rate(f"{url}?schema={sub}", seconds, n)
            b = await bare_rate(url, sub, seconds, n)
            rows.append((n, s, b))
        print(f"{'writers':>8} {'store events/s':>15} {'bare psycopg tx/s':>18} {'ratio':>6}")
        for n, s, b in rows:
            print(f"{n:>8} {s:>15.0f} {b:>18.0f} {s / b:>6.2f}")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            for n in (1, tasks):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}_{n}" CASCADE')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tasks", type=int, default=8)
    args = parser.parse_args()
    anyio.run(main, args.url, args.seconds, args.tasks, backend="asyncio")
