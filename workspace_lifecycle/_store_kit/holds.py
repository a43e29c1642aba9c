"""The store checks of turn holds: a hold is kept in the store (read back, renewed, released),
fenced like a lease (a lapsed hold cannot be renewed), and a fire of an idle deadline finds it
in the same transaction: put off while a hold is live, put off to ``idle_stop_after`` after a
lapse, and armed afresh by the release of the last hold. The store stamps times from the kit's
clock."""

from __future__ import annotations

from ..errors import HoldLostError
from ..values import Deadline, EventKind, Policy, Reason, Transition
from ._kit import Ctx, check, finish_latest, refused, require

IDLE = 600.0
HOLD = 30.0


async def _running(ctx: Ctx) -> str:
    await ctx.store.register_chat("c1", "alice", policy=Policy(idle_stop_after=IDLE))
    outcome = await ctx.store.create_workspace("c1", "dev", expected_workspace_id=None)
    await finish_latest(ctx.store)
    return outcome.facts.workspace_id


@check
async def a_hold_is_stored_renewed_and_fenced(ctx: Ctx) -> None:
    """hold_turn stores the hold (read back with the workspace), renews it while it is live,
    and refuses (HoldLostError, nothing changed) to renew one that lapsed."""
    store = ctx.store
    ws = await _running(ctx)
    until = await store.hold_turn(ws, "t1", hold_seconds=HOLD)
    require(until == ctx.clock() + HOLD, f"the hold lapses HOLD from now: {until}")
    holds = (await store.workspace_facts(ws)).workspace.holds
    require([(h.token, h.expires_at) for h in holds] == [("t1", until)], f"the hold is stored: {holds}")
    ctx.clock.advance(HOLD - 1)
    renewed = await store.hold_turn(ws, "t1", renew=True, hold_seconds=HOLD)
    require(renewed == ctx.clock() + HOLD, f"a renewal extends it: {renewed}")
    ctx.clock.advance(HOLD)
    before = await store.workspace_facts(ws)
    await refused(
        HoldLostError,
        store.hold_turn(ws, "t1", renew=True, hold_seconds=HOLD),
        "the renewal of a lapsed hold",
    )
    require(
        (await store.workspace_facts(ws)).workspace == before.workspace, "a refused renewal changes nothing"
    )


@check
async def an_idle_stop_waits_for_the_holds(ctx: Ctx) -> None:
    """A due idle deadline of a held workspace fires nothing: it is put off to the hold's expiry
    plus idle_stop_after (a deadline_set event); the release of the last hold arms it at the
    release plus idle_stop_after, and it then fires."""
    store = ctx.store
    ws = await _running(ctx)
    deadline = (await store.workspace_facts(ws)).workspace.deadline
    require(deadline is not None, "the idle deadline is armed")
    assert deadline is not None
    await store.hold_turn(ws, "t1", hold_seconds=IDLE * 2)
    await store.hold_turn(ws, "t2", hold_seconds=HOLD)
    ctx.clock.advance(IDLE)
    put_off = await store.fire_deadline(ws, deadline)
    later = Deadline(deadline.at - IDLE + IDLE * 2 + IDLE, Reason.IDLE)
    require(not put_off.fired, "no idle stop fires while a hold is live")
    require(
        put_off.facts.workspace.deadline == later, f"put off to the latest expiry + IDLE: {put_off.facts}"
    )
    set_events = [e for e in await store.read_events(0) if e.kind is EventKind.DEADLINE_SET]
    require(set_events[-1].armed == later, "a deadline_set event says so")
    require(
        [h.token for h in put_off.facts.workspace.holds] == ["t1"],
        "the lapsed hold is cleared by the fire that put the deadline off",
    )
    ctx.clock.advance(10)
    require(await store.release_turn(ws, "t1"), "the release finds its hold")
    released = Deadline(ctx.clock() + IDLE, Reason.IDLE)
    facts = await store.workspace_facts(ws)
    require(facts.workspace.deadline == released, f"the last release arms release + IDLE: {facts}")
    require(facts.workspace.holds == (), "no hold is left")
    require(not await store.release_turn(ws, "t1"), "a second release finds nothing")
    ctx.clock.advance(IDLE)
    fired = await store.fire_deadline(ws, released)
    build = fired.build
    require(fired.fired and build is not None, "the deadline fires once nothing holds")
    assert build is not None
    require((build.transition, build.reason) == (Transition.STOP, Reason.IDLE), f"{build}")


@check
async def a_lapsed_hold_starts_the_countdown_at_its_expiry(ctx: Ctx) -> None:
    """A hold nobody renews stops holding at its expiry: the idle stop comes idle_stop_after
    after it, not before."""
    store = ctx.store
    ws = await _running(ctx)
    deadline = (await store.workspace_facts(ws)).workspace.deadline
    assert deadline is not None
    until = await store.hold_turn(ws, "dead", hold_seconds=IDLE + HOLD)
    require(until is not None, "the hold is taken")
    assert until is not None
    ctx.clock.advance(IDLE)
    put_off = await store.fire_deadline(ws, deadline)
    later = Deadline(until + IDLE, Reason.IDLE)
    require(not put_off.fired and put_off.facts.workspace.deadline == later, f"{put_off.facts}")
    ctx.clock.advance(later.at - ctx.clock() - 0.001)
    require(not (await store.fire_deadline(ws, later)).fired, "not before expiry + IDLE")
    ctx.clock.advance(0.001)
    require((await store.fire_deadline(ws, later)).fired, "at expiry + IDLE, the idle stop fires")
