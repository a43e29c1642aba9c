"""The store checks of the event log: order and paging, what each event carries, waking on a
commit, pruning and expired cursors, listing, and a closed store."""

from __future__ import annotations

import anyio

from ..errors import CursorExpiredError, StoreClosedError
from ..machine import derive_state
from ..values import EventKind, StoreEvent, Transition, WorkspaceState
from ._kit import Ctx, check, make_workspace, refused, require


@check
async def the_log_is_ordered_complete_and_pages(ctx: Ctx) -> None:
    """Events come back in seq order, each once, and paging with ``limit`` loses none."""
    store = ctx.store
    for i in range(5):
        await make_workspace(store, f"c{i}")
    everything = await store.read_events(0)
    seqs = [e.seq for e in everything]
    require(seqs == sorted(set(seqs)) and len(seqs) == 10, f"ten events in increasing seq order: {seqs}")
    paged: list[StoreEvent] = []
    cursor = 0
    while batch := await store.read_events(cursor, limit=3):
        paged.extend(batch)
        cursor = batch[-1].seq
    require(paged == list(everything), "reading from a cursor three at a time returns the same events")
    require(await store.head() == seqs[-1], "the head is the last event's seq")


@check
async def events_carry_their_build_and_workspace(ctx: Ctx) -> None:
    """A build_queued event names its workspace, chat, build, number, transition and time."""
    outcome = await make_workspace(ctx.store)
    queued = (await ctx.store.read_events(0))[-1]
    require(queued.kind is EventKind.BUILD_QUEUED, f"the last event is build_queued: {queued.kind}")
    require(
        queued.workspace_id == outcome.facts.workspace_id and queued.chat_id == "c1", "its workspace and chat"
    )
    require(
        queued.build_number == 1 and queued.transition is Transition.START, "its build number and transition"
    )
    require(outcome.build is not None and queued.build_id == outcome.build.build_id, "its build id")
    require(queued.at == ctx.clock(), f"its time is the store clock's: {queued.at} != {ctx.clock()}")


@check
async def wait_for_change_wakes_on_a_commit(ctx: Ctx) -> None:
    """A waiter at the head sleeps until another task commits; one behind returns at once."""
    store = ctx.store
    await store.register_chat("c1", "alice")
    head = await store.head()
    woke = anyio.Event()

    async def waiter() -> None:
        await store.wait_for_change(head)
        woke.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.sleep(0.05)
        require(not woke.is_set(), "wait_for_change(head) returned before any commit")
        await store.create_workspace("c1", "dev", expected_workspace_id=None)
        with anyio.move_on_after(5):
            await woke.wait()
        require(woke.is_set(), "wait_for_change(head) did not wake within 5 s of a commit")
    with anyio.move_on_after(5) as scope:
        await store.wait_for_change(0)
    require(not scope.cancelled_caught, "wait_for_change behind the head did not return at once")


@check
async def pruning_expires_old_cursors(ctx: Ctx) -> None:
    """prune_events drops the events older than the cut; reading from before it is a
    CursorExpiredError, reading after it works."""
    store = ctx.store
    await make_workspace(store, "c1")
    ctx.clock.advance(10)
    cut = ctx.clock()
    await make_workspace(store, "c2")
    dropped = await store.prune_events(cut)
    require(dropped == 2, f"the two events before the cut are dropped: {dropped}")
    await refused(CursorExpiredError, store.read_events(0), "reading from a pruned cursor")
    kept = await store.read_events(await store.head() - 2)
    require([e.chat_id for e in kept] == ["c2", "c2"], "the events after the cut are kept")


@check
async def chats_are_listed_with_their_facts(ctx: Ctx) -> None:
    """list_chats lists every chat, with its workspace's facts where it has one."""
    store = ctx.store
    await make_workspace(store, "c1")
    await store.register_chat("c2", "bob")
    rows = {row.chat.chat_id: row for row in await store.list_chats()}
    require(set(rows) == {"c1", "c2"}, f"both chats are listed: {sorted(rows)}")
    require(rows["c2"].facts is None, "a chat without a workspace has no facts")
    facts = rows["c1"].facts
    require(
        facts is not None and derive_state(facts) is WorkspaceState.BUILDING, "c1's workspace is building"
    )


@check
async def a_closed_store_raises_store_closed(ctx: Ctx) -> None:
    """Every call on a closed store raises StoreClosedError, not a driver's error."""
    async with ctx.factory(ctx.clock) as other:
        await other.register_chat("c1", "alice")
    await refused(StoreClosedError, other.get_chat("c1"), "get_chat on a closed store")
    await refused(StoreClosedError, other.read_events(0), "read_events on a closed store")
    await refused(StoreClosedError, other.register_chat("c2", "alice"), "register_chat on a closed store")
