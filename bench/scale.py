"""5. Scale: N workspaces (10,000) through create → stop → start → agent_ready in one process.

Each run is a fresh child process (so peak RSS is that run's own), with the simulated
provisioner in the same process (builds and agents complete at once):

* wall time of N concurrent callers each doing register → create → stop → start (the start
  answers once the agent is ready), and the process's peak RSS (``ru_maxrss``) after it;
* the same flow on the lower-bound sketch of :mod:`bench.sketch` (a dict table, anyio tasks, a
  log, a pump, one provisioner), in the same invocation: the memory store's goal is a ratio to it;
* the memory run again, and the sketch again, in processes that set the cyclic garbage
  collector the way a chat runtime may (:data:`TUNED_GC`; the library never touches it): what
  that buys, measured both ways in the same invocation;
* idle CPU while N ``start_workspace`` callers wait on builds nobody provisions (the pump and
  N waiters asleep), against N Coder-style callers polling the same rows every 2 s.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import anyio

import workspace_lifecycle as wl

from . import common, sketch
from .common import Context, Result, Row

#: What the GC-tuned runs do first: ``gc.freeze()`` (the objects of the imports are never walked
#: again) and a generation-0 threshold of 50,000 allocations instead of 700, with the older
#: generations collected 20 times rarer each (instead of 10).
TUNED_GC = (50_000, 20, 20)


def tune_gc() -> None:
    gc.freeze()
    gc.set_threshold(*TUNED_GC)


async def sketch_child(n: int, tuned: bool) -> dict[str, Any]:
    """The lower-bound sketch's run, in its own process (``python -m bench._child sketch``)."""
    if tuned:
        tune_gc()
    out: dict[str, Any] = {"n": n, "rss_start_mb": common.peak_rss_mb(), "gc": list(gc.get_threshold())}
    out["wall_s"] = await sketch.run(n)
    out["rss_mb"] = common.peak_rss_mb()
    return out


async def child(
    url: str,
    n: int,
    idle_seconds: float,
    interval: float = common.CODER_POLL_SECONDS,
    limit: float = 180.0,
    *,
    tuned: bool = False,
) -> dict[str, Any]:
    """Runs in the child process; returns the figures as a JSON-able dict.

    If the N flows have not all finished after ``limit`` seconds, says how many did instead of
    waiting for ever. ``tuned``: set the GC as :func:`tune_gc` first, and measure only the flow
    (no idle figures)."""
    if tuned:
        tune_gc()
    out: dict[str, Any] = {"n": n, "rss_start_mb": common.peak_rss_mb(), "limit_s": limit}
    out["gc"] = list(gc.get_threshold())
    collections = [g["collections"] for g in gc.get_stats()]
    done = 0
    chats = [f"s{i}" for i in range(n)]
    async with wl.open_store(url) as store, wl.Lifecycle(store, build_timeout=3600, agent_timeout=3600) as lc:

        async def flow(chat: str) -> None:
            nonlocal done
            await lc.register_chat(chat, owner="bench")
            for call in (lc.create_workspace, lc.stop_workspace, lc.start_workspace):
                r = await call(chat, owner="bench")
                assert not r.is_error and "error" not in r.data, r.text
            done += 1

        t0 = time.monotonic()
        with anyio.move_on_after(limit) as cut:
            async with wl.SimulatedProvisioner(store), anyio.create_task_group() as tg:
                for chat in chats:
                    tg.start_soon(flow, chat)
        out["wall_s"] = time.monotonic() - t0
        out["gc_collections"] = [
            g["collections"] - c for g, c in zip(gc.get_stats(), collections, strict=True)
        ]
        out["completed"] = done
        out["rss_mb"] = common.peak_rss_mb()
        out["resyncs"] = getattr(lc, "resyncs", None)
        if cut.cancelled_caught:
            out["timed_out"] = True
            return out
        assert await lc.state(chats[-1]) is wl.WorkspaceState.AGENT_READY
        if tuned:
            return out

        async def stop(chat: str) -> None:
            await lc.stop_workspace(chat, owner="bench")

        async with wl.SimulatedProvisioner(store), anyio.create_task_group() as tg:
            for chat in chats:
                tg.start_soon(stop, chat)

        # N callers wait on start builds nobody provisions. Measure once every caller has fired
        # its build and the pump has applied all N build_queued events (on SQLite the N writes
        # take seconds: measuring earlier would count them as idle time).
        applied = lc.events_applied
        async with anyio.create_task_group() as tg:
            for chat in chats:
                tg.start_soon(lambda c=chat: lc.start_workspace(c, owner="bench"))
            while lc.tracked < n or lc.events_applied < applied + n:  # noqa: ASYNC110 - a harness polling counters
                await anyio.sleep(0.05)
            await anyio.sleep(common.settle(idle_seconds))
            out["idle_cpu_percent"] = await common.idle_cpu_percent(idle_seconds)
            out["rss_waiting_mb"] = common.peak_rss_mb()
            tg.cancel_scope.cancel()

        # The same N callers written Coder's way: their builds are still pending; they poll.
        async with anyio.create_task_group() as tg:
            for chat in chats:
                tg.start_soon(common.coder_start, store, chat, interval)
            await anyio.sleep(
                interval + common.settle(idle_seconds)
            )  # every poller has started and is in its loop
            out["poller_idle_cpu_percent"] = await common.idle_cpu_percent(max(idle_seconds, 2 * interval))
            tg.cancel_scope.cancel()
    out["rss_end_mb"] = common.peak_rss_mb()
    return out


async def _spawn(url: str, n: int, idle: float, interval: float, *, tuned: bool = False) -> dict[str, Any]:
    argv = ["scale", url, "--n", str(n), "--seconds", str(idle), "--delay", str(interval), "0"]
    with common.children([*argv, *(["--tuned-gc"] if tuned else [])]) as [c]:
        result: dict[str, Any] = await c.json()
        return result


async def _sketch(n: int, *, tuned: bool = False) -> dict[str, Any]:
    with common.children(["sketch", "memory://", "--n", str(n), *(["--tuned-gc"] if tuned else [])]) as [c]:
        result: dict[str, Any] = await c.json()
        return result


async def run_async(ctx: Context) -> Result:
    result = Result("scale", ctx.quick)
    n = 10 if ctx.quick else 10_000
    idle = 0.05 if ctx.quick else 10.0  # spans the runtime's 5 s resync_interval
    interval = 0.02 if ctx.quick else common.CODER_POLL_SECONDS
    if ctx.quick:
        result.note(
            f"quick mode: {n} workspaces, the poller polls every {interval * 1000:g} ms; idle CPU over {idle:g} s"
        )
    gc_text = f"gc.freeze() + gc.set_threshold{TUNED_GC}"
    lower = await _sketch(n)
    result.data["sketch"] = lower
    result.add(
        Row(
            f"{n:,} workspaces, the lower-bound sketch (bench/sketch.py): wall time",
            lower["wall_s"],
            "s",
            note=f"a dict table, anyio tasks, a log, a pump, one provisioner; peak RSS {lower['rss_mb']:.0f} MiB",
        )
    )
    for label, url in (
        ("memory", "memory://"),
        ("SQLite", f"sqlite:///{ctx.tmp / f'scale-{time.monotonic_ns()}.db'}"),
    ):
        d = await _spawn(url, n, idle, interval)
        result.data[label] = d
        goal = not ctx.quick
        timed_out = bool(d.get("timed_out"))
        note = f"CUT at {d['limit_s']:g} s: {d['completed']:,} of {n:,} finished" if timed_out else ""
        if d.get("resyncs"):
            note += f"{'; ' if note else ''}{d['resyncs']:,} resyncs by waiting requests"
        collections = d.get("gc_collections")
        if collections:
            note += f"{'; ' if note else ''}GC collections by generation {collections}"
        if label == "memory":
            result.add(
                Row(
                    f"{n:,} workspaces create→stop→start→agent_ready, {label}: wall time",
                    d["wall_s"],
                    "s",
                    lower["wall_s"],
                    "lower-bound sketch",
                    d["wall_s"] / lower["wall_s"],
                    "ours/sketch",
                    goal="≤ 2x",
                    met=(d["wall_s"] <= 2 * lower["wall_s"] and not timed_out) if goal else None,
                    note=note,
                )
            )
        else:
            result.add(
                Row(
                    f"{n:,} workspaces create→stop→start→agent_ready, {label}: wall time",
                    d["wall_s"],
                    "s",
                    goal="≤ 20 s",
                    met=(d["wall_s"] <= 20 and not timed_out) if goal else None,
                    note=note,
                )
            )
        if timed_out:
            result.add(Row(f"{n:,} workspaces, {label}: peak RSS at the cut", d["rss_mb"], "MiB"))
            continue
        result.add(
            Row(
                f"{n:,} workspaces, {label}: peak RSS",
                d["rss_mb"],
                "MiB",
                goal="≤ 300 MB",
                met=(d["rss_mb"] * 1.048576 <= 300) if goal else None,
                note=f"interpreter and imports alone: {d['rss_start_mb']:.0f} MiB",
            )
        )
        result.add(
            Row(
                f"idle CPU while {n:,} start_workspace callers wait, {label}",
                d["idle_cpu_percent"],
                "% of a core",
                d["poller_idle_cpu_percent"],
                f"{n:,} pollers",
                note=f"measured over {idle:g} s"
                + ("; SQLite's watcher thread included" if label == "SQLite" else ""),
            )
        )
        if label == "memory":
            # Part 5 of issue 15: what the embedding process gains from setting the GC itself.
            tuned = await _spawn(url, n, idle, interval, tuned=True)
            tuned_sketch = await _sketch(n, tuned=True)
            result.data["memory_tuned_gc"] = tuned
            result.data["sketch_tuned_gc"] = tuned_sketch
            result.note(
                f"GC (issue 15, part 5): the library never changes the process's GC settings. A chat"
                f" runtime that calls {gc_text} once after its imports ran this flow in"
                f" {tuned['wall_s']:.1f} s instead of {d['wall_s']:.1f} s"
                f" ({d['wall_s'] / tuned['wall_s']:.1f}x), peak RSS {tuned['rss_mb']:.0f} MiB instead of"
                f" {d['rss_mb']:.0f} MiB; the sketch gains {lower['wall_s'] / tuned_sketch['wall_s']:.1f}x"
                " the same way. Recommended for a process that keeps thousands of requests waiting:"
                " the cyclic collector otherwise re-walks every waiting request's objects on each"
                " full collection. Cycles are still collected, only less often."
            )
            result.add(
                Row(
                    f"{n:,} workspaces, memory, the runtime's process sets {gc_text}: wall time",
                    tuned["wall_s"],
                    "s",
                    d["wall_s"],
                    "default GC, same run",
                    d["wall_s"] / tuned["wall_s"],
                    "default/tuned",
                    note=f"peak RSS {tuned['rss_mb']:.0f} MiB (default GC: {d['rss_mb']:.0f} MiB);"
                    f" GC collections by generation {tuned.get('gc_collections')}",
                )
            )
            result.add(
                Row(
                    f"{n:,} workspaces, memory, both processes set {gc_text}: wall time against the sketch",
                    tuned["wall_s"],
                    "s",
                    tuned_sketch["wall_s"],
                    "lower-bound sketch, same GC",
                    tuned["wall_s"] / tuned_sketch["wall_s"],
                    "ours/sketch",
                    note=f"the sketch's default-GC run: {lower['wall_s']:.2f} s",
                )
            )
    return result


def run(ctx: Context) -> Result:
    return anyio.run(run_async, ctx, backend="asyncio")
