"""2. Database work per ``start_workspace`` against build duration: ours flat, the poller's linear.

For builds of 1x, 10x and 100x a base duration, one ``start_workspace`` on a stopped workspace,
counting every store call the caller's side makes (``Lifecycle`` and its pump, or the poller),
through a counting wrapper around its store; the provisioner has a store of its own (another
connection, as a real provisioner would) whose calls are not counted. Each store call is one
transaction or one read. ``wait_for_change`` is a sleep, not a query, and is shown apart.

The poller re-reads the rows every ``interval``; Coder's is 2 s against builds of minutes. To
keep run times honest the interval and the base duration are scaled down together (the count
depends only on their ratio): base = 5 x interval. The runtime has no periodic work of its own
by default (``resync_interval``, its opt-in safety net for stores that lose events, is off).

SQLite's watcher (another process's commits) checks ``PRAGMA data_version`` on its own
connection every ``poll_interval`` while the pump waits; those checks are not store calls and
are shown apart (the store's ``watcher_polls`` counter, where it keeps one).
"""

from __future__ import annotations

import time
from typing import Any

import anyio

import workspace_lifecycle as wl

from . import common
from .common import Context, CountingStore, Result, Row

MULTIPLIERS = (1, 10, 100)


def lifecycle(store: wl.Store, interval: float) -> wl.Lifecycle:
    """A Lifecycle as users get it (``interval`` is the poller's; the runtime has no period)."""
    del interval
    return wl.Lifecycle(store)


def watcher_checks(store: wl.Store) -> int | None:
    """SQLite's count of ``PRAGMA data_version`` checks by its watcher thread (where it keeps one)."""
    value = getattr(store, "watcher_polls", None)
    return value if isinstance(value, int) else None


async def measure(url: str, base: float, interval: float) -> dict[str, Any]:
    out: dict[str, Any] = {"base_s": base, "interval_s": interval, "ours": {}, "poller": {}, "ours_waits": {}}
    async with wl.open_store(url) as setup:
        chats = await common.make_workspaces(setup, 2 * len(MULTIPLIERS), prefix="work")
    for i, m in enumerate(MULTIPLIERS):
        duration = m * base
        async with wl.open_store(url) as prov_store, wl.open_store(url) as raw:
            counted = CountingStore(raw)
            async with wl.SimulatedProvisioner(prov_store, build_seconds=duration, agent_seconds=0.0):
                async with lifecycle(counted, interval) as lc:
                    await anyio.sleep(0.05)  # the pump is asleep
                    counted.calls.clear()
                    polls = watcher_checks(raw)
                    t0 = time.monotonic()
                    r = await lc.start_workspace(chats[2 * i], owner="bench")
                    waited = time.monotonic() - t0
                    assert not r.is_error and "error" not in r.data, r.text
                    out["ours"][m] = counted.queries
                    if polls is not None:
                        out.setdefault("watcher_checks", {})[m] = (watcher_checks(raw) or 0) - polls
                    out["ours_waits"][m] = counted.calls["wait_for_change"]
                    out.setdefault("ours_calls", {})[m] = dict(counted.calls)
                    out.setdefault("ours_wait_s", {})[m] = waited
                counted.calls.clear()
                await common.coder_start(counted, chats[2 * i + 1], interval)
                out["poller"][m] = counted.queries
                out.setdefault("poller_calls", {})[m] = dict(counted.calls)
    return out


def _rows(result: Result, label: str, d: dict[str, Any]) -> None:
    for m in MULTIPLIERS:
        ours, poller = d["ours"][m], d["poller"][m]
        note = f"build {m * d['base_s'] * 1000:g} ms, poll every {d['interval_s'] * 1000:g} ms"
        if m in d.get("watcher_checks", {}):
            note += f"; + {d['watcher_checks'][m]:,} PRAGMA data_version checks by the watcher thread"
        result.add(
            Row(
                f"store calls per start_workspace, {label}, build {m}x base",
                ours,
                "calls",
                poller,
                "poller",
                common.ratio(poller, ours),
                "poller/ours",
                note=note,
            )
        )
    growth = common.ratio(d["ours"][MULTIPLIERS[-1]], d["ours"][MULTIPLIERS[0]])
    poller_growth = common.ratio(d["poller"][MULTIPLIERS[-1]], d["poller"][MULTIPLIERS[0]])
    result.add(
        Row(
            f"growth of store calls, {label}, build 1x → 100x",
            growth,
            "x",
            poller_growth,
            "poller",
            None,
            "",
            "ours flat (≤ 1.5x), poller linear",
            growth is not None and growth <= 1.5 and (poller_growth or 0) >= 10,
        )
    )


async def run_async(ctx: Context) -> Result:
    result = Result("dbwork", ctx.quick)
    interval = 0.0005 if ctx.quick else 0.01
    base = 5 * interval
    result.note(
        f"poll interval scaled to {interval * 1000:g} ms and base build to {base * 1000:g} ms"
        " (Coder: 2 s against builds of 10 s and more); the count depends only on their ratio"
    )
    if ctx.local:
        url = f"sqlite:///{ctx.tmp / f'dbwork-{time.monotonic_ns()}.db'}"
        d = await measure(url, base, interval)
        result.data["sqlite"] = d
        _rows(result, "SQLite", d)
    if ctx.pg_url is not None:
        with common.pg_schema(ctx.pg_url) as pg:
            d = await measure(pg, base, interval)
        result.data["postgres"] = d
        _rows(result, "PostgreSQL", d)
        result.note("PostgreSQL: the LISTEN connection also reads the head once per 2 s (fallback poll)")
    else:
        result.note("PostgreSQL skipped (no server)")
    return result


def run(ctx: Context) -> Result:
    return anyio.run(run_async, ctx, backend="asyncio")
