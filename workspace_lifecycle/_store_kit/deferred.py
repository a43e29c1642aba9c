"""The store checks of deferred requests: a request stored on its workspace behind the build in
flight (``defer_request``, a compare-and-set) and acted on by the write that finishes that
build, in the same transaction (issue 29 item 9: a deferred request must not be lost on exit)."""

from __future__ import annotations

import anyio

from ..errors import NotFoundError
from ..values import Deferred, EventKind, JobStatus, Transition
from ._kit import LEASE, Ctx, check, finish_latest, make_workspace, refused, require


async def _stop_in_flight(ctx: Ctx) -> str:
    """A workspace whose start succeeded and whose stop build (2) is claimed; its id."""
    store = ctx.store
    outcome = await make_workspace(store)
    await finish_latest(store, has_agent=False)
    ws = outcome.facts.workspace_id
    stop = await store.request_build(ws, Transition.STOP, expected_build_number=1)
    require(stop.fired, "a stop from running fires build 2")
    claimed = await store.claim_build("w", lease_seconds=LEASE)
    require(claimed is not None and claimed.number == 2, "the stop build is claimed")
    return ws


@check
async def a_deferred_request_is_stored_with_its_event(ctx: Ctx) -> None:
    """defer_request stores the intent on the workspace (read back by every read) with one
    request_deferred event; the same intent again writes nothing."""
    store = ctx.store
    ws = await _stop_in_flight(ctx)
    head = await store.head()
    d = await store.defer_request(ws, Transition.START, expected_build_number=2, requested_by="alice")
    expected = Deferred(Transition.START, 2, "alice")
    require(d.held, "the deferral holds while build 2 is in flight")
    require(d.facts.workspace.deferred == expected, f"its answer's facts carry the intent: {d.facts}")
    stored = (await store.workspace_facts(ws)).workspace.deferred
    require(stored == expected, f"workspace_facts reads the intent back: {stored}")
    listed = [row.facts.workspace.deferred for row in await store.list_chats() if row.facts is not None]
    require(listed == [expected], f"list_chats reads it too: {listed}")
    events = await store.read_events(head)
    require(
        [(e.kind, e.build_number, e.transition) for e in events]
        == [(EventKind.REQUEST_DEFERRED, 2, Transition.START)],
        f"one request_deferred event for build 2: {events}",
    )
    again = await store.defer_request(ws, Transition.START, expected_build_number=2, requested_by="alice")
    require(again.held and await store.head() == events[-1].seq, "the same intent again writes nothing")


@check
async def a_deferral_holds_only_behind_a_build_in_flight(ctx: Ctx) -> None:
    """defer_request behind a finished build, or another build than the latest, stores nothing."""
    store = ctx.store
    outcome = await make_workspace(store)
    ws = outcome.facts.workspace_id
    await finish_latest(store, has_agent=False)
    head = await store.head()
    late = await store.defer_request(ws, Transition.STOP, expected_build_number=1, requested_by="alice")
    require(not late.held, "behind a finished build it does not hold")
    wrong = await store.defer_request(ws, Transition.STOP, expected_build_number=7, requested_by="alice")
    require(not wrong.held, "behind a build that is not the latest it does not hold")
    require(await store.head() == head, "nothing was written")
    require((await store.workspace_facts(ws)).workspace.deferred is None, "no intent stored")
    await refused(
        NotFoundError,
        store.defer_request("nope", Transition.STOP, expected_build_number=1, requested_by="a"),
        "defer_request on an unknown workspace",
    )


@check
async def finishing_the_build_fires_the_deferred_request(ctx: Ctx) -> None:
    """The write that finishes the build fires the request deferred behind it: its build is
    queued (pending, next number, claimable) in the same transaction, and the intent cleared."""
    store = ctx.store
    ws = await _stop_in_flight(ctx)
    await store.defer_request(ws, Transition.START, expected_build_number=2, requested_by="alice")
    head = await store.head()
    stop = (await store.workspace_facts(ws)).latest_build
    assert stop is not None
    done = await store.finish_build(stop.build_id, JobStatus.SUCCEEDED)
    require(done.status is JobStatus.SUCCEEDED, "the stop build finished")
    events = await store.read_events(head)
    kinds = [e.kind for e in events]
    require(kinds[0] is EventKind.BUILD_FINISHED, f"the finish comes first: {kinds}")
    queued = [e for e in events if e.kind is EventKind.BUILD_QUEUED]
    require(
        len(queued) == 1 and queued[0].transition is Transition.START and queued[0].build_number == 3,
        f"one start build 3 queued by the same write: {events}",
    )
    require(len({e.seq for e in events}) == len(events), "its events are numbered in order")
    facts = await store.workspace_facts(ws)
    latest = facts.latest_build
    require(
        latest is not None and latest.number == 3 and latest.status is JobStatus.PENDING,
        f"build 3 is the latest, pending: {latest}",
    )
    require(facts.workspace.deferred is None, "the intent is cleared")
    claimed = await store.claim_build("w", lease_seconds=LEASE)
    require(claimed is not None and claimed.number == 3, f"build 3 is claimed like any other: {claimed}")


@check
async def a_later_request_replaces_or_withdraws_the_intent(ctx: Ctx) -> None:
    """The latest deferral wins: a delete replaces a stored start, a withdrawal (None) clears
    it, and the finish then queues nothing."""
    store = ctx.store
    ws = await _stop_in_flight(ctx)
    await store.defer_request(ws, Transition.START, expected_build_number=2, requested_by="alice")
    replaced = await store.defer_request(ws, Transition.DELETE, expected_build_number=2, requested_by="alice")
    require(
        replaced.facts.workspace.deferred == Deferred(Transition.DELETE, 2, "alice"),
        f"the delete replaced the start: {replaced.facts.workspace.deferred}",
    )
    withdrawn = await store.defer_request(ws, None, expected_build_number=2, requested_by="alice")
    require(withdrawn.held and withdrawn.facts.workspace.deferred is None, "a withdrawal clears it")
    head = await store.head()
    stop = (await store.workspace_facts(ws)).latest_build
    assert stop is not None
    await store.finish_build(stop.build_id, JobStatus.SUCCEEDED)
    queued = [e for e in await store.read_events(head) if e.kind is EventKind.BUILD_QUEUED]
    require(not queued, f"nothing is queued behind the stop: {queued}")


@check
async def an_expired_lease_fires_the_deferred_request(ctx: Ctx) -> None:
    """A build failed by its lease's expiry (its worker died) fires the request deferred
    behind it, as any finish does: nothing else has to be alive."""
    store = ctx.store
    ws = await _stop_in_flight(ctx)
    await store.defer_request(ws, Transition.START, expected_build_number=2, requested_by="alice")
    stop = (await store.workspace_facts(ws)).latest_build
    assert stop is not None and stop.lease_token is not None
    ctx.clock.advance(LEASE + 1)
    expired = await store.expire_lease(stop.build_id, stop.lease_token)
    require(expired is not None and expired.status is JobStatus.FAILED, f"the lease expired: {expired}")
    latest = (await store.workspace_facts(ws)).latest_build
    require(
        latest is not None and latest.number == 3 and latest.transition is Transition.START,
        f"the start fired behind the failed stop: {latest}",
    )


@check
async def concurrent_deferrals_and_the_finish_fire_at_most_once(ctx: Ctx) -> None:
    """Deferrals racing the finish of their build: the request fires exactly once when one
    of them was stored before the finish, and never twice."""
    store = ctx.store
    ws = await _stop_in_flight(ctx)
    stop = (await store.workspace_facts(ws)).latest_build
    assert stop is not None
    held: list[bool] = []

    async def defer() -> None:
        held.append(
            (await store.defer_request(ws, Transition.START, expected_build_number=2, requested_by="a")).held
        )

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(defer)
        tg.start_soon(store.finish_build, stop.build_id, JobStatus.SUCCEEDED)
    starts = [
        e
        for e in await store.read_events(0)
        if e.kind is EventKind.BUILD_QUEUED and e.transition is Transition.START and e.build_number > 2
    ]
    require(len(starts) == (1 if any(held) else 0), f"held {held}: start builds queued {starts}")
    facts = await store.workspace_facts(ws)
    require(facts.workspace.deferred is None, f"no intent is left behind a finished build: {facts}")
