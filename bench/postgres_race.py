"""Replica race on the PostgreSQL store: P processes x N concurrent ``start_workspace`` calls on
one stopped workspace, repeated R times; counts the start builds fired (want exactly 1 a round)
and the distinct build ids the callers were answered with (want 1).

One process also runs the SimulatedProvisioner. Each round stops the workspace again.

    python -m bench.postgres_race [--url ...] [--processes 4] [--calls 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import psycopg

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus

from . import common

DEFAULT_URL = os.environ.get("WORKSPACE_LIFECYCLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _line() -> str:
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


async def _one(lc: wl.Lifecycle, ids: list[object]) -> None:
    r = await lc.start_workspace("race", owner="bench")
    ids.append(None if r.is_error else r.data.get("build_id"))


def _spawn(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.postgres_race", *argv],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def replica(url: str, calls: int, provision: bool) -> None:
    async with (
        wl.open_store(url) as store,
        wl.Lifecycle(store, build_timeout=60, agent_timeout=60) as lc,
        anyio.create_task_group() as outer,
    ):
        if provision:
            outer.start_soon(wl.SimulatedProvisioner(store, build_seconds=0.1).run)
        print("ready", flush=True)
        while await _line() == "go":
            ids: list[object] = []

            async with anyio.create_task_group() as tg:
                for _ in range(calls):
                    tg.start_soon(_one, lc, ids)
            print(json.dumps(ids), flush=True)
        outer.cancel_scope.cancel()


async def main(url: str, processes: int, calls: int, rounds: int) -> None:
    async with wl.open_store(url) as store:
        await store.register_chat("race", "bench")
        ws = (await store.create_workspace("race", "dev", expected_workspace_id=None)).facts.workspace_id
        build = await store.claim_build("setup")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
        procs = [
            _spawn(["--replica", "--url", url, "--calls", str(calls)] + (["--provision"] if i == 0 else []))
            for i in range(processes)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                assert (await anyio.to_thread.run_sync(proc.stdout.readline)).strip() == "ready"
            for r in range(rounds):
                await common.stop_and_wait(store, "race")
                before = (await store.workspace_facts(ws)).latest_build
                assert before is not None
                started = time.perf_counter()
                for proc in procs:
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                answered: list[object] = []
                for proc in procs:
                    assert proc.stdout is not None
                    answered += json.loads(await anyio.to_thread.run_sync(proc.stdout.readline))
                elapsed = time.perf_counter() - started
                after = (await store.workspace_facts(ws)).latest_build
                assert after is not None
                fired = after.number - before.number
                print(
                    f"round {r + 1}: {len(answered)} calls, {fired} start build(s) fired,"
                    f" {len(set(answered))} distinct build id(s) answered,"
                    f" {sum(a is None for a in answered)} errors, {elapsed:.2f}s"
                )
        finally:
            for proc in procs:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("exit\n")
                proc.stdin.close()
                proc.wait(timeout=30)
                proc.stdout.close()


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replica", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--provision", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replica:
        anyio.run(replica, args.url, args.calls, args.provision, backend="asyncio")
        return
    schema = f"wl_bench_{uuid.uuid4().hex[:8]}"
    try:
        anyio.run(
            main, f"{args.url}?schema={schema}", args.processes, args.calls, args.rounds, backend="asyncio"
        )
    finally:
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    cli()
