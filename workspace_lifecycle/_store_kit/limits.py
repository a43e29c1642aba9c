"""The store checks of per-owner limits: stored per owner, counted as
:mod:`workspace_lifecycle.limits` says, checked inside the create or start that would take a
slot (nothing written when refused), and never passed together by concurrent writers."""

from __future__ import annotations

import anyio

from ..adapters.base import Outcome
from ..errors import QuotaExceededError
from ..limits import Limits, Usage
from ..values import JobStatus, Transition
from ._kit import Ctx, check, finish_latest, make_workspace, refused, require


async def _failed_workspaces(ctx: Ctx, count: int, owner: str = "alice") -> list[str]:
    """``count`` chats of ``owner``, each with a workspace whose first start failed (so none
    runs); their workspace ids."""
    ids = []
    for i in range(count):
        outcome = await make_workspace(ctx.store, f"{owner}-{i}", owner)
        await finish_latest(ctx.store, JobStatus.FAILED, error="boom")
        ids.append(outcome.facts.workspace_id)
    return ids


@check
async def limits_are_stored_per_owner(ctx: Ctx) -> None:
    """set_limits stores an owner's limits (replacing the last), read back by usage; others keep none."""
    store = ctx.store
    require(
        await store.usage("alice") == Usage("alice"), "an owner with nothing stored has no usage, no limits"
    )
    await store.set_limits("alice", Limits(running=2, workspaces=5))
    await store.set_limits("alice", Limits(running=4))
    got = await store.usage("alice")
    require(got.limits == Limits(running=4), f"the last limits set are stored: {got!r}")
    require((await store.usage("bob")).limits is None, "another owner's limits are untouched")


@check
async def usage_counts_running_and_all_workspaces(ctx: Ctx) -> None:
    """usage counts an owner's workspaces not deleted, and those whose latest build is a start
    pending, running or succeeded (not a failed start, not a stop)."""
    store = ctx.store
    await make_workspace(store, "up", "alice")
    await finish_latest(store)  # running
    await make_workspace(store, "failed", "alice")
    await finish_latest(store, JobStatus.FAILED, error="boom")  # not running
    down = await make_workspace(store, "down", "alice")
    await finish_latest(store)
    await store.request_build(down.facts.workspace_id, Transition.STOP, expected_build_number=1)
    await make_workspace(store, "queued", "alice")  # its start is pending: running
    await make_workspace(store, "other", "bob")
    got = await store.usage("alice")
    require(got == Usage("alice", running=2, workspaces=4), f"alice: 2 running of 4 workspaces, got {got!r}")
    await finish_latest(store)  # the stop: still not running
    require((await store.usage("alice")).running == 2, "a finished stop leaves the count as it was")


@check
async def a_create_over_a_limit_writes_nothing(ctx: Ctx) -> None:
    """A create_workspace over the owner's limit of workspaces raises QuotaExceededError with
    what is used and allowed, and writes nothing; the caller's default applies when none is stored."""
    store = ctx.store
    await _failed_workspaces(ctx, 1)
    await store.register_chat("c2", "alice")
    head = await store.head()
    exc = await refused(
        QuotaExceededError,
        store.create_workspace("c2", "dev", expected_workspace_id=None, limits=Limits(workspaces=1)),
        "a second workspace with a default limit of 1",
    )
    require(
        (exc.limit, exc.used, exc.allowed) == ("workspaces", 1, 1), f"the quota error says 1 of 1: {exc!r}"
    )
    require(await store.head() == head, "a refused create appends no event")
    require((await store.get_chat("c2")).workspace_id is None, "a refused create binds nothing")  # type: ignore[union-attr]
    await store.set_limits("alice", Limits(workspaces=2))  # stored: over the default
    outcome = await store.create_workspace(
        "c2", "dev", expected_workspace_id=None, limits=Limits(workspaces=1)
    )
    require(outcome.fired, "the owner's stored limit replaces the default")


@check
async def a_start_over_the_running_limit_is_refused(ctx: Ctx) -> None:
    """A start build over the owner's running limit raises QuotaExceededError and writes nothing;
    stops are never refused, and a stop frees the slot."""
    store = ctx.store
    first, second = await _failed_workspaces(ctx, 2)
    await store.set_limits("alice", Limits(running=1))
    fired = await store.request_build(first, Transition.START, expected_build_number=1)
    require(fired.fired, "the first start fits the limit of 1")
    head = await store.head()
    exc = await refused(
        QuotaExceededError,
        store.request_build(second, Transition.START, expected_build_number=1),
        "a second running workspace with a limit of 1",
    )
    require((exc.limit, exc.used, exc.allowed) == ("running", 1, 1), f"the quota error says 1 of 1: {exc!r}")
    require(await store.head() == head, "a refused start appends no event")
    await finish_latest(store)
    stop = await store.request_build(first, Transition.STOP, expected_build_number=2)
    require(stop.fired, "a stop is never refused for limits")
    again = await store.request_build(second, Transition.START, expected_build_number=1)
    require(again.fired, "a stop in flight frees its slot: the other workspace may start")


@check
async def concurrent_starts_never_pass_the_last_slot(ctx: Ctx) -> None:
    """Concurrent starts of one owner's workspaces with a running limit of 2: exactly 2 fire and
    every other one is refused for quota, whatever the interleaving."""
    store = ctx.store
    ids = await _failed_workspaces(ctx, 8)
    await store.set_limits("alice", Limits(running=2))
    results: list[Outcome | QuotaExceededError] = []

    async def start(workspace_id: str) -> None:
        try:
            results.append(await store.request_build(workspace_id, Transition.START, expected_build_number=1))
        except QuotaExceededError as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        for workspace_id in ids:
            tg.start_soon(start, workspace_id)
    fired = [r for r in results if isinstance(r, Outcome) and r.fired]
    quota = [r for r in results if isinstance(r, QuotaExceededError)]
    require(len(fired) == 2 and len(quota) == 6, f"2 starts fire and 6 are refused, got {results!r}")
    require((await store.usage("alice")).running == 2, "the owner runs exactly its limit")


@check
async def a_deferred_start_over_a_stored_limit_is_dropped(ctx: Ctx) -> None:
    """A start deferred behind a stop is fired by the stop's finish only if it fits the owner's
    stored limits, counted in the finish's own transaction; over them, the intent is dropped."""
    store = ctx.store
    up = await make_workspace(store, "up", "alice")
    await finish_latest(store)
    down = await make_workspace(store, "down", "alice")
    await finish_latest(store)
    ws = down.facts.workspace_id
    await store.request_build(ws, Transition.STOP, expected_build_number=1)
    deferral = await store.defer_request(ws, Transition.START, expected_build_number=2, requested_by="alice")
    require(deferral.held, "a start deferred behind the stop in flight is stored")
    await store.set_limits("alice", Limits(running=1))  # the other workspace holds the one slot
    await finish_latest(store)  # the stop
    facts = await store.workspace_facts(ws)
    require(
        facts.latest_build is not None and facts.latest_build.number == 2,
        f"the deferred start would exceed the limit of 1: not fired, got {facts.latest_build!r}",
    )
    require(facts.workspace.deferred is None, "the intent is dropped with the start")
    require((await store.usage("alice")).running == 1, "alice keeps one running workspace")
    require(up.facts.workspace_id != ws, "two workspaces")


@check
async def a_deferred_start_keeps_the_limit_it_was_asked_under(ctx: Ctx) -> None:
    """A start deferred by a runtime with a default running limit (no limits stored for the
    owner) carries that limit: the finish that fires it checks it, whatever runtime is alive."""
    store = ctx.store
    await make_workspace(store, "up", "alice")
    await finish_latest(store)
    down = await make_workspace(store, "down", "alice")
    await finish_latest(store)
    ws = down.facts.workspace_id
    await store.request_build(ws, Transition.STOP, expected_build_number=1)
    deferral = await store.defer_request(
        ws, Transition.START, expected_build_number=2, requested_by="alice", running_limit=1
    )
    require(deferral.held, "a start deferred behind the stop in flight is stored")
    stored = (await store.workspace_facts(ws)).workspace.deferred
    require(stored is not None and stored.running_limit == 1, f"the intent keeps its limit: {stored!r}")
    await finish_latest(store)  # the stop: the deferred start would be a second running workspace
    facts = await store.workspace_facts(ws)
    require(
        facts.latest_build is not None and facts.latest_build.number == 2,
        f"over the limit the deferred start is not fired, got {facts.latest_build!r}",
    )
    require((await store.usage("alice")).running == 1, "alice keeps one running workspace")
    # Under a limit it fits, the deferred start fires as ever.
    await store.request_build(ws, Transition.START, expected_build_number=2)  # no limit here
    await finish_latest(store)
    await store.request_build(ws, Transition.STOP, expected_build_number=3)
    await store.defer_request(
        ws, Transition.START, expected_build_number=4, requested_by="alice", running_limit=2
    )
    await finish_latest(store)
    fired = (await store.workspace_facts(ws)).latest_build
    require(
        fired is not None and fired.number == 5 and fired.transition is Transition.START,
        f"within the limit the deferred start fires: {fired!r}",
    )
