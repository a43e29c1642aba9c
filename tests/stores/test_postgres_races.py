"""Races on the PostgreSQL store's guarded single-statement writes (and their batches).

A hot write reads its rows, decides in :mod:`workspace_lifecycle.writes`, then persists the
decision with one statement guarded by the rows' versions. These tests race many writers, on
one workspace and on many, across two stores (replicas), with a reader following the log as
the runtime does: exactly one build per round, every claim taken once, no seq skipped,
repeated or out of order, and a guard that waited for a concurrent writer decides again
instead of refusing on its stale snapshot.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

import anyio
import psycopg
import pytest
from test_postgres_store import follow, make_workspace, pg, schema_of

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, Transition
from workspace_lifecycle.adapters.postgres import _BATCHES_IN_FLIGHT, PostgresStore

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


async def finish_pending(store: wl.Store, *, has_agent: bool = True) -> wl.Build:
    build = await store.claim_build("worker")
    assert build is not None
    return await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=has_agent)


async def test_one_build_per_round_among_many_writers_on_one_workspace(pg_schema_url: str) -> None:
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
        ws = await make_workspace(a, "c1")
        await finish_pending(a)
        seen: list[int] = []
        stop = anyio.Event()
        async with anyio.create_task_group() as readers:
            readers.start_soon(follow, b, seen, stop)
            for number, transition in enumerate([Transition.STOP, Transition.START] * 3, start=1):
                outcomes: list[wl.Outcome] = []

                async def request(
                    store: wl.Store,
                    transition: Transition = transition,
                    number: int = number,
                    outcomes: list[wl.Outcome] = outcomes,
                ) -> None:
                    outcomes.append(await store.request_build(ws, transition, expected_build_number=number))

                async with anyio.create_task_group() as writers:
                    for i in range(16):
                        writers.start_soon(request, a if i % 2 else b)
                fired = [o for o in outcomes if o.fired]
                assert len(fired) == 1, f"round {number}: {len(fired)} builds fired"
                assert fired[0].build is not None and fired[0].build.number == number + 1
                # The losers saw the winner's build (or one that has since moved on), never an older one.
                assert all(o.facts.latest_build is not None for o in outcomes)
                assert all(o.facts.latest_build.number >= number + 1 for o in outcomes)  # type: ignore[union-attr]
                await finish_pending(a)
            stop.set()
        everything = [e.seq for e in await a.read_events(0)]
        assert seen == everything  # nothing skipped, repeated or reordered
        assert everything == sorted(set(everything))
        facts = await a.workspace_facts(ws)
        assert facts.latest_build is not None and facts.latest_build.number == 7


async def test_many_writers_on_many_workspaces_keep_the_log_whole(pg_schema_url: str) -> None:
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
        workspaces = [await make_workspace(a, f"c{i}") for i in range(8)]
        for _ in workspaces:
            await finish_pending(a)
        before = await a.head()
        seen: list[int] = []
        stop = anyio.Event()
        lifecycles = [AgentLifecycle.STARTING, AgentLifecycle.READY]

        async def reporter(store: wl.Store, ws: str) -> None:
            for i in range(20):
                await store.report_agent(ws, lifecycles[i % 2])

        async with anyio.create_task_group() as readers:
            readers.start_soon(follow, b, seen, stop)
            async with anyio.create_task_group() as writers:
                for ws in workspaces:  # two writers per workspace, one per replica
                    writers.start_soon(reporter, a, ws)
                    writers.start_soon(reporter, b, ws)
            stop.set()
        events = await a.read_events(before, limit=10_000)
        assert len(events) == 8 * 2 * 20
        everything = [e.seq for e in await a.read_events(0, limit=10_000)]
        assert seen == everything
        assert everything == sorted(set(everything))
        for ws in workspaces:
            facts = await a.workspace_facts(ws)
            assert facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.READY


async def test_every_pending_build_is_claimed_once(pg_schema_url: str) -> None:
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
        for i in range(12):
            await make_workspace(a, f"c{i}")
        claimed: list[str] = []

        async def worker(store: wl.Store) -> None:
            while (build := await store.claim_build("w")) is not None:
                claimed.append(build.build_id)

        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(worker, a if i % 2 else b)
        assert len(claimed) == 12 and len(set(claimed)) == 12


async def test_a_guard_that_waited_decides_again_on_the_new_rows(pg_schema_url: str) -> None:
    """A write decided on version v waits for a concurrent writer (held open after its events,
    holding the workspace row and the log lock) and finds v + 1 under the lock. It must neither
    persist its stale decision nor refuse because of what its statement's snapshot showed: it
    reads again and decides on the committed rows."""
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
        assert isinstance(a, PostgresStore)
        ws = await make_workspace(a, "c1")
        await finish_pending(a)  # running, agent created
        entered = anyio.Event()
        released = anyio.Event()

        async def hold() -> None:
            entered.set()
            await anyio.sleep(0.3)
            released.set()

        a.driver.committer._before_commit = hold
        outcome: list[wl.Outcome] = []

        async def stop() -> None:
            outcome.append(await b.request_build(ws, Transition.STOP, expected_build_number=1))

        async with anyio.create_task_group() as tg:
            tg.start_soon(a.report_agent, ws, AgentLifecycle.READY)  # changes the rows (agent)
            await entered.wait()
            a.driver.committer._before_commit = None
            tg.start_soon(stop)  # reads version v now, decides "fire", then waits for the lock
        assert released.is_set()
        assert outcome[0].fired  # the agent report does not forbid a stop: no spurious refusal
        facts = await a.workspace_facts(ws)
        assert facts.latest_build is not None and facts.latest_build.transition is Transition.STOP
        assert facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.READY


async def test_an_expiry_decided_before_a_renewal_committed_does_not_pass(pg_schema_url: str) -> None:
    """The reaper reads a due lease while the worker's renewal is in flight (held open before
    its commit); the expiry must not fail the build the renewal just kept: it waits for the
    row, finds it changed (a renewal bumps the workspace's version) and decides again, on the
    renewed lease, to do nothing."""
    clock = wl.VirtualClock(start=2_000_000_000.0)
    async with (
        wl.open_store(pg_schema_url, clock=clock) as worker,
        wl.open_store(pg_schema_url, clock=clock) as reaper,
    ):
        assert isinstance(worker, PostgresStore)
        ws = await make_workspace(worker, "c1")
        build = await worker.claim_build("w", lease_seconds=30)
        assert build is not None and build.workspace_id == ws and build.lease_token is not None
        clock.advance(29)
        entered, release = anyio.Event(), anyio.Event()

        async def hold() -> None:
            entered.set()
            await release.wait()

        worker.driver.committer._before_commit = hold
        expired: list[wl.Build | None] = []

        async def expire() -> None:
            expired.append(await reaper.expire_lease(build.build_id, build.lease_token or ""))

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                functools.partial(worker.renew_lease, build.build_id, build.lease_token, lease_seconds=30)
            )
            await entered.wait()  # the renewal's statement ran; its commit waits
            worker.driver.committer._before_commit = None
            clock.advance(1)  # the lease as committed so far is due now
            tg.start_soon(expire)  # reads the old lease, decides "expire", waits for the row
            await anyio.sleep(0.3)
            assert not expired  # still waiting for the renewal's row lock
            release.set()
        assert expired == [None]
        stored = await reaper.get_build(build.build_id)
        assert stored.status is JobStatus.RUNNING and stored.lease_expires_at == 2_000_000_000.0 + 59


async def test_a_guard_that_waited_for_a_winner_refuses(pg_schema_url: str) -> None:
    """Two stops on one expected build: the second, decided on the same rows, waits for the
    first (held open) and then refuses, answering with the winner's build."""
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
        assert isinstance(a, PostgresStore)
        ws = await make_workspace(a, "c1")
        await finish_pending(a)
        entered = anyio.Event()

        async def hold() -> None:
            entered.set()
            await anyio.sleep(0.3)

        a.driver.committer._before_commit = hold
        outcomes: dict[str, wl.Outcome] = {}

        async def request(name: str, store: wl.Store) -> None:
            outcomes[name] = await store.request_build(ws, Transition.STOP, expected_build_number=1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(request, "first", a)
            await entered.wait()
            a.driver.committer._before_commit = None
            tg.start_soon(request, "second", b)
        assert outcomes["first"].fired and not outcomes["second"].fired
        winner = outcomes["first"].build
        assert winner is not None and outcomes["second"].facts.latest_build == winner
        assert len([e for e in await a.read_events(0) if e.kind.value == "build_queued"]) == 2


async def queue_behind_a_batch(
    store: PostgresStore, calls: list[Callable[[], Awaitable[object]]]
) -> list[object]:
    """Run ``calls`` so that their writes make one batch: as many batches as may be are "in
    flight" until all of them are decided and queued; then one of them leads the rest.
    Returns each result or error."""
    results: list[object] = [None] * len(calls)
    store.driver.committer._leading = _BATCHES_IN_FLIGHT

    async def run(i: int) -> None:
        try:
            results[i] = await calls[i]()
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(run, i)
        with anyio.fail_after(5):
            while len(store.driver.committer._queue) < len(calls):  # noqa: ASYNC110 - the queue has no event
                await anyio.sleep(0.001)
        store.driver.committer._leading = 0
        done, store.driver.committer._led = store.driver.committer._led, anyio.Event()
        done.set()
    return results


async def test_a_batch_commits_many_writes_at_once(pg_schema_url: str) -> None:
    async with wl.open_store(pg_schema_url, pool_max_size=8) as store:
        assert isinstance(store, PostgresStore)
        workspaces = [await make_workspace(store, f"c{i}") for i in range(6)]
        for _ in workspaces:
            await finish_pending(store)
        head = await store.head()
        batches = store.batches
        calls = [functools.partial(store.report_agent, ws, AgentLifecycle.READY) for ws in workspaces]
        results = await queue_behind_a_batch(store, calls)
        assert results == [None] * 6
        assert store.batches == batches + 1 and store.batched_writes >= 6
        events = await store.read_events(head)
        assert sorted(e.workspace_id for e in events) == sorted(workspaces)
        assert [e.seq for e in events] == sorted({e.seq for e in events})


async def test_a_write_that_fails_in_a_batch_fails_only_itself(pg_schema_url: str) -> None:
    async with wl.open_store(pg_schema_url, pool_max_size=8) as store:
        assert isinstance(store, PostgresStore)
        workspaces = [await make_workspace(store, f"c{i}") for i in range(4)]
        builds = [await store.claim_build("w") for _ in workspaces]
        assert all(b is not None for b in builds)
        head = await store.head()
        calls: list[Callable[[], Awaitable[object]]] = [
            functools.partial(
                store.finish_build,
                b.build_id,  # type: ignore[union-attr]
                JobStatus.FAILED,
                "bad \x00 byte" if i == 2 else "quota",
            )
            for i, b in enumerate(builds)
        ]
        results = await queue_behind_a_batch(store, calls)
        assert isinstance(results[2], ValueError) and "cannot store" in str(results[2])
        for i in (0, 1, 3):
            assert isinstance(results[i], wl.Build) and results[i].status is JobStatus.FAILED  # type: ignore[union-attr]
        events = await store.read_events(head)
        assert len(events) == 3 and workspaces[2] not in {e.workspace_id for e in events}
        facts = await store.workspace_facts(workspaces[2])
        assert facts.latest_build is not None and facts.latest_build.status is JobStatus.RUNNING


async def test_a_write_whose_rows_are_locked_leaves_the_batch_and_waits(pg_schema_url: str) -> None:
    """In a batch a guard skips a row another transaction holds (waiting for it while holding
    the log lock could deadlock); that write then runs alone, waits, and decides again."""
    async with wl.open_store(pg_schema_url, pool_max_size=8) as store:
        assert isinstance(store, PostgresStore)
        workspaces = [await make_workspace(store, f"c{i}") for i in range(3)]
        for _ in workspaces:
            await finish_pending(store)
        with pg(pg_schema_url) as blocker:
            blocker.execute("BEGIN")
            blocker.execute("SELECT 1 FROM workspaces WHERE workspace_id = %s FOR UPDATE", (workspaces[0],))
            calls = [functools.partial(store.report_agent, ws, AgentLifecycle.READY) for ws in workspaces]
            async with anyio.create_task_group() as tg:

                async def release() -> None:
                    await anyio.sleep(0.3)
                    blocker.execute("ROLLBACK")

                tg.start_soon(release)
                results = await queue_behind_a_batch(store, calls)
        assert results == [None] * 3
        for ws in workspaces:
            facts = await store.workspace_facts(ws)
            assert facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.READY


async def test_rows_this_process_remembers_never_decide_alone(pg_schema_url: str) -> None:
    """A replica decides a write on the rows it last wrote (no read) only if its guard proves
    them current; a refusal is never taken from them. Another replica changes the rows in
    between: the first replica's stale rows neither refuse a start that is now allowed nor
    fire one that is not."""
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
        assert isinstance(a, PostgresStore)
        ws = await make_workspace(a, "c1")
        await finish_pending(a)
        stop = await a.request_build(ws, Transition.STOP, expected_build_number=1)
        assert stop.fired and ws in a._known  # a remembers: build 2 (stop) pending
        await finish_pending(b)  # b finishes the stop: a's rows are stale
        start = await a.request_build(ws, Transition.START, expected_build_number=2)
        assert start.fired  # stale rows said "in progress": not a refusal, read again
        again = await b.request_build(ws, Transition.START, expected_build_number=2)
        assert not again.fired
        # a's rows say build 3 pending; b claims and fails it: a's next write (a stop, which its
        # stale rows forbid) is decided on what it reads now.
        build = await b.claim_build("w")
        assert build is not None
        await b.finish_build(build.build_id, JobStatus.FAILED, "boom")
        retry = await a.request_build(ws, Transition.START, expected_build_number=3)
        assert retry.fired and retry.build is not None and retry.build.number == 4
        queued = [e for e in await a.read_events(0) if e.kind.value == "build_queued"]
        assert [e.build_number for e in queued] == [1, 2, 3, 4]


async def test_a_stale_remembered_write_is_not_persisted(pg_schema_url: str) -> None:
    """Agent reports from two replicas alternate: each one's remembered rows are stale every
    time, its guard refuses them and it decides again on a fresh read; every report lands."""
    async with wl.open_store(pg_schema_url) as a, wl.open_store(pg_schema_url) as b:
        ws = await make_workspace(a, "c1")
        await finish_pending(a)
        head = await a.head()
        for i in range(10):
            store = a if i % 2 else b
            await store.report_agent(ws, AgentLifecycle.READY if i % 2 else AgentLifecycle.STARTING)
        events = await a.read_events(head)
        assert [e.payload()["agent"] for e in events] == ["starting", "ready"] * 5
        facts = await b.workspace_facts(ws)
        assert facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.READY


@pytest.mark.parametrize("after_commit", [True, False])
async def test_every_commit_is_announced_to_other_processes(pg_schema_url: str, after_commit: bool) -> None:
    """With the batched notifier (the default) or a NOTIFY inside each write, a listener in
    another session hears a head at least as new as every commit, the last one included even
    when the store closes right after it."""
    with pg(pg_schema_url) as listener:
        channel = f"workspace_lifecycle_{schema_of(pg_schema_url)}"[:63]
        listener.execute(f'LISTEN "{channel}"')
        async with wl.open_store(pg_schema_url, notify_after_commit=after_commit) as store:
            ws = await make_workspace(store, "c1")
            await finish_pending(store)
            for lifecycle in (AgentLifecycle.STARTING, AgentLifecycle.READY):
                await store.report_agent(ws, lifecycle)
            head = await store.head()
        heard = [int(n.payload) for n in listener.notifies(timeout=1.0, stop_after=100)]
        assert heard and max(heard) == head


def blocking(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """How many sessions wait for a lock ``conn``'s session holds."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


async def test_a_write_waiting_for_a_row_does_not_stall_the_others(pg_schema_url: str) -> None:
    """A write that must wait for a row held by another transaction waits outside the group
    commit: the process's other writes keep committing meanwhile."""
    async with wl.open_store(pg_schema_url, pool_max_size=8) as store:
        assert isinstance(store, PostgresStore)
        held, free = [await make_workspace(store, f"c{i}") for i in range(2)]
        for _ in range(2):
            await finish_pending(store)
        with pg(pg_schema_url) as blocker:
            blocker.execute("BEGIN")
            blocker.execute("SELECT 1 FROM workspaces WHERE workspace_id = %s FOR UPDATE", (held,))
            waited: list[float] = []

            async def blocked() -> None:
                await store.report_agent(held, AgentLifecycle.READY)
                waited.append(time.monotonic())

            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked)
                with anyio.fail_after(10):  # until the blocked write waits for the blocker's row
                    while not blocking(blocker):  # noqa: ASYNC110 - another session's wait, seen by a query
                        await anyio.sleep(0.01)
                with anyio.fail_after(5):  # without the fix: blocked until statement_timeout
                    for lifecycle in (AgentLifecycle.STARTING, AgentLifecycle.READY):
                        await store.report_agent(free, lifecycle)
                assert not waited
                blocker.execute("ROLLBACK")
        assert waited
        facts = await store.workspace_facts(held)
        assert facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.READY
