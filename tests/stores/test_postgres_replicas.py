"""Several replica processes on one PostgreSQL schema: exactly-once start and wake-ups across them."""

from __future__ import annotations

import time

import anyio
import psycopg
import pytest
from multiproc import race, receive, replicas, schema_of, stopped_workspace

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus
from workspace_lifecycle.adapters.base import Topic

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["", "&shards=4"], ids=["one-channel", "shards"])
def pg_schema_url(pg_schema_url: str, request: pytest.FixtureRequest) -> str:
    """Every replica test in both notification modes: one channel, and by workspace shard."""
    return f"{pg_schema_url}{request.param}"


def test_replica_race_starts_once(pg_schema_url: str) -> None:
    """4 processes x 50 concurrent start_workspace on one stopped workspace: exactly one build,
    and every caller is answered with that build's id."""
    processes, calls = 4, 50
    ws = anyio.run(stopped_workspace, pg_schema_url, "chat-race", "alice", backend="asyncio")
    argvs = [
        ["race", pg_schema_url, "chat-race", "alice", str(calls), "1" if i == 0 else "0"]
        for i in range(processes)
    ]
    flat = race(argvs)
    assert len(flat) == processes * calls
    assert not any(a["is_error"] for a in flat)
    assert all(a["data"].get("started") is True for a in flat), flat[:3]
    build_ids = {a["data"].get("build_id") for a in flat}
    with psycopg.connect(pg_schema_url.partition("?")[0]) as conn:
        rows = conn.execute(
            f'SELECT build_id, number, status FROM "{schema_of(pg_schema_url)}".builds'
            " WHERE workspace_id = %s AND transition = 'start' AND number > 2",
            (ws,),
        ).fetchall()
    assert len(rows) == 1, rows
    assert build_ids == {rows[0][0]}
    assert rows[0][1:] == (3, "succeeded")


def test_waiter_in_another_process_wakes_on_commit(pg_schema_url: str) -> None:
    """A replica sleeping in wait_for_change (fallback poll one minute away) wakes on NOTIFY."""

    async def write(i: int) -> None:
        async with wl.open_store(pg_schema_url) as store:
            await store.register_chat(f"c{i}", "alice")
            await store.create_workspace(f"c{i}", "dev", expected_workspace_id=None)

    anyio.run(write, 0, backend="asyncio")  # migrate before the replica starts
    with replicas(["wait", pg_schema_url, "3"]) as (proc,):
        for i in range(1, 4):
            ready = receive(proc).split()
            assert ready[0] == "ready"
            time.sleep(0.1)  # the replica is asleep now
            started = time.monotonic()
            anyio.run(write, i, backend="asyncio")
            woke = receive(proc).split()
            assert woke[0] == "woke" and int(woke[1]) > int(ready[1])
            assert float(woke[2]) - started < 2.0, "woke by the fallback poll, not by NOTIFY"
        assert proc.wait(timeout=30) == 0


@pytest.mark.anyio
async def test_second_store_sees_agent_report_of_first(pg_schema_url: str) -> None:
    """Two stores (replicas in one process): a Lifecycle on one answers from the other's writes."""
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b, wl.Lifecycle(a) as lc:
        await lc.register_chat("c1", owner="alice")
        results: list[wl.ToolResult] = []
        async with anyio.create_task_group() as tg:

            async def create() -> None:
                results.append(await lc.create_workspace("c1", owner="alice", name="dev"))

            tg.start_soon(create)
            with anyio.fail_after(10), b.interest(Topic.BUILDS):
                while True:
                    cursor = await b.head()
                    if (build := await b.claim_build("remote")) is not None:
                        break
                    await b.wait_for_change(cursor)  # woken by the other store's NOTIFY
                await b.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
                await b.report_agent(build.workspace_id, AgentLifecycle.READY)
        assert results[0].data["created"] is True and not results[0].is_error
