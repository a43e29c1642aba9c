"""Wake-up latency across replicas behind PgBouncer's transaction pooling, against a direct store.

Starts its own PgBouncer (:mod:`bench.pgbouncer`) in front of ``--url``. In each mode two stores
(two replicas: their own pools, listeners and doorbells) share one schema: one sleeps in
``wait_for_change``, the other writes one event (``report_agent``) through PgBouncer; latency
runs from the moment the write returned to the moment the sleeper woke. Modes: ``direct`` (no
PgBouncer, LISTEN; the baseline of the same run), ``listen`` (the pool through PgBouncer, LISTEN
on a direct connection) and ``poll P`` (``listen_url=none``, ``poll_interval=P``). The fallback
poll of the listening modes is a minute away, so only the NOTIFY can wake them in time.

    python -m bench.pgbouncer_wakeup [--url postgresql://postgres@127.0.0.1:5432/test]
                                     [--rounds 40] [--poll 0.1 0.5]
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import uuid
from urllib.parse import quote

import anyio
import psycopg

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus
from workspace_lifecycle.adapters.postgres import PostgresStore

from . import pgbouncer
from .common import DEFAULT_PG_URL, pct


async def measure(url: str, rounds: int, poll_interval: float) -> tuple[list[float], float]:
    """Wake-up latencies (ms) of ``rounds`` writes, and the sleeper's head reads per second asleep."""
    async with (
        wl.open_store(url, poll_interval=poll_interval) as sleeper,
        wl.open_store(url, poll_interval=poll_interval) as writer,
    ):
        assert isinstance(sleeper, PostgresStore)
        await writer.register_chat("bench", "bench")
        ws = (await writer.create_workspace("bench", "dev", expected_workspace_id=None)).facts.workspace_id
        build = await writer.claim_build("bench")
        assert build is not None
        await writer.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
        latencies: list[float] = []
        asleep = 0.0
        for i in range(rounds):
            # A write at a random moment of the poll's period (a fixed one would meet the poll
            # at a fixed phase); 10-20 ms for the listening modes.
            delay = random.uniform(0.01, poll_interval if poll_interval < 10 else 0.02)
            lifecycle = AgentLifecycle.READY if i % 2 else AgentLifecycle.STARTING
            latency = await pgbouncer.wake_up(
                sleeper, functools.partial(writer.report_agent, ws, lifecycle), delay
            )
            latencies.append(latency * 1000)
            asleep += delay + latency
        return latencies, sleeper.polls / asleep


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_PG_URL)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--poll", type=float, nargs="*", default=[0.1, 0.5])
    args = parser.parse_args()
    executable = pgbouncer.binary()
    if executable is None:
        print("pgbouncer is not installed (apt-get install pgbouncer)", file=sys.stderr)
        return 2
    bouncer = pgbouncer.Bouncer(args.url, executable)
    schemas: list[str] = []
    try:
        print(f"{args.rounds} wake-ups per mode, one sleeping replica, one writing replica")
        baseline = None
        for name, poll in [("direct", 0.0), ("listen", 0.0), *((f"poll {p}", p) for p in args.poll)]:
            schema = f"wl_bench_{uuid.uuid4().hex[:8]}"
            schemas.append(schema)
            if name == "direct":
                url = f"{args.url}?schema={schema}"
            else:
                listen = "none" if poll else quote(args.url, safe="")
                url = f"{bouncer.database(schema)}?schema={schema}&pool_mode=transaction&listen_url={listen}"
            latencies, reads = anyio.run(measure, url, args.rounds, poll or 60.0, backend="asyncio")
            bouncer.release()
            p50, p99 = statistics.median(latencies), pct(latencies, 0.99)
            baseline = baseline or p50
            print(
                f"{name:>10}: wake-up p50 {p50:7.2f} ms, p99 {p99:7.2f} ms,"
                f" p50 {p50 / baseline:6.1f}x direct; head reads while asleep {reads:.1f}/s",
                flush=True,
            )
    finally:
        bouncer.stop()
        with psycopg.connect(args.url, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return 0


if __name__ == "__main__":
    sys.exit(main())
