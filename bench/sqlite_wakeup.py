"""Cross-process wake-up latency and idle CPU of the SQLite store's change watcher.

Latency: a child process sleeps in ``store.wait_for_change(head)`` on its own store; this process
appends one event (``report_agent``) through another store on the same file. Latency is the
child's ``time.monotonic()`` when ``wait_for_change`` returned minus ours when the committing
call returned (``from_return``), or when it was called (``from_call``); one clock for every
process on Linux.

Idle CPU: a child with 0, 1 and 100 tasks asleep in ``wait_for_change`` and nobody writing; its
CPU time (user + system, every thread) over ``--idle`` seconds as a share of one core.

    python bench/sqlite_wakeup.py [--rounds 300] [--idle 5] [--poll-interval SECONDS] [--gap SECONDS]

``--gap`` spaces the writes (default 5-13 ms, inside the watcher's fast-poll burst after a
change); ``--gap 0.3`` measures the first commit after a quiet spell (the idle interval).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus


def _options(poll_interval: float | None) -> dict[str, Any]:
    return {} if poll_interval is None else {"poll_interval": poll_interval}


# --- the child --------------------------------------------------------------------------------


async def child_wait(url: str, rounds: int, poll_interval: float | None) -> None:
    async with wl.open_store(url, **_options(poll_interval)) as store:
        for _ in range(rounds):
            head = await store.head()
            print("ready", head, flush=True)
            await store.wait_for_change(head)
            print("woke", time.monotonic(), flush=True)


async def child_idle(url: str, waiters: int, seconds: float, poll_interval: float | None) -> None:
    async with wl.open_store(url, **_options(poll_interval)) as store:
        head = await store.head()
        async with anyio.create_task_group() as tg:
            for _ in range(waiters):
                tg.start_soon(store.wait_for_change, head)
            await anyio.sleep(0.5)  # settle: threads started, imports done
            import resource

            before = resource.getrusage(resource.RUSAGE_SELF)
            started = time.monotonic()
            await anyio.sleep(seconds)
            after = resource.getrusage(resource.RUSAGE_SELF)
            wall = time.monotonic() - started
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(json.dumps({"waiters": waiters, "cpu_share": cpu / wall}), flush=True)
            tg.cancel_scope.cancel()


# --- the parent -------------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"child exited with {proc.wait()}")
    return line.strip()


async def latency(url: str, rounds: int, poll_interval: float | None, gap: float | None) -> dict[str, float]:
    async with wl.open_store(url) as store:
        await store.register_chat("bench", "bench")
        ws = (await store.create_workspace("bench", "dev", expected_workspace_id=None)).facts.workspace_id
        build = await store.claim_build("bench")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
        args = ["--child-wait", url, str(rounds)]
        if poll_interval is not None:
            args += ["--poll-interval", str(poll_interval)]
        proc = _spawn(*args)
        from_return: list[float] = []
        from_call: list[float] = []
        try:
            for i in range(rounds):
                assert _line(proc).startswith("ready")
                # Let the child fall asleep, at a random phase of its poll.
                await anyio.sleep((0.005 if gap is None else gap) + (i % 7) * 0.0013)
                called = time.monotonic()
                await store.report_agent(ws, AgentLifecycle.READY if i % 2 else AgentLifecycle.STARTING)
                returned = time.monotonic()
                woke = float(_line(proc).split()[1])
                from_return.append((woke - returned) * 1000)
                from_call.append((woke - called) * 1000)
        finally:
            proc.wait(timeout=30)
            assert proc.stdout is not None
            proc.stdout.close()

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "rounds": rounds,
        "p50_ms": statistics.median(from_return),
        "p99_ms": pct(from_return, 0.99),
        "max_ms": max(from_return),
        "from_call_p50_ms": statistics.median(from_call),
        "from_call_p99_ms": pct(from_call, 0.99),
    }


def idle(url: str, waiters: int, seconds: float, poll_interval: float | None) -> float:
    args = ["--child-idle", url, str(waiters), str(seconds)]
    if poll_interval is not None:
        args += ["--poll-interval", str(poll_interval)]
    proc = _spawn(*args)
    try:
        share = float(json.loads(_line(proc))["cpu_share"])
    finally:
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    return share


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds per idle measurement")
    parser.add_argument("--poll-interval", type=float, default=None, help="the store's poll_interval")
    parser.add_argument("--gap", type=float, default=None, help="seconds between writes")
    parser.add_argument("--child-wait", nargs=2, metavar=("URL", "ROUNDS"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--child-idle", nargs=3, metavar=("URL", "WAITERS", "SECONDS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child_wait:
        anyio.run(child_wait, args.child_wait[0], int(args.child_wait[1]), args.poll_interval)
        return
    if args.child_idle:
        url, waiters, seconds = args.child_idle
        anyio.run(child_idle, url, int(waiters), float(seconds), args.poll_interval)
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'wakeup.db'}"
        result: dict[str, Any] = {"poll_interval": args.poll_interval or "default", "gap": args.gap}
        result["latency"] = anyio.run(latency, url, args.rounds, args.poll_interval, args.gap)
        result["idle_cpu_share"] = {
            str(n): round(idle(url, n, args.idle, args.poll_interval), 4) for n in (0, 1, 100)
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
