"""11. Warm pools: a create answered from a warm pool against a cold create, same run.

One SQLite store, one :class:`~workspace_lifecycle.ProcessProvisioner` whose workspaces are real
processes (``python -m http.server`` on a port of their own, ready once the probe connects), one
:class:`~workspace_lifecycle.Lifecycle` with a pool of ``size``. Cold: ``size`` chats each
``create_workspace`` with no pool and wait for their workspace to run (the build spawns the
process and waits for its port). Warm: once the pool is full, ``size`` other chats each create
with ``pool="default"``: a claim (one compare-and-set) answered at once, while the keeper
rebuilds behind them. Each create is timed from the call to its answer, one at a time; the goal
is the issue's: warm at least 10x faster than cold at p50.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import anyio

import workspace_lifecycle as wl

from .common import Context, Result, Row

SERVER = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
#: The quick mode's workspace process: a bare listening socket (no site, no http.server imports),
#: which the probe finds in a fraction of http.server's start-up.
QUICK_SERVER = [
    sys.executable,
    "-S",
    "-c",
    "import signal, socket, sys; s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); signal.pause()",
    "{port}",
]


async def _until_full(lc: wl.Lifecycle, size: int) -> None:
    with anyio.fail_after(120):
        while True:
            head = await lc.store.head()
            (status,) = await lc.pool_status()
            if status["ready"] == size:
                return
            await lc.store.wait_for_change(head)


async def _drain(store: wl.Store, pool: str) -> None:
    """Delete every member of ``pool`` and wait until the provisioner ended their processes."""
    with anyio.fail_after(120):
        for member in await store.pool_members(pool):
            latest = member.latest_build
            number = latest.number if latest is not None else 0
            while latest is not None and latest.in_flight:  # a member still being built
                head = await store.head()
                await store.wait_for_change(head)
                latest = (await store.workspace_facts(member.workspace_id)).latest_build
                number = latest.number if latest is not None else 0
            await store.request_build(member.workspace_id, wl.Transition.DELETE, expected_build_number=number)
        while await store.pool_members(pool):
            head = await store.head()
            if await store.pool_members(pool):
                await store.wait_for_change(head)


async def measure(url: str, root: Path, size: int, command: list[str] = SERVER) -> dict[str, list[float]]:
    pool = wl.Pool("default", size=size)
    cold: list[float] = []
    warm: list[float] = []
    async with (
        wl.open_store(url) as store,
        wl.ProcessProvisioner(store, root=root, command=command, ready_timeout=60),
    ):
        async with wl.Lifecycle(store, pools=[pool]) as lc:
            await _until_full(lc, size)
            for i in range(size):
                await lc.register_chat(f"cold-{i}", owner="bench")
                t0 = time.perf_counter()
                r = await lc.create_workspace(f"cold-{i}", owner="bench", name="dev")
                cold.append(time.perf_counter() - t0)
                assert r.data.get("created") is True and "pooled" not in r.data, r.data
            await _until_full(lc, size)
            for i in range(size):
                await lc.register_chat(f"warm-{i}", owner="bench")
                t0 = time.perf_counter()
                r = await lc.create_workspace(f"warm-{i}", owner="bench", name="dev", pool="default")
                warm.append(time.perf_counter() - t0)
                assert r.data.get("pooled") is True, r.data
            for i in range(size):  # leave no process behind
                await lc.delete_workspace(f"cold-{i}", owner="bench")
                await lc.delete_workspace(f"warm-{i}", owner="bench")
        # The keeper is gone (it refilled the pool after the claims): delete its members too.
        await _drain(store, pool.name)
    return {"cold": cold, "warm": warm}


def run(ctx: Context) -> Result:
    result = Result("pools", ctx.quick)
    size = 3 if ctx.quick else 10
    stamp = time.time_ns()
    url = f"sqlite:///{ctx.tmp / f'pools-{stamp}.db'}"
    root = ctx.tmp / f"pools-{stamp}"
    root.mkdir(parents=True, exist_ok=True)
    if ctx.quick:
        result.note(
            "quick mode: each workspace process is a bare listening socket (python -S), not http.server"
        )
    samples = anyio.run(measure, url, root, size, QUICK_SERVER if ctx.quick else SERVER, backend="asyncio")
    result.data["samples_s"] = samples
    cold, warm = statistics.median(samples["cold"]) * 1000, statistics.median(samples["warm"]) * 1000
    ratio = cold / warm if warm else None
    result.add(
        Row(
            f"create from a warm pool of {size}, SQLite, ProcessProvisioner",
            warm,
            "ms p50",
            cold,
            "cold create (build: spawn + port probe)",
            ratio,
            "cold/warm",
            ">= 10x faster at p50",
            None if ratio is None or ctx.quick else ratio >= 10,
            note=f"{size} creates each, one at a time; max warm {max(samples['warm']) * 1000:.1f} ms,"
            f" max cold {max(samples['cold']) * 1000:.1f} ms",
        )
    )
    return result
