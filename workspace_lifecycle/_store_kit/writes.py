"""The store checks of the writes: chats, ``create_workspace``, ``request_build`` and the
provisioner side (claims, finishes, agent reports), each a compare-and-set that fires once."""

from __future__ import annotations

import anyio

from ..adapters.base import Outcome
from ..errors import BuildConflictError, NotFoundError, OwnershipError
from ..machine import derive_state
from ..values import AgentLifecycle, Build, Chat, EventKind, JobStatus, Transition, WorkspaceState
from ._kit import Ctx, check, finish_latest, make_workspace, refused, require


@check
async def register_is_idempotent(ctx: Ctx) -> None:
    """Registering a chat twice with one owner returns the same chat; another owner is refused."""
    store = ctx.store
    a = await store.register_chat("c1", "alice")
    b = await store.register_chat("c1", "alice")
    require(a == b == Chat("c1", "alice", None), f"both registrations return Chat('c1', 'alice'): {a}, {b}")
    await refused(OwnershipError, store.register_chat("c1", "mallory"), "register_chat by another owner")
    require(await store.get_chat("c1") == a, "the chat keeps its owner after a refused registration")


@check
async def unknown_ids_are_not_found(ctx: Ctx) -> None:
    """An unknown chat reads as None; an unknown workspace or build is a NotFoundError."""
    store = ctx.store
    require(await store.get_chat("nope") is None, "get_chat of an unknown chat is None")
    await refused(NotFoundError, store.workspace_facts("nope"), "workspace_facts of an unknown workspace")
    await refused(
        NotFoundError,
        store.create_workspace("nope", "dev", expected_workspace_id=None),
        "create_workspace for an unknown chat",
    )
    await refused(
        NotFoundError,
        store.request_build("nope", Transition.START, expected_build_number=0),
        "request_build on an unknown workspace",
    )
    await refused(
        NotFoundError, store.finish_build("nope", JobStatus.SUCCEEDED), "finish_build of an unknown build"
    )


@check
async def strings_round_trip_exactly(ctx: Ctx) -> None:
    """Quotes, SQL metacharacters and non-ASCII text are stored and returned exactly."""
    chat, owner = "c'; DROP TABLE chats; --\"ü🚀", "o'wner\\%_"
    await ctx.store.register_chat(chat, owner)
    got = await ctx.store.get_chat(chat)
    require(got == Chat(chat, owner, None), f"the chat comes back exactly: {got!r}")


@check
async def create_binds_the_chat_and_queues_build_1(ctx: Ctx) -> None:
    """create_workspace binds the chat and appends build 1 (start, pending) with its two events."""
    store = ctx.store
    head = await store.head()
    outcome = await make_workspace(store)
    facts, build = outcome.facts, outcome.build
    require(
        facts.workspace.name == "dev" and facts.workspace.owner == "alice", "the workspace's name and owner"
    )
    require(
        build is not None
        and (build.number, build.transition, build.status) == (1, Transition.START, JobStatus.PENDING),
        f"build 1 is a pending start: {build}",
    )
    require(await store.get_chat("c1") == Chat("c1", "alice", facts.workspace_id), "the chat is bound to it")
    events = await store.read_events(head)
    kinds = [e.kind for e in events]
    require(
        kinds == [EventKind.CHAT_BOUND, EventKind.BUILD_QUEUED],
        f"the events are chat_bound, build_queued: {kinds}",
    )
    require(
        facts.seq == events[-1].seq == await store.head(), "the facts carry the seq of the write's last event"
    )
    require(derive_state(facts) is WorkspaceState.BUILDING, "the workspace is building")


@check
async def create_is_a_compare_and_set(ctx: Ctx) -> None:
    """A second create expecting the old binding appends nothing and reports the winner."""
    first = await make_workspace(ctx.store)
    head = await ctx.store.head()
    second = await ctx.store.create_workspace("c1", "other", expected_workspace_id=None)
    require(not second.fired and second.build is None, "the stale create fires nothing")
    require(second.facts.workspace_id == first.facts.workspace_id, "it reports the workspace that won")
    require(await ctx.store.head() == head, "it writes nothing")


@check
async def running_or_starting_workspaces_are_never_replaced(ctx: Ctx) -> None:
    """create_workspace never re-binds a chat away from a workspace that runs or is starting; a
    stopping one may be replaced."""
    store = ctx.store
    ws = (await make_workspace(store)).facts.workspace_id
    require(
        not (await store.create_workspace("c1", "x", expected_workspace_id=ws)).fired, "starting: refused"
    )
    await finish_latest(store)
    head = await store.head()
    require(not (await store.create_workspace("c1", "x", expected_workspace_id=ws)).fired, "running: refused")
    require(await store.head() == head, "a refused create writes nothing")
    require((await store.request_build(ws, Transition.STOP, expected_build_number=1)).fired, "the stop fires")
    again = await store.create_workspace("c1", "x", expected_workspace_id=ws)
    chat = await store.get_chat("c1")
    require(
        again.fired and chat is not None and chat.workspace_id == again.facts.workspace_id,
        "stopping: replaced",
    )


@check
async def a_start_needs_the_chat_still_bound(ctx: Ctx) -> None:
    """A workspace its chat has replaced is never started again; it may still be stopped."""
    store = ctx.store
    old = (await make_workspace(store)).facts.workspace_id
    await finish_latest(store, JobStatus.FAILED)
    again = await store.create_workspace("c1", "dev2", expected_workspace_id=old)
    require(again.fired and again.facts.workspace_id != old, "a failed workspace is replaced by a new one")
    head = await store.head()
    start = await store.request_build(old, Transition.START, expected_build_number=1)
    require(
        not start.fired and start.build is None and await store.head() == head, "the start writes nothing"
    )
    stop = await store.request_build(old, Transition.STOP, expected_build_number=1)
    require(
        stop.fired and stop.build is not None and stop.build.transition is Transition.STOP, "the stop fires"
    )


@check
async def request_build_is_a_compare_and_set(ctx: Ctx) -> None:
    """Only a caller that saw the latest (finished) build number appends the next build."""
    store = ctx.store
    ws = (await make_workspace(store)).facts.workspace_id
    busy = await store.request_build(ws, Transition.STOP, expected_build_number=1)
    require(not busy.fired, "no build is appended while the latest one is in progress")
    await finish_latest(store)
    require(
        not (await store.request_build(ws, Transition.STOP, expected_build_number=0)).fired, "a stale number"
    )
    won = await store.request_build(ws, Transition.STOP, expected_build_number=1)
    require(
        won.fired and won.build is not None and won.build.number == 2, "the caller that saw build 1 fires 2"
    )
    lost = await store.request_build(ws, Transition.STOP, expected_build_number=1)
    require(not lost.fired and lost.facts.latest_build == won.build, "the next caller loses and sees build 2")


@check
async def concurrent_requests_fire_once(ctx: Ctx) -> None:
    """Fifty concurrent requests that saw the same build append exactly one."""
    store = ctx.store
    ws = (await make_workspace(store)).facts.workspace_id
    await finish_latest(store)
    results: list[Outcome] = []

    async def one() -> None:
        results.append(await store.request_build(ws, Transition.STOP, expected_build_number=1))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(one)
    require(sum(r.fired for r in results) == 1, f"{sum(r.fired for r in results)} of 50 fired")
    latest = {r.facts.latest_build.build_id for r in results if r.facts.latest_build}
    require(len(latest) == 1, "every caller sees the one build that fired")


@check
async def each_build_is_claimed_once_oldest_first(ctx: Ctx) -> None:
    """Concurrent claims hand a pending build to one worker; builds go oldest first."""
    store = ctx.store
    a = await make_workspace(store, "c1")
    b = await make_workspace(store, "c2")
    got: list[Build | None] = []

    async def claim(i: int) -> None:
        got.append(await store.claim_build(f"w{i}"))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(claim, i)
    claimed = [build for build in got if build is not None]
    require(len(claimed) == 2, f"20 concurrent claims of two builds hand out {len(claimed)}")
    require(
        all(c.status is JobStatus.RUNNING and c.worker for c in claimed),
        "a claimed build runs, by its worker",
    )
    claimed_workspaces = {c.workspace_id for c in claimed}
    require(claimed_workspaces == {a.facts.workspace_id, b.facts.workspace_id}, "each build is claimed once")
    await _claims_go_oldest_first(ctx)


async def _claims_go_oldest_first(ctx: Ctx) -> None:
    store = ctx.store
    first = await make_workspace(store, "c3")
    second = await make_workspace(store, "c4")
    one, two = await store.claim_build("w"), await store.claim_build("w")
    require(
        one is not None and two is not None and await store.claim_build("w") is None, "two claims, then none"
    )
    assert one is not None and two is not None
    require(
        (one.workspace_id, two.workspace_id) == (first.facts.workspace_id, second.facts.workspace_id),
        "the oldest pending build is claimed first",
    )


@check
async def a_finish_has_its_effects(ctx: Ctx) -> None:
    """A succeeded start with an agent creates it (``created``); without one, none; the events of
    the finish follow the head in order."""
    store = ctx.store
    ws = (await make_workspace(store, "c1")).facts.workspace_id
    done = await finish_latest(store, has_agent=True)
    facts = await store.workspace_facts(ws)
    require(done.status is JobStatus.SUCCEEDED and done.has_agent, "the build succeeded with an agent")
    require(
        facts.agent is not None and facts.agent.lifecycle is AgentLifecycle.CREATED, "the agent is created"
    )
    require(derive_state(facts) is WorkspaceState.RUNNING, "the workspace runs")
    await store.report_agent(ws, AgentLifecycle.READY)
    require(
        derive_state(await store.workspace_facts(ws)) is WorkspaceState.AGENT_READY,
        "a ready agent is reported",
    )
    other = (await make_workspace(store, "c2")).facts.workspace_id
    head = await store.head()
    await finish_latest(store, has_agent=False)
    require((await store.workspace_facts(other)).agent is None, "a build without an agent makes none")
    events = [(e.seq, e.kind) for e in await store.read_events(head)]
    expected = [(head + 1, EventKind.BUILD_UPDATED), (head + 2, EventKind.BUILD_FINISHED)]
    require(events == expected, f"a finish appends build_updated, build_finished after the head: {events}")
    await refused(NotFoundError, store.report_agent(other, AgentLifecycle.READY), "a report with no agent")
    require(await store.head() == head + 2, "a refused report writes nothing")


@check
async def finishes_are_checked(ctx: Ctx) -> None:
    """A failed build keeps its reason; a second finish is a conflict; a finish needs a final status."""
    store = ctx.store
    ws = (await make_workspace(store, "c1")).facts.workspace_id
    done = await finish_latest(store, JobStatus.FAILED, error="terraform exploded")
    facts = await store.workspace_facts(ws)
    require(
        done.error == "terraform exploded" and facts.latest_build == done, "the failed build keeps its reason"
    )
    require(derive_state(facts) is WorkspaceState.FAILED, "the workspace failed")
    await refused(
        BuildConflictError, store.finish_build(done.build_id, JobStatus.SUCCEEDED), "a second finish"
    )
    await make_workspace(store, "c2")
    build = await store.claim_build("w")
    require(build is not None, "the second workspace's build is claimed")
    assert build is not None
    await refused(ValueError, store.finish_build(build.build_id, JobStatus.RUNNING), "a finish as running")


@check
async def unknown_status_strings_are_refused(ctx: Ctx) -> None:
    """Statuses and lifecycles are taken as enums or their values; unknown strings are refused
    with a ValueError and write nothing."""
    store = ctx.store
    ws = (await make_workspace(store)).facts.workspace_id
    build = await store.claim_build("w")
    require(build is not None, "the build is claimed")
    assert build is not None
    head = await store.head()
    await refused(ValueError, store.finish_build(build.build_id, "done"), "finish_build with status 'done'")
    require(await store.head() == head, "the refused finish writes nothing")
    done = await store.finish_build(build.build_id, "succeeded")
    require(done.status is JobStatus.SUCCEEDED, "'succeeded' is JobStatus.SUCCEEDED")
    await refused(ValueError, store.report_agent(ws, "up"), "report_agent with lifecycle 'up'")
    await store.report_agent(ws, "ready")
    agent = (await store.workspace_facts(ws)).agent
    require(agent is not None and agent.lifecycle is AgentLifecycle.READY, "'ready' is AgentLifecycle.READY")


@check
async def delete_marks_the_workspace_deleted(ctx: Ctx) -> None:
    """A delete build that succeeds deletes the workspace: no start fires on it after."""
    store = ctx.store
    ws = (await make_workspace(store)).facts.workspace_id
    await finish_latest(store)
    head = await store.head()
    require(
        (await store.request_build(ws, Transition.DELETE, expected_build_number=1)).fired, "the delete fires"
    )
    await finish_latest(store)
    facts = await store.workspace_facts(ws)
    require(
        facts.workspace.deleted and derive_state(facts) is WorkspaceState.NO_WORKSPACE,
        "the workspace is gone",
    )
    kinds = [e.kind for e in await store.read_events(head)]
    require(
        kinds[-2:] == [EventKind.BUILD_FINISHED, EventKind.WORKSPACE_DELETED], f"its last events: {kinds}"
    )
    require(
        not (await store.request_build(ws, Transition.START, expected_build_number=2)).fired, "no start after"
    )
