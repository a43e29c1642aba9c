"""9. Leases: what a heartbeat costs, and what the reaper reads while every worker is alive.

Renewal: one build in flight; ``renew_lease`` (one guarded row update, no event) against one
``report_agent`` (one small write plus one event) on the same store, in the same run.

The reaper at rest: ``n`` builds in flight, each renewed every 10 s under a 30 s lease, for ten
minutes of a :class:`~workspace_lifecycle.VirtualClock` (stepped, so the run takes seconds). The
:class:`~workspace_lifecycle.LeaseReaper` sleeps until the earliest expiry and reads the next
one when it wakes (one indexed row); it must fail nothing. The baseline is the scan it replaced
(0.1's ``BuildReaper``: every chat's row every 30 s), counted in rows read per minute.
"""

from __future__ import annotations

import contextlib
import time

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus

from . import common
from .common import Context, CountingStore, Result, Row

LEASE, EVERY, MINUTES = 30.0, 10.0, 10
#: The quick mode's virtual minutes: each is 6 rounds of renewals of every build (on PostgreSQL
#: 300 writes of ~2 ms), and one already spans two lease lengths and the reaper's wake-ups.
QUICK_MINUTES = 1


async def renewal_cost(url: str, seconds: float) -> dict[str, float]:
    async with wl.open_store(url) as store:
        for chat in ("held", "ready"):
            await store.register_chat(chat, "bench")
            await store.create_workspace(chat, "dev", expected_workspace_id=None)
        held = await store.claim_build("bench", lease_seconds=3600)
        done = await store.claim_build("bench", lease_seconds=3600)
        assert held is not None and held.lease_token is not None and done is not None
        await store.finish_build(done.build_id, JobStatus.SUCCEEDED, lease=done.lease_token)
        token = held.lease_token

        async def renew() -> None:
            await store.renew_lease(held.build_id, token, lease_seconds=3600)

        async def report() -> None:
            await store.report_agent(done.workspace_id, "ready")

        head = await store.head()
        out = {"renew": await common.calls_per_second(renew, seconds)}
        out["renew_events"] = await store.head() - head
        out["report_agent"] = await common.calls_per_second(report, seconds)
    return out


async def reaper_at_rest(url: str, n: int, minutes: int = MINUTES) -> dict[str, float]:
    clock = wl.VirtualClock(start=time.time())
    async with wl.open_store(url, clock=clock) as store:
        for i in range(n):
            await store.register_chat(f"l{i}", "bench")
            await store.create_workspace(f"l{i}", "dev", expected_workspace_id=None)
        builds = []
        while (build := await store.claim_build("bench", lease_seconds=LEASE)) is not None:
            builds.append(build)
        counted = CountingStore(store)
        async with wl.LeaseReaper(counted, clock=clock) as reaper:
            await anyio.sleep(0.05)
            before = sum(counted.calls.values())
            for _ in range(int(minutes * 60 / EVERY)):
                clock.advance(EVERY)
                for build in builds:
                    await store.renew_lease(build.build_id, build.lease_token or "", lease_seconds=LEASE)
                await anyio.sleep(0.01)  # let the reaper do whatever it does
            calls = sum(counted.calls.values()) - before
            return {
                "calls_per_minute": calls / minutes,
                "next_lease_reads_per_minute": counted.calls["next_lease_expiry"] / minutes,
                "wakeups_per_minute": reaper.wakeups / minutes,
                "expired": reaper.expired,
                "scan_rows_per_minute": n * 60 / 30,
            }


def run(ctx: Context) -> Result:
    result = Result("leases", ctx.quick)
    n, seconds, minutes = (50, 0.05, QUICK_MINUTES) if ctx.quick else (1_000, 2.0, MINUTES)
    if ctx.quick:
        result.note(
            f"quick mode: {n} builds renewing for {minutes} minute(s) of the virtual clock, not {MINUTES};"
            f" each renewal rate over {seconds:g} s"
        )
    urls = []
    if ctx.local:
        urls += [("memory", "memory://"), ("SQLite", f"sqlite:///{ctx.tmp / f'leases-{time.time_ns()}.db'}")]
    with contextlib.ExitStack() as stack:
        if ctx.pg_url:
            urls.append(("PostgreSQL", stack.enter_context(common.pg_schema(ctx.pg_url))))
        for label, url in urls:
            cost = anyio.run(renewal_cost, url, seconds, backend="asyncio")
            result.data[f"renewal_{label}"] = cost
            result.add(
                Row(
                    f"lease renewal, {label}",
                    1e6 / cost["renew"],
                    "µs",
                    1e6 / cost["report_agent"],
                    "report_agent (one small write)",
                    cost["report_agent"] / cost["renew"],
                    "renewal time/report time",
                    note=f"{cost['renew']:,.0f} renewals/s; {cost['renew_events']:.0f} events appended",
                )
            )
            rest = anyio.run(reaper_at_rest, url, n, minutes, backend="asyncio")
            result.data[f"reaper_{label}"] = rest
            reads = rest["next_lease_reads_per_minute"]
            result.add(
                Row(
                    f"reaper at rest, {n:,} builds renewing, {label}",
                    rest["calls_per_minute"],
                    "rows read/min",
                    rest["scan_rows_per_minute"],
                    "0.1's scan: every chat's row every 30 s",
                    common.ratio(rest["scan_rows_per_minute"], rest["calls_per_minute"]),
                    "scan/reaper",
                    "fails nothing",
                    None if ctx.quick else rest["expired"] == 0,
                    note=(
                        f"every reaper call reads at most one row: {reads:.1f} next-expiry reads/min,"
                        f" {rest['wakeups_per_minute']:.1f} wake-ups/min"
                    ),
                )
            )
    return result
