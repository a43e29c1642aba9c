"""The store checks of time: leases with fencing (a claim is a lease; renewal, expiry once, a
lost or wrong token refused with nothing changed) and deadlines (armed by a build's end, pushed
by ``touch``, fired once and never early). The store stamps times from the kit's clock."""

from __future__ import annotations

import anyio

from ..adapters.base import Store
from ..errors import BuildConflictError, LeaseLostError
from ..values import (
    AgentLifecycle,
    Build,
    Deadline,
    EventKind,
    JobStatus,
    Policy,
    Reason,
    Transition,
    WorkspaceFacts,
)
from ._kit import LEASE, T0, Ctx, check, claimed, finish_latest, refused, require

IDLE = 600.0


async def _snapshot(store: Store, workspace_id: str) -> tuple[WorkspaceFacts, int]:
    return await store.workspace_facts(workspace_id), await store.head()


@check
async def a_claim_is_a_lease(ctx: Ctx) -> None:
    """A claim gives the build a fencing token and an expiry ``lease_seconds`` ahead (store time);
    two claims have different tokens."""
    store = ctx.store
    build = await claimed(store, "c1")
    require(
        build.status is JobStatus.RUNNING and build.worker == "w", "the claimed build runs, by its worker"
    )
    require(
        build.lease_expires_at == T0 + LEASE,
        f"its lease ends LEASE after the claim: {build.lease_expires_at}",
    )
    require(await store.get_build(build.build_id) == build, "get_build reads the claimed build back")
    lease = await store.next_lease_expiry()
    require(
        lease is not None and lease.build_id == build.build_id and lease.token == build.lease_token,
        "next lease",
    )
    other = await claimed(store, "c2")
    require(other.lease_token != build.lease_token, "two claims have different tokens")


@check
async def a_renewal_extends_the_lease(ctx: Ctx) -> None:
    """renew_lease with the token moves the expiry, appends no event, and the old expiry no longer
    expires the build."""
    store = ctx.store
    build = await claimed(store)
    token = build.lease_token or ""
    head = await store.head()
    ctx.clock.advance(LEASE - 1)
    until = await store.renew_lease(build.build_id, token, lease_seconds=LEASE)
    require(until == T0 + LEASE - 1 + LEASE, f"the lease now ends LEASE after the renewal: {until}")
    require(await store.head() == head, "a renewal appends no event")
    ctx.clock.advance(1)  # the first lease's end
    require(
        await store.expire_lease(build.build_id, token) is None,
        "a renewed lease does not expire at its old end",
    )
    require((await store.get_build(build.build_id)).status is JobStatus.RUNNING, "the build still runs")


@check
async def a_lapsed_or_wrong_token_is_refused(ctx: Ctx) -> None:
    """A wrong token, or a lease past its end (even before any reaper acted), cannot finish or
    renew: LeaseLostError, and the facts and the head are unchanged."""
    store = ctx.store
    build = await claimed(store)
    before = await _snapshot(store, build.workspace_id)
    await refused(
        LeaseLostError, store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease="forged"), "forged"
    )
    await refused(
        LeaseLostError, store.renew_lease(build.build_id, "forged"), "a renewal with a forged token"
    )
    ctx.clock.advance(LEASE + 5)
    token = build.lease_token
    await refused(
        LeaseLostError, store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=token), "lapsed"
    )
    await refused(
        LeaseLostError, store.renew_lease(build.build_id, token or ""), "a renewal of a lapsed lease"
    )
    require(await _snapshot(store, build.workspace_id) == before, "refused calls change nothing")


@check
async def an_expiry_fails_the_build_exactly_once(ctx: Ctx) -> None:
    """Eight concurrent expiries of a due lease fail the build once (one build_finished); the
    lost token then cannot finish, renew or report."""
    store = ctx.store
    build = await claimed(store)
    token = build.lease_token or ""
    ctx.clock.advance(LEASE - 0.001)
    require(await store.expire_lease(build.build_id, token) is None, "a lease not yet due is not expired")
    ctx.clock.advance(0.001)
    head = await store.head()
    results: list[Build | None] = []

    async def expire() -> None:
        results.append(await store.expire_lease(build.build_id, token))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(expire)
    failed = [b for b in results if b is not None]
    require(
        len(failed) == 1 and failed[0].status is JobStatus.FAILED, f"{len(failed)} of 8 expiries failed it"
    )
    finished = [e for e in await store.read_events(head) if e.kind is EventKind.BUILD_FINISHED]
    require(len(finished) == 1, f"one build_finished event: {len(finished)}")
    require(await store.next_lease_expiry() is None, "no lease is left to expire")
    before = await _snapshot(store, build.workspace_id)
    await refused(
        LeaseLostError, store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=token), "lost"
    )
    await refused(LeaseLostError, store.renew_lease(build.build_id, token), "a renewal after the expiry")
    require(await _snapshot(store, build.workspace_id) == before, "refused calls change nothing")


@check
async def the_holder_finishes_and_an_old_token_cannot_report(ctx: Ctx) -> None:
    """The holder finishes and reports with its token; a repeated finish is a conflict (not a lost
    lease); a token of an older build cannot change a newer build's agent."""
    store = ctx.store
    first = await claimed(store)
    ws = first.workspace_id
    await store.finish_build(first.build_id, JobStatus.SUCCEEDED, lease=first.lease_token)
    await store.report_agent(ws, AgentLifecycle.READY, lease=first.lease_token)
    again = await refused(
        BuildConflictError,
        store.finish_build(first.build_id, JobStatus.SUCCEEDED, lease=first.lease_token),
        "a repeated finish by the holder",
    )
    require(not isinstance(again, LeaseLostError), "a repeated finish is a conflict, not a lost lease")
    for transition, number in ((Transition.STOP, 1), (Transition.START, 2)):
        require(
            (await store.request_build(ws, transition, expected_build_number=number)).fired, f"{transition}"
        )
        build = await store.claim_build("other")
        require(build is not None, "the new build is claimed")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, lease=build.lease_token)
    before = await _snapshot(store, ws)
    await refused(
        LeaseLostError,
        store.report_agent(ws, AgentLifecycle.OFF, lease=first.lease_token),
        "an old build's report",
    )
    require(await _snapshot(store, ws) == before, "the newer build's agent is unchanged")


async def _running(ctx: Ctx, policy: Policy) -> str:
    await ctx.store.register_chat("c1", "alice", policy=policy)
    outcome = await ctx.store.create_workspace("c1", "dev", expected_workspace_id=None)
    await finish_latest(ctx.store)
    return outcome.facts.workspace_id


@check
async def a_build_end_arms_the_deadline_and_touch_pushes_it(ctx: Ctx) -> None:
    """A start build that succeeds arms the idle deadline (one deadline_set event, listed by
    armed_deadlines); touch pushes it, and writes nothing when it would not move."""
    store = ctx.store
    ws = await _running(ctx, Policy(idle_stop_after=IDLE))
    expected = Deadline(ctx.clock() + IDLE, Reason.IDLE)
    require((await store.workspace_facts(ws)).workspace.deadline == expected, "the idle deadline is armed")
    armed = await store.armed_deadlines()
    require(armed.deadlines == {ws: expected} and armed.head == await store.head(), f"armed: {armed}")
    set_events = [e for e in await store.read_events(0) if e.kind is EventKind.DEADLINE_SET]
    require([e.armed for e in set_events] == [expected], "one deadline_set event carries it")
    ctx.clock.advance(100)
    pushed = await store.touch(ws)
    require(pushed == Deadline(ctx.clock() + IDLE, Reason.IDLE), f"touch pushes it IDLE ahead: {pushed}")
    head = await store.head()
    require(
        await store.touch(ws) == pushed and await store.head() == head,
        "a touch at the same time writes nothing",
    )


@check
async def a_deadline_fires_once_and_never_early(ctx: Ctx) -> None:
    """fire_deadline is a compare-and-set on the deadline and the store's time: not before it is
    due, not for another deadline, and exactly once (a stop build, reason idle)."""
    store = ctx.store
    ws = await _running(ctx, Policy(idle_stop_after=IDLE))
    deadline = (await store.workspace_facts(ws)).workspace.deadline
    require(deadline is not None, "the idle deadline is armed")
    assert deadline is not None
    ctx.clock.advance(IDLE - 0.001)
    require(not (await store.fire_deadline(ws, deadline)).fired, "a deadline does not fire before it is due")
    ctx.clock.advance(0.001)
    stale = await store.fire_deadline(ws, Deadline(deadline.at - 1, Reason.IDLE))
    require(not stale.fired and stale.build is None, "another deadline than the armed one fires nothing")
    fired = await store.fire_deadline(ws, deadline)
    build = fired.build
    require(fired.fired and build is not None, "the due deadline fires")
    assert build is not None
    require((build.transition, build.reason, build.number) == (Transition.STOP, Reason.IDLE, 2), f"{build}")
    require(fired.facts.workspace.deadline is None, "firing disarms the deadline")
    require(not (await store.fire_deadline(ws, deadline)).fired, "a deadline fires once")
    require((await store.armed_deadlines()).deadlines == {}, "nothing is armed after it fired")


@check
async def a_warning_is_written_once_and_never_for_a_pushed_deadline(ctx: Ctx) -> None:
    """warn_deadline is a compare-and-set on the stored deadline: not before its warning time,
    once (the stored deadline records that it warned, armed_deadlines lists it so), not for a
    deadline pushed meanwhile, and never once the deadline itself passed."""
    store = ctx.store
    warn = 60.0
    ws = await _running(ctx, Policy(idle_stop_after=IDLE, warn_before=warn))
    deadline = (await store.workspace_facts(ws)).workspace.deadline
    require(deadline == Deadline(ctx.clock() + IDLE, Reason.IDLE, ctx.clock() + IDLE - warn), f"{deadline}")
    assert deadline is not None
    ctx.clock.advance(IDLE - warn - 0.001)
    require(not (await store.warn_deadline(ws, deadline)).fired, "no warning before its time")
    ctx.clock.advance(0.001)
    head = await store.head()
    warned = await store.warn_deadline(ws, deadline)
    marked = Deadline(deadline.at, Reason.IDLE, deadline.warn_at, warned=True)
    require(warned.fired and warned.facts.workspace.deadline == marked, f"the warning is written: {warned}")
    events = await store.read_events(head)
    require(
        [(e.kind, e.deadline, e.at, e.armed) for e in events]
        == [(EventKind.DEADLINE_APPROACHING, deadline.at, ctx.clock(), marked)],
        f"one deadline_approaching event: {events}",
    )
    require((await store.armed_deadlines()).deadlines == {ws: marked}, "the stored deadline says it warned")
    require(not (await store.warn_deadline(ws, deadline)).fired, "a deadline warns once")
    require(not (await store.warn_deadline(ws, marked)).fired, "a warned deadline warns no more")
    ctx.clock.advance(10)
    pushed = await store.touch(ws)
    require(
        pushed is not None and pushed.at > deadline.at and not pushed.warned, f"touch pushes it: {pushed}"
    )
    require(not (await store.warn_deadline(ws, deadline)).fired, "no warning for the pushed deadline")
    assert pushed is not None
    ctx.clock.advance(pushed.at - ctx.clock())
    require(not (await store.warn_deadline(ws, pushed)).fired, "no warning once the deadline passed")
    require((await store.fire_deadline(ws, pushed)).fired, "the deadline still fires")
