"""8. Between turns: idle CPU with 10,000 armed deadlines, and what a touch costs.

Idle CPU: a Lifecycle whose store holds ``n`` running workspaces, each with an idle deadline a
day away, against the same Lifecycle with its scheduler replaced by a poller (it re-reads the
armed deadlines every second and fires what is due), in the same run; and the Lifecycle with no
scheduler at all, for what any idle runtime costs on that store (on SQLite, mostly the watcher
of other processes' commits). Ours sleeps until the earliest deadline, so with nothing due it
should cost what the Lifecycle alone costs.

Touch: one running workspace with an idle policy. A touch that moves the deadline (the clock
moved past the coalescing slack since the last one) writes one small row and one event; against
one ``report_agent`` (one small write plus one event) on the same store. A touch repeated within
the slack writes nothing; against one ``get_chat`` read (the one read a touch always makes).
"""

from __future__ import annotations

import time

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus

from . import common
from .common import Context, Result, Row

DAY = 86_400.0


async def armed(
    store: wl.Store, n: int, policy: wl.Policy, *, prefix: str = "d", has_agent: bool = False
) -> list[str]:
    """``n`` chats with ``policy`` whose workspaces run (their start builds finished here)."""
    chats = []
    for i in range(n):
        chat = f"{prefix}{i}"
        await store.register_chat(chat, "bench", policy=policy)
        await store.create_workspace(chat, "dev", expected_workspace_id=None)
        chats.append(chat)
    while (build := await store.claim_build("bench")) is not None:
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=has_agent)
    return chats


async def _poller(store: wl.Store, interval: float) -> None:
    """The baseline: every ``interval`` re-read every armed deadline and fire what is due."""
    while True:
        await anyio.sleep(interval)
        now = time.time()
        for workspace_id, deadline in (await store.armed_deadlines()).deadlines.items():
            if deadline.due(now):
                await store.fire_deadline(workspace_id, deadline)


async def idle_cpu(url: str, n: int, seconds: float) -> dict[str, float]:
    """Percent of a core of this process, idle, in three set-ups over the same ``n`` deadlines:
    a Lifecycle with its scheduler (ours), the same Lifecycle without it plus the poller (the
    baseline), and the Lifecycle alone (what any idle runtime costs on this store)."""
    async with wl.open_store(url) as store:
        await armed(store, n, wl.Policy(idle_stop_after=DAY))
        out: dict[str, float] = {}
        async with wl.Lifecycle(store) as lc:
            assert lc.deadlines_armed == n, lc.deadlines_armed
            await anyio.sleep(common.settle(seconds))
            out["ours"] = await common.idle_cpu_percent(seconds)
        async with wl.Lifecycle(store, fire_deadlines=False), anyio.create_task_group() as tg:
            tg.start_soon(_poller, store, 1.0)
            await anyio.sleep(common.settle(seconds))
            out["poller"] = await common.idle_cpu_percent(seconds)
            tg.cancel_scope.cancel()
        async with wl.Lifecycle(store, fire_deadlines=False):
            await anyio.sleep(common.settle(seconds))
            out["no_scheduler"] = await common.idle_cpu_percent(seconds)
    return out


async def touch_cost(url: str, seconds: float) -> dict[str, float]:
    clock = wl.VirtualClock(start=time.time())
    out: dict[str, float] = {}
    async with wl.open_store(url, clock=clock) as store, wl.Lifecycle(store, clock=clock) as lc:
        [chat] = await armed(store, 1, wl.Policy(idle_stop_after=3600), prefix="touch", has_agent=True)
        row = await store.get_chat(chat)
        assert row is not None and row.workspace_id is not None
        workspace_id = row.workspace_id

        async def moving() -> None:
            clock.advance(2.0)  # past the slack: this touch writes
            assert await lc.touch(chat, owner="bench") is not None

        async def coalesced() -> None:
            await lc.touch(chat, owner="bench")

        async def report() -> None:
            await store.report_agent(workspace_id, "ready")

        async def read() -> None:
            await store.get_chat(chat)

        head = await store.head()
        out["writing"] = await common.calls_per_second(moving, seconds)
        out["events_per_writing_touch"] = (await store.head() - head) / max(1.0, out["writing"] * seconds)
        out["report_agent"] = await common.calls_per_second(report, seconds)
        head = await store.head()
        out["coalesced"] = await common.calls_per_second(coalesced, seconds)
        out["coalesced_writes"] = await store.head() - head
        out["get_chat"] = await common.calls_per_second(read, seconds)
    return out


def run(ctx: Context) -> Result:
    result = Result("deadlines", ctx.quick)
    n, idle_s, touch_s = (200, 0.05, 0.05) if ctx.quick else (10_000, 10.0, 3.0)
    if ctx.quick:
        result.note(f"quick mode: {n} deadlines; idle CPU over {idle_s:g} s, each rate over {touch_s:g} s")
    urls = [("memory", "memory://"), ("SQLite", f"sqlite:///{ctx.tmp / f'deadlines-{time.time_ns()}.db'}")]
    for label, url in urls if ctx.local else []:
        cpu = anyio.run(idle_cpu, url, n, idle_s, backend="asyncio")
        result.data[f"idle_{label}"] = cpu
        result.add(
            Row(
                f"idle CPU with {n:,} armed deadlines, {label}",
                cpu["ours"],
                "% of a core",
                cpu["poller"],
                "the same Lifecycle with a scheduler re-reading the deadlines every 1 s",
                common.ratio(cpu["poller"], cpu["ours"]),
                "poller/ours",
                "≤ 1%",
                cpu["ours"] <= 1.0,
                note=f"the same Lifecycle with no scheduler at all: {cpu['no_scheduler']:.2f}%",
            )
        )
        cost = anyio.run(touch_cost, url, touch_s, backend="asyncio")
        result.data[f"touch_{label}"] = cost
        result.add(
            Row(
                f"touch that moves the deadline, {label}",
                1e6 / cost["writing"],
                "µs",
                1e6 / cost["report_agent"],
                "report_agent (one small write)",
                cost["report_agent"] / cost["writing"],
                "report/touch (rate)",
                note=f"{cost['writing']:,.0f} touches/s, {cost['events_per_writing_touch']:.2f} events each",
            )
        )
        result.add(
            Row(
                f"touch within the slack (coalesced), {label}",
                1e6 / cost["coalesced"],
                "µs",
                1e6 / cost["get_chat"],
                "get_chat (one read)",
                cost["get_chat"] / cost["coalesced"],
                "read/touch (rate)",
                note=f"{cost['coalesced']:,.0f} touches/s; {cost['coalesced_writes']} writes in all",
            )
        )
    return result
