"""Cancellation: callers cancelled at random points leave no lock held, no connection inside a
transaction, no half-written build, no tracked workspace; the store keeps working afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from figures import FIGURES, flush

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, JobStatus, Transition
from workspace_lifecycle.testing import applied_states

pytestmark = pytest.mark.anyio

OWNER = "alice"
CHATS = ("c0", "c1", "c2")
VERBS = ("create", "start", "stop", "delete")


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    flush()


async def _check_consistent(store: wl.Store) -> None:
    """Every build row has its build_queued event (and the reverse); derived == applied; at
    most one build in flight per workspace over the whole log."""
    events = list(await store.read_events(0, limit=100_000))
    queued: dict[str, dict[int, str | None]] = {}
    flying: dict[str, int] = {}
    for e in events:
        if e.kind is EventKind.BUILD_QUEUED:
            assert e.workspace_id not in flying, f"two builds in flight on {e.workspace_id}"
            flying[e.workspace_id] = e.build_number
            queued.setdefault(e.workspace_id, {})[e.build_number] = e.build_id
        elif e.kind is EventKind.BUILD_FINISHED and flying.get(e.workspace_id) == e.build_number:
            del flying[e.workspace_id]
    for ws in {e.workspace_id for e in events}:
        # Compare at one point of the log: the rows, then the events up to the rows' seq.
        facts = await store.workspace_facts(ws)
        upto = [e for e in await store.read_events(0, limit=100_000) if e.seq <= facts.seq]
        assert wl.derive_state(facts) is applied_states(upto)[ws], f"{ws}: rows and events disagree"
        latest = facts.latest_build
        numbers = queued.get(ws, {})
        if latest is None:
            assert not numbers
        else:
            assert max(numbers) == latest.number and numbers[latest.number] == latest.build_id


async def _probe_writes(store_url: str, store: wl.Store) -> None:
    """Writes through another connection go through at once: nobody holds a lock."""
    if store_url == "memory://":
        other = store
    else:
        other = wl.open_store(store_url)
        await other.open()
    try:
        with anyio.fail_after(5):
            await other.register_chat("probe", "bob")
            outcome = await other.create_workspace("probe", "probe", expected_workspace_id=None)
            assert outcome.fired
            build = await other.claim_build("probe-worker")
            while build is not None:
                await other.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
                build = await other.claim_build("probe-worker")
            for row in await other.list_chats():
                facts = row.facts
                if facts is not None and facts.latest_build is not None and not facts.workspace.deleted:
                    await other.request_build(
                        facts.workspace_id, Transition.STOP, expected_build_number=facts.latest_build.number
                    )
    finally:
        if other is not store:
            await other.aclose()


async def test_sqlite_cancelled_write_still_wakes_waiters(tmp_path: Path) -> None:
    """A write whose caller is cancelled still commits (aiosqlite finishes it on its thread);
    a task sleeping in wait_for_change must wake for it, even if another task reads the head
    first. (It used to sleep until the next unrelated commit.)"""
    async with wl.open_store(f"sqlite:///{tmp_path / 'wake.db'}") as store:
        await store.register_chat("c", OWNER)
        ws = (await store.create_workspace("c", "dev", expected_workspace_id=None)).facts.workspace_id
        build = await store.claim_build("w")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED)
        before = await store.head()
        woke = anyio.Event()

        async def waiter() -> None:
            await store.wait_for_change(before)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.05)  # the waiter sleeps
            with anyio.move_on_after(0):  # cancelled at once; the transaction still commits
                await store.request_build(ws, Transition.STOP, expected_build_number=1)
            # Committed, and this task has seen it. (Reads have their own connection: a read
            # does not wait for a write its caller did not await, so it may answer before the
            # abandoned write commits; it is seen within the next few reads.)
            with anyio.fail_after(1):
                while await store.head() <= before:  # noqa: ASYNC110 - polling the head is the point
                    await anyio.sleep(0.001)
            with anyio.fail_after(0.3):  # the watcher polls every few ms
                await woke.wait()
            tg.cancel_scope.cancel()


async def test_sqlite_foreign_commit_wakes_waiters_after_a_head_read(tmp_path: Path) -> None:
    """The same lost wake-up without any cancellation: another process commits, a task of this
    one reads the head before the watcher thread polls, and the task sleeping in
    wait_for_change (the Lifecycle's pump) is never woken; a request that then waits for the
    pump to catch up with that head hangs until some later commit."""
    path = tmp_path / "wake.db"
    async with wl.open_store(f"sqlite:///{path}") as here, wl.open_store(f"sqlite:///{path}") as there:
        before = await here.head()
        woke = anyio.Event()

        async def waiter() -> None:
            await here.wait_for_change(before)
            woke.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.05)
            await there.register_chat("c", OWNER)
            await there.create_workspace("c", "dev", expected_workspace_id=None)
            assert await here.head() > before
            with anyio.fail_after(0.3):
                await woke.wait()
            tg.cancel_scope.cancel()


async def _after_cancellations(store: wl.Store, lc: wl.Lifecycle) -> None:
    # Nothing tracked is left behind by the cancelled callers (background continuations of
    # wait=False requests may still hold one for a moment).
    for _ in range(500):  # lc.tracked has no event to wait on
        if not lc.tracked:
            break
        await anyio.sleep(0.01)
    assert lc.tracked == 0, "a cancelled caller left a workspace tracked"
    await _check_consistent(store)
    # The runtime keeps answering every chat.
    for chat in CHATS:
        with anyio.fail_after(10):
            r = await lc.start_workspace(chat, owner=OWNER)
        assert r.is_error is (r.text in (wl.answers.NO_WORKSPACE, wl.answers.WORKSPACE_DELETED)), r.text


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_cancellation_leaves_nothing_behind(store: wl.Store, store_url: str, seed: int) -> None:
    rng = random.Random(seed)
    cancelled = 0
    async with (
        wl.SimulatedProvisioner(
            store, build_seconds=0.003, fail=0.2, seed=seed, agent="ready", agent_seconds=0.002
        ),
        wl.Lifecycle(store, build_timeout=10, agent_timeout=1, resync_interval=0.2) as lc,
    ):
        for chat in CHATS:
            await lc.register_chat(chat, owner=OWNER)

        async def caller(verb: str, chat: str, deadline: float, wait: bool) -> None:
            nonlocal cancelled
            method = getattr(lc, f"{verb}_workspace")
            with anyio.move_on_after(deadline) as scope:
                await method(chat, owner=OWNER, wait=wait)
            cancelled += scope.cancelled_caught

        async def store_caller(deadline: float) -> None:
            """A provisioner-side write cancelled mid-flight (claim, then finish)."""
            nonlocal cancelled
            with anyio.move_on_after(deadline) as scope:
                build = await store.claim_build("cancelled-worker")
                if build is not None:
                    await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
            cancelled += scope.cancelled_caught

        for _ in range(4):
            async with anyio.create_task_group() as tg:
                for _ in range(15):
                    deadline = rng.choice([0.0, 0.0005, 0.002, 0.01, 0.03])
                    if rng.random() < 0.15:
                        tg.start_soon(store_caller, deadline)
                    else:
                        tg.start_soon(
                            caller, rng.choice(VERBS), rng.choice(CHATS), deadline, rng.random() < 0.7
                        )
        # A build claimed by a cancelled "worker" that never finished it stays running: finish
        # it, as the reaper would, so the store can quiesce.
        stuck: list[wl.Build | None] = []
        with anyio.move_on_after(3) as quiet:
            while True:
                cursor = await store.head()
                stuck = [
                    row.facts.latest_build
                    for row in await store.list_chats()
                    if row.facts is not None
                    and row.facts.latest_build is not None
                    and row.facts.latest_build.status.in_progress
                ]
                if not stuck:
                    break
                for build in stuck:
                    if build is not None and build.worker == "cancelled-worker":
                        await store.finish_build(build.build_id, JobStatus.FAILED, "worker cancelled")
                with anyio.move_on_after(0.05):
                    await store.wait_for_change(cursor)
        assert not quiet.cancelled_caught, f"builds never finished: {stuck}"
        await _after_cancellations(store, lc)
    await _probe_writes(store_url, store)
    await _check_consistent(store)
    assert cancelled > 0
    FIGURES["callers_cancelled"] += cancelled
