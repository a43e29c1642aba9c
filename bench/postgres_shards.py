"""PostgreSQL notification shards: notifications received per store, and cross-store wake-up
p50/p99, with one channel (the default, the baseline) and with ``shards`` in the same run.

The parent writes ``report_agent`` (one commit each) on ``--stores`` workspaces, one per shard,
round robin; store process i waits on workspace i only (its interest), its fallback poll a
minute away, and stamps ``time.monotonic()`` when an event of its workspace wakes it. Latency
is measured from the moment the writer's commit returned.

    python bench/postgres_shards.py [--stores 8] [--rounds 400] [--shards 8]
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
from workspace_lifecycle.adapters.base import Topic
from workspace_lifecycle.adapters.postgres import shard_of

URL = os.environ.get("WORKSPACE_LIFECYCLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def waiter(url: str, shards: int, ws: str) -> None:
    """A store process waiting on ``ws``: print when an event of it wakes us; at ``exit`` on
    stdin, how many notifications the store received."""
    async with wl.open_store(url, poll_interval=60.0, shards=shards) as store:
        with store.interest(Topic.workspace(ws)):
            cursor = await store.head()
            print("ready", flush=True)
            async with anyio.create_task_group() as tg:

                async def stop() -> None:
                    await anyio.to_thread.run_sync(sys.stdin.readline)
                    tg.cancel_scope.cancel()

                tg.start_soon(stop)
                while True:
                    await store.wait_for_change(cursor)
                    woke = time.monotonic()
                    for e in await store.read_events(cursor):
                        cursor = e.seq
                        if e.workspace_id == ws:
                            print("woke", e.seq, woke, flush=True)
        print("count", store.notifications_received, store.listener_wakeups, flush=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _spawn(url: str, shards: int, ws: str) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--waiter", url, str(shards), ws]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


async def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line: str = await anyio.to_thread.run_sync(proc.stdout.readline)
    return line


async def writer(url: str, shards: int, stores: int, rounds: int) -> tuple[list[int], list[float]]:
    """One run: the notifications each store received, and the wake-up latencies (ms)."""
    async with wl.open_store(url, shards=shards) as store:
        found: dict[int, str] = {}
        i = 0
        while len(found) < stores:  # running workspaces until each shard holds one
            i += 1
            await store.register_chat(f"c{i}", "bench")
            out = await store.create_workspace(f"c{i}", "dev", expected_workspace_id=None)
            build = await store.claim_build("bench")
            assert build is not None
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
            found.setdefault(shard_of(out.facts.workspace_id, stores), out.facts.workspace_id)
        workspaces = [found[k] for k in range(stores)]
        procs = [_spawn(url, shards, ws) for ws in workspaces]
        latencies: list[float] = []
        counts: list[int] = []
        try:
            for proc in procs:
                assert (await _line(proc)).startswith("ready")
            await anyio.sleep(0.5)  # every listener LISTENs now
            for r in range(rounds):
                k = r % stores
                await anyio.sleep(0.005)  # let the waiter fall asleep again
                lifecycle = AgentLifecycle.READY if (r // stores) % 2 else AgentLifecycle.STARTING
                await store.report_agent(workspaces[k], lifecycle)
                committed = time.monotonic()
                line = await _line(procs[k])
                assert line.startswith("woke"), line
                latencies.append((float(line.split()[2]) - committed) * 1000)
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("exit\n")
                proc.stdin.flush()
            for proc in procs:
                while line := await _line(proc):
                    if line.startswith("count"):
                        counts.append(int(line.split()[1]))
        finally:
            for proc in procs:
                proc.wait(timeout=30)
    return counts, latencies


def run(shards: int, stores: int, rounds: int) -> tuple[list[int], list[float]]:
    schema = f"wl_bench_{uuid.uuid4().hex[:8]}"
    try:
        return anyio.run(writer, f"{URL}?schema={schema}", shards, stores, rounds, backend="asyncio")
    finally:
        with psycopg.connect(URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--waiter":
        anyio.run(waiter, sys.argv[2], int(sys.argv[3]), sys.argv[4], backend="asyncio")
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stores", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--shards", type=int, default=8, help="shards of the second run (default 8)")
    args = parser.parse_args()
    print(f"{args.stores} store processes, each waiting on one workspace; {args.rounds} writes round robin")
    results = {}
    for shards in (0, args.shards):
        counts, latencies = results[shards] = run(shards, args.stores, args.rounds)
        name = "one channel" if not shards else f"shards={shards}"
        print(
            f"{name:>12}: notifications received per store {counts} (total {sum(counts)});"
            f" wake-up from commit p50 {statistics.median(latencies):.2f} ms,"
            f" p99 {pct(latencies, 0.99):.2f} ms, max {max(latencies):.2f} ms"
        )
    (base, base_lat), (sharded, lat) = results[0], results[args.shards]
    print(
        f"ratio shards/one channel: notifications {sum(sharded) / sum(base):.3f},"
        f" p50 {statistics.median(lat) / statistics.median(base_lat):.2f},"
        f" p99 {pct(lat, 0.99) / pct(base_lat, 0.99):.2f}"
    )


if __name__ == "__main__":
    main()
