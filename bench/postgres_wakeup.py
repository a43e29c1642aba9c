"""Cross-replica wake-up latency of the PostgreSQL store (LISTEN/NOTIFY), p50/p99.

The parent process writes one event at a time (``report_agent``, one transaction) on its store;
``--replicas`` other processes each sleep in ``wait_for_change`` on their own store, whose
fallback poll is a minute away, so only the NOTIFY can wake them in time. Each waiter stamps
``time.monotonic()`` (one clock for every process on Linux) when it wakes; latency is measured
from the moment the writer's commit returned, and from the moment the write call began.

    python bench/postgres_wakeup.py [--url postgresql://postgres@127.0.0.1:5432/test]
                                    [--rounds 200] [--replicas 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

import anyio
import psycopg

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus

DEFAULT_URL = os.environ.get("WORKSPACE_LIFECYCLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def waiter(url: str, rounds: int) -> None:
    """The replica: announce the head, sleep until it moves, print the wake time."""
    async with wl.open_store(url, poll_interval=60.0) as store:
        for _ in range(rounds):
            head = await store.head()
            print("ready", head, flush=True)
            await store.wait_for_change(head)
            print("woke", time.monotonic(), flush=True)


def _spawn(url: str, rounds: int) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--waiter", "--url", url, "--rounds", str(rounds)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def writer(url: str, rounds: int, replicas: int) -> None:
    async with wl.open_store(url) as store:
        await store.register_chat("bench", "bench")
        out = await store.create_workspace("bench", "dev", expected_workspace_id=None)
        build = await store.claim_build("bench")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
        ws = out.facts.workspace_id
        procs = [_spawn(url, rounds) for _ in range(replicas)]
        from_commit: list[float] = []
        from_call: list[float] = []
        try:
            for i in range(rounds):
                for proc in procs:
                    assert proc.stdout is not None
                    line = await anyio.to_thread.run_sync(proc.stdout.readline)
                    assert line.startswith("ready"), line
                await anyio.sleep(0.01)  # let every waiter fall asleep
                called = time.monotonic()
                await store.report_agent(ws, AgentLifecycle.READY if i % 2 else AgentLifecycle.STARTING)
                committed = time.monotonic()
                for proc in procs:
                    assert proc.stdout is not None
                    line = await anyio.to_thread.run_sync(proc.stdout.readline)
                    woke = float(line.split()[1])
                    from_commit.append((woke - committed) * 1000)
                    from_call.append((woke - called) * 1000)
        finally:
            for proc in procs:
                proc.wait(timeout=30)
                if proc.stdout is not None:
                    proc.stdout.close()
    print(f"{rounds} rounds x {replicas} replicas = {len(from_commit)} wake-ups")
    for name, values in (("from commit returned", from_commit), ("from write call", from_call)):
        print(
            f"{name:>22}: p50 {statistics.median(values):.2f} ms, p99 {pct(values, 0.99):.2f} ms,"
            f" max {max(values):.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--waiter", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.waiter:
        anyio.run(waiter, args.url, args.rounds, backend="asyncio")
        return
    schema = f"wl_bench_{uuid.uuid4().hex[:8]}"
    try:
        anyio.run(writer, f"{args.url}?schema={schema}", args.rounds, args.replicas, backend="asyncio")
    finally:
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
