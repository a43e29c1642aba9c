"""Round trips on the wire per store call, pinned on a real server (issue 25): a write on rows
this process knows is one, a claim at most two, a lost guard re-reads in the same round trip
and its retry decides on what it read; and the outcome of a lost guard is still right."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, Transition
from workspace_lifecycle.adapters.driver import RETRY
from workspace_lifecycle.adapters.postgres import PostgresStore
from workspace_lifecycle.adapters.postgres import committer as pg_committer
from workspace_lifecycle.adapters.postgres import rows as pg_rows

pytestmark = pytest.mark.postgres

T = TypeVar("T")


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[PostgresStore]:
    async with wl.open_store(url, poll_interval=60) as store:
        assert isinstance(store, PostgresStore)
        yield store


async def trips(store: PostgresStore, call: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """``call``'s answer and the round trips it made on the wire."""
    before = store.wire_round_trips
    answer = await call()
    return answer, store.wire_round_trips - before


async def stopped_workspace(store: PostgresStore, chat: str) -> tuple[str, int]:
    """A chat's workspace whose start and stop builds finished; its id and latest build number."""
    await store.register_chat(chat, "alice")
    out = await store.create_workspace(chat, "dev", expected_workspace_id=None)
    assert out.build is not None
    for build in (out.build, None):
        claimed = await store.claim_build("setup")
        assert claimed is not None and (build is None or claimed.build_id == build.build_id)
        await store.finish_build(claimed.build_id, JobStatus.SUCCEEDED, lease=claimed.lease_token)
        if build is not None:
            stop = await store.request_build(
                out.facts.workspace_id, Transition.STOP, expected_build_number=claimed.number
            )
            assert stop.fired
    facts = await store.workspace_facts(out.facts.workspace_id)
    assert facts.latest_build is not None
    return out.facts.workspace_id, facts.latest_build.number


@pytest.mark.anyio
async def test_plain_reads_and_the_log_are_one_round_trip_each(pg_schema_url: str) -> None:
    """head, read_events, get_chat, workspace_facts, next_lease_expiry: one statement each."""
    async with opened(pg_schema_url) as store:
        ws, _ = await stopped_workspace(store, "c1")
        for call in (
            store.head,
            lambda: store.read_events(0),
            lambda: store.get_chat("c1"),
            lambda: store.workspace_facts(ws),
            store.next_lease_expiry,
        ):
            assert (await trips(store, call))[1] == 1


@pytest.mark.anyio
async def test_a_worker_claims_in_two_and_renews_and_finishes_in_one(pg_schema_url: str) -> None:
    """A claim reads the pending build with its workspace's rows and writes (two round trips);
    the renewals and the finish of the build it claimed decide on those rows (one each)."""
    async with opened(pg_schema_url) as store:
        ws, number = await stopped_workspace(store, "c1")
        await store.request_build(ws, Transition.START, expected_build_number=number)
        build, claim_trips = await trips(store, lambda: store.claim_build("w"))
        assert build is not None and build.lease_token is not None
        assert claim_trips <= 2
        until, renew_trips = await trips(
            store, lambda: store.renew_lease(build.build_id, build.lease_token or "")
        )
        assert until > 0 and renew_trips == 1
        done, finish_trips = await trips(
            store, lambda: store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=build.lease_token)
        )
        assert done.status is JobStatus.SUCCEEDED and finish_trips == 1
        assert (
            await trips(store, lambda: store.report_agent(ws, AgentLifecycle.READY, lease=build.lease_token))
        )[1] == 1
        nothing, empty_trips = await trips(store, lambda: store.claim_build("w"))
        assert nothing is None and empty_trips == 1
        by_kind = store.round_trips_by_kind
        assert by_kind["renew_lease"] == (1, 1) and by_kind["finish_build"][1] >= 1


@pytest.mark.anyio
async def test_renewals_nobody_races_stop_pipelining_the_reread(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-read of a lost guard is pipelined only while it pays: a worker renewing its lease,
    whose rows nobody else writes, soon sends its update alone (about 80 µs less per renewal);
    once another process writes those rows, its renewals still land (a lost guard reads and
    decides again), and losing guards brings the pipelined re-read back."""
    sent: list[str] = []
    send = pg_committer.send_read_known

    async def counted(conn: Any, workspace_id: str) -> Any:
        sent.append(workspace_id)
        return await send(conn, workspace_id)

    monkeypatch.setattr(pg_committer, "send_read_known", counted)
    async with opened(pg_schema_url) as worker, opened(pg_schema_url) as other:
        ws, number = await stopped_workspace(worker, "c1")
        await worker.request_build(ws, Transition.START, expected_build_number=number)
        build = await worker.claim_build("w", lease_seconds=3600)
        assert build is not None and build.lease_token is not None
        renew = lambda: worker.renew_lease(build.build_id, build.lease_token or "", lease_seconds=3600)  # noqa: E731
        sent.clear()
        await renew()
        assert sent == [ws]  # an operation not seen yet pipelines it
        for _ in range(30):
            await renew()
        sent.clear()
        _, alone = await trips(worker, renew)
        assert sent == [] and alone == 1
        for _ in range(8):  # another process writes the rows between each renewal
            await other.append_log(build.build_id, ["from another process"], lease=build.lease_token)
            assert await renew() > 0
        assert sent, "guards lost again and again: the re-read is pipelined again"


@pytest.mark.anyio
async def test_a_request_after_reading_the_facts_is_one_round_trip(pg_schema_url: str) -> None:
    """The facts read with their chat and versions are the known rows of the next write: the
    caller's read-then-request costs two round trips, not three."""
    async with opened(pg_schema_url) as caller, opened(pg_schema_url) as worker:
        ws, number = await stopped_workspace(worker, "c1")  # the caller knows nothing of it
        facts, read_trips = await trips(caller, lambda: caller.workspace_facts(ws))
        assert read_trips == 1 and facts.latest_build is not None
        out, write_trips = await trips(
            caller,
            lambda: caller.request_build(ws, Transition.START, expected_build_number=number),
        )
        assert out.fired and write_trips == 1


@pytest.mark.anyio
async def test_a_lost_guard_on_known_rows_rereads_in_the_same_round_trip(pg_schema_url: str) -> None:
    """A write decided on rows another process changed since: its guard fails, the rows as they
    are now come back with it, and the retry decides on them: the other writer's build is
    found (not fired twice) in one round trip in all."""
    async with opened(pg_schema_url) as a, opened(pg_schema_url) as b:
        ws, number = await stopped_workspace(a, "c1")
        await a.workspace_facts(ws)  # a knows the rows at build `number`
        first = await b.request_build(ws, Transition.START, expected_build_number=number)
        assert first.fired and first.build is not None
        again, write_trips = await trips(
            a, lambda: a.request_build(ws, Transition.START, expected_build_number=number)
        )
        assert not again.fired and again.facts.latest_build == first.build
        assert write_trips == 1  # the failed write and its re-read, pipelined; nothing to write then
        # A decision to write, on re-read rows: the failed write's round trip and the retry's.
        claimed = await b.claim_build("w")
        assert claimed is not None
        await b.finish_build(claimed.build_id, JobStatus.SUCCEEDED, lease=claimed.lease_token)
        stop, stop_trips = await trips(
            a, lambda: a.request_build(ws, Transition.STOP, expected_build_number=claimed.number)
        )
        assert stop.fired and stop.build is not None and stop.build.number == claimed.number + 1
        assert stop_trips == 2
        latest = (await b.workspace_facts(ws)).latest_build
        assert latest is not None and latest.build_id == stop.build.build_id


@pytest.mark.anyio
async def test_a_writer_between_the_read_and_the_write_makes_it_retry(
    pg_schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process commits between a write's read and its guarded statement: the guard
    fails (RETRY), and the write decides again on the rows as they are now; each of two racing
    stops is answered as if they ran one after the other (one fires, one finds it)."""
    async with opened(pg_schema_url) as a, opened(pg_schema_url) as b:
        ws, number = await stopped_workspace(b, "c1")
        read_known = pg_rows.read_known
        raced: list[int] = []

        async def read_then_race(conn: Any, workspace_id: str) -> Any:
            rows = await read_known(conn, workspace_id)
            if not raced:
                raced.append(1)
                out = await b.request_build(ws, Transition.START, expected_build_number=number)
                assert out.fired
            return rows

        monkeypatch.setattr(pg_rows, "read_known", read_then_race)
        retries: list[object] = []
        transact = a.driver.transact

        async def counted(plan: Any) -> Any:
            result = await transact(plan)
            retries.append(result)
            return result

        monkeypatch.setattr(a.driver, "transact", counted)
        a.driver.committer.known.clear()
        out = await a.request_build(ws, Transition.START, expected_build_number=number)
        assert raced and retries[0] is RETRY and len(retries) == 2
        assert not out.fired  # b's start was found, not doubled
        facts = await b.workspace_facts(ws)
        assert facts.latest_build is not None and facts.latest_build.number == number + 1
        claimed = await b.claim_build("w")
        assert claimed is not None and await b.claim_build("w") is None  # one start build only


@pytest.mark.anyio
async def test_a_batch_of_writes_is_one_round_trip(pg_schema_url: str) -> None:
    """Writes of one process decided meanwhile are group-committed in one pipeline: one round
    trip for all of them (BEGIN, the writes and COMMIT queued before its one Sync)."""
    async with opened(pg_schema_url) as store:
        workspaces = [(await stopped_workspace(store, f"c{i}"))[0] for i in range(3)]
        for ws in workspaces:
            await store.workspace_facts(ws)  # known rows: no write below reads
        committer = store.driver.committer
        batches, before = store.batches, store.wire_round_trips
        committer._leading = 1  # a batch "in flight": the writes queue behind it

        async def report(ws: str) -> None:
            await store.report_agent(ws, AgentLifecycle.STARTING)

        async with anyio.create_task_group() as tg:
            for ws in workspaces:
                tg.start_soon(report, ws)
            with anyio.fail_after(5):
                while len(committer._queue) < len(workspaces):  # noqa: ASYNC110 - the queue has no event
                    await anyio.sleep(0.001)
            committer._leading = 0
            done, committer._led = committer._led, anyio.Event()
            done.set()
        assert store.batches == batches + 1
        assert store.wire_round_trips - before == 1
        for ws in workspaces:
            facts = await store.workspace_facts(ws)
            assert facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.STARTING
