"""PostgreSQL notification shards (``shards=N``): a store hears only the channels of what its
process waits on, and a waiter whose notification never comes still wakes by the fallback poll."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, Transition
from workspace_lifecycle.adapters.base import Topic
from workspace_lifecycle.adapters.postgres import PostgresStore, shard_of

pytestmark = pytest.mark.postgres

SHARDS = 4


def test_shards_option_is_validated() -> None:
    url = "postgresql://db.example/app?schema=s1"
    assert PostgresStore.from_url(f"{url}&shards=8").shards == 8
    assert PostgresStore.from_url(url).shards == 0
    assert PostgresStore.from_url(url, shards=3).shards == 3
    for bad in ("-1", "x", "1.5", "4097"):
        with pytest.raises(ValueError, match="shards must be an integer from 0"):
            PostgresStore.from_url(f"{url}&shards={bad}")
    for wrong in (True, 2.0, -1, None):
        with pytest.raises(ValueError, match="shards must be an integer from 0"):
            PostgresStore("postgresql://db.example/app", shards=wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be combined"):
        PostgresStore("postgresql://db.example/app", shards=2, notify_after_commit=True)


@asynccontextmanager
async def stores(url: str, n: int, **options: object) -> AsyncIterator[list[PostgresStore]]:
    async with AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(wl.open_store(url, **options)) for _ in range(n)]
        assert all(isinstance(s, PostgresStore) for s in opened)
        yield opened  # type: ignore[misc]


async def eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    """Until ``check`` holds: it reads counters another task (the listener) moves."""
    with anyio.fail_after(seconds):
        while not check():  # noqa: ASYNC110 - the listener task moves what it reads
            await anyio.sleep(0.01)


async def one_workspace_per_shard(store: wl.Store) -> list[str]:
    """Running workspaces until each of the SHARDS shards holds one; one id per shard."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < SHARDS:
        i += 1
        await store.register_chat(f"c{i}", "alice")
        ws = (await store.create_workspace(f"c{i}", "dev", expected_workspace_id=None)).facts.workspace_id
        build = await store.claim_build("setup")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
        found.setdefault(shard_of(ws, SHARDS), ws)
    return [found[k] for k in range(SHARDS)]


async def stop_and_start(store: wl.Store, ws: str) -> int:
    """Six commits on ``ws`` (queue, claim and finish a stop, then a start); how many."""
    facts = await store.workspace_facts(ws)
    number = facts.latest_build.number if facts.latest_build else 0
    assert (await store.request_build(ws, Transition.STOP, expected_build_number=number)).fired
    build = await store.claim_build("w")
    assert build is not None and build.workspace_id == ws
    await store.finish_build(build.build_id, JobStatus.SUCCEEDED)
    assert (await store.request_build(ws, Transition.START, expected_build_number=number + 1)).fired
    build = await store.claim_build("w")  # leave nothing pending for the next round
    assert build is not None
    await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
    return 6


@pytest.mark.anyio
@pytest.mark.parametrize("shards", [0, SHARDS], ids=["one-channel", "shards"])
async def test_each_store_hears_only_its_shard(pg_schema_url: str, shards: int) -> None:
    """Four stores, each waiting on a workspace of its own shard: by shard each hears only the
    writes of its workspace; on one channel each hears every write."""
    async with wl.open_store(pg_schema_url, shards=shards) as writer:
        workspaces = await one_workspace_per_shard(writer)
        async with (
            stores(pg_schema_url, SHARDS, shards=shards, poll_interval=60.0) as listeners,
            AsyncExitStack() as interests,
        ):
            for store, ws in zip(listeners, workspaces, strict=True):
                interests.enter_context(store.interest(Topic.workspace(ws)))
            await eventually(lambda: all(len(s.channels) == 1 for s in listeners))
            before = [s.notifications_received for s in listeners]
            commits = [await stop_and_start(writer, ws) for ws in workspaces for _ in range(2)]
            per_ws = [sum(commits[2 * k : 2 * k + 2]) for k in range(SHARDS)]
            expected = per_ws if shards else [sum(per_ws)] * SHARDS

            def received() -> list[int]:
                return [s.notifications_received - b for s, b in zip(listeners, before, strict=True)]

            await eventually(lambda: all(r >= e for r, e in zip(received(), expected, strict=True)))
            await anyio.sleep(0.3)  # anything more would be a notification it should not get
            assert received() == expected
            assert all(s.stray_notifications == 0 for s in listeners)


@pytest.mark.anyio
async def test_interest_taken_after_a_commit_still_wakes_the_waiter(pg_schema_url: str) -> None:
    """The commit lands before the store listens to its shard: the head read after the LISTEN
    wakes the waiter (the fallback poll is a minute away)."""
    async with wl.open_store(pg_schema_url, shards=SHARDS) as writer:
        (ws, *_) = await one_workspace_per_shard(writer)
        async with wl.open_store(pg_schema_url, shards=SHARDS, poll_interval=60.0) as store:
            assert isinstance(store, PostgresStore)
            head = await store.head()
            await stop_and_start(writer, ws)  # nobody here listens to its shard yet
            await anyio.sleep(0.2)
            assert store.notifications_received == 0
            started = time.monotonic()
            with anyio.fail_after(5), store.interest(Topic.workspace(ws)):
                await store.wait_for_change(head)
            assert time.monotonic() - started < 5
            assert store.channels == {store._shard_channel(ws)}


@pytest.mark.anyio
async def test_a_shard_nobody_waits_on_is_unlistened(pg_schema_url: str) -> None:
    """Interest is counted per channel; once the last use ends, the listener UNLISTENs when it
    next wakes, and that shard's writes reach it no more."""
    async with wl.open_store(pg_schema_url, shards=SHARDS) as writer:
        (ws, *_) = await one_workspace_per_shard(writer)
        async with wl.open_store(pg_schema_url, shards=SHARDS, poll_interval=60.0) as store:
            assert isinstance(store, PostgresStore)
            with store.interest(Topic.workspace(ws)):
                with store.interest(Topic.workspace(ws)):
                    await eventually(lambda: bool(store.channels))
                assert store.channels  # still one use
                await stop_and_start(writer, ws)
                await eventually(lambda: store.notifications_received >= 6)
                assert store.channels
            await stop_and_start(writer, ws)  # wakes the listener, which then UNLISTENs
            await eventually(lambda: not store.channels)
            received = store.notifications_received
            await stop_and_start(writer, ws)
            await anyio.sleep(0.3)
            assert store.notifications_received == received


@pytest.mark.anyio
async def test_a_head_read_with_the_rows_wakes_the_waiter_for_it(pg_schema_url: str) -> None:
    """By shard, facts read after another shard's commit carry a head no notification here will
    announce: a waiter for that head (a lost compare-and-set catching up) wakes at once."""
    async with wl.open_store(pg_schema_url, shards=SHARDS) as writer:
        mine, other, *_ = await one_workspace_per_shard(writer)
        async with wl.open_store(pg_schema_url, shards=SHARDS, poll_interval=60.0) as store:
            with store.interest(Topic.workspace(mine)):
                head = await store.head()
                await stop_and_start(writer, other)  # another shard: nothing notifies us
                facts = await store.workspace_facts(mine)
                assert facts.seq > head
                with anyio.fail_after(5):
                    await store.wait_for_change(head)


@pytest.mark.anyio
async def test_a_lost_notification_costs_at_most_the_fallback_poll(pg_schema_url: str) -> None:
    """The waiter's shard is never notified (the writer notifies one channel: a replica left
    without ``shards``): the listener's poll wakes it within its interval, without a notification."""
    poll = 0.5
    async with (
        wl.open_store(pg_schema_url, shards=SHARDS) as setup,
        wl.open_store(pg_schema_url) as unsharded,
        wl.open_store(pg_schema_url, shards=SHARDS, poll_interval=poll) as store,
    ):
        assert isinstance(store, PostgresStore)
        (ws, *_) = await one_workspace_per_shard(setup)
        with store.interest(Topic.workspace(ws)):
            await eventually(lambda: bool(store.channels))
            head = await store.head()
            received = store.notifications_received
            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_and_start, unsharded, ws)
                with anyio.fail_after(5):
                    await store.wait_for_change(head)
            woke = time.monotonic() - started
        assert store.notifications_received == received  # no notification woke it
        assert woke < poll + store.listen_timeout + 0.5, woke


@pytest.mark.anyio
async def test_a_lifecycle_and_a_provisioner_on_shards_answer_without_the_poll(pg_schema_url: str) -> None:
    """A runtime on one store, a provisioner on another, both by shard with the fallback poll a
    minute away: the create is answered, so each heard the other (the runtime its workspace, the
    provisioner the builds channel)."""
    options = {"shards": SHARDS, "poll_interval": 60.0}
    async with (
        wl.open_store(pg_schema_url, **options) as a,
        wl.open_store(pg_schema_url, **options) as b,
        wl.Lifecycle(a) as lc,
        wl.SimulatedProvisioner(b, worker="remote"),
    ):
        assert isinstance(a, PostgresStore) and isinstance(b, PostgresStore)
        await lc.register_chat("c1", owner="alice")
        await eventually(lambda: bool(b.channels))  # the provisioner listens for builds
        with anyio.fail_after(10):
            created = await lc.create_workspace("c1", owner="alice", name="dev")
            assert created.data["created"] is True and not created.is_error
            stopped = await lc.stop_workspace("c1", owner="alice")
            assert not stopped.is_error, stopped.data
            assert await lc.state("c1") is wl.WorkspaceState.STOPPED
        assert b.channels == {b._builds_channel}
        assert a.notifications_received >= 2 and b.notifications_received >= 2
