"""The store checks of warm pools: a fill never overfills, concurrent claims take each member
once, a claimed member is the chat's (no longer the pool's), and a claim is a compare-and-set
on the chat."""

from __future__ import annotations

import anyio

from ..errors import QuotaExceededError
from ..limits import Limits
from ..machine import derive_state
from ..pools import Pool, holder_id
from ..values import EventKind, WorkspaceState
from ._kit import Ctx, check, require

_POOL = Pool("p", size=3, parameters={"image": "py"}, ttl=600)


async def _ready_pool(ctx: Ctx) -> list[str]:
    """A pool of three members, each built with an agent that is ready."""
    store = ctx.store
    ids = []
    for _ in range(_POOL.size):
        facts = await store.fill_pool(_POOL)
        require(facts is not None, "fill_pool queues a member while the pool is short")
        assert facts is not None
        ids.append(facts.workspace_id)
    for _ in ids:
        build = await store.claim_build("w")
        require(build is not None, "a pooled workspace's start build is claimed like any other")
        assert build is not None
        require(build.parameters == {"image": "py"}, "it carries the pool's parameters")
        await store.finish_build(build.build_id, "succeeded", has_agent=True)
        await store.report_agent(build.workspace_id, "ready")
    return ids


@check
async def a_fill_never_overfills(ctx: Ctx) -> None:
    """Ten concurrent fills of a pool of three queue exactly three members, bound to its holder."""
    store = ctx.store
    filled = []

    async def one() -> None:
        filled.append(await store.fill_pool(_POOL))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(one)
    made = [f for f in filled if f is not None]
    require(len(made) == 3, f"{len(made)} of 10 fills queued a member (the pool's size is 3)")
    members = await store.pool_members("p")
    require({m.workspace_id for m in members} == {f.workspace_id for f in made}, "they are the members")
    require(all(m.workspace.chat_id == holder_id("p") for m in members), "bound to the pool's holder")
    require(all(m.workspace.deadline is not None for m in members), "each born with its time to live")
    require(await store.get_chat("p") is None, "the holder is no chat a caller can name")


@check
async def concurrent_claims_take_each_member_once(ctx: Ctx) -> None:
    """Eight chats claim from a pool of three ready members at once: three claim one each
    (distinct), the other five find the pool empty; the claimed are the chats' and agent_ready."""
    store = ctx.store
    ids = await _ready_pool(ctx)
    for i in range(8):
        await store.register_chat(f"c{i}", f"owner{i}")
    claims = {}

    async def one(i: int) -> None:
        claims[i] = await store.claim_pooled(f"c{i}", "p", "dev", expected_workspace_id=None)

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(one, i)
    won = {i: c.facts for i, c in claims.items() if c.claimed and c.facts is not None}
    require(len(won) == 3, f"{len(won)} of 8 claims took a member (3 were ready)")
    require(sorted(f.workspace_id for f in won.values()) == sorted(ids), "each member went to one chat")
    require(all(not c.claimed and c.facts is None for i, c in claims.items() if i not in won), "empty")
    for i, facts in won.items():
        chat = await store.get_chat(f"c{i}")
        require(chat is not None and chat.workspace_id == facts.workspace_id, "the chat is bound to it")
        stored = await store.workspace_facts(facts.workspace_id)
        require(stored.workspace.chat_id == f"c{i}" and stored.workspace.owner == f"owner{i}", "it is theirs")
        require(stored.workspace.name == "dev", "with the name the create asked for")
        require(derive_state(stored) is WorkspaceState.AGENT_READY, "and ready at once")
    require(not await store.pool_members("p"), "no member left in the pool")
    bound = [e for e in await store.read_events(0) if e.kind is EventKind.CHAT_BOUND and e.details]
    require(len(bound) == 3, "each claim is one chat_bound event naming the pool")


@check
async def a_claim_is_a_compare_and_set_on_the_chat(ctx: Ctx) -> None:
    """A chat bound since the caller read it claims nothing and is answered with its workspace."""
    store = ctx.store
    await _ready_pool(ctx)
    await store.register_chat("c1", "alice")
    own = await store.create_workspace("c1", "dev", expected_workspace_id=None)
    lost = await store.claim_pooled("c1", "p", "dev", expected_workspace_id=None)
    require(not lost.claimed, "the claim lost: the chat is bound already")
    require(lost.facts is not None and lost.facts.workspace_id == own.facts.workspace_id, "it sees its own")
    require(len(await store.pool_members("p")) == 3, "the pool kept its members")


@check
async def a_claim_counts_toward_the_owners_limits(ctx: Ctx) -> None:
    """A claim gives the owner a running workspace more: over its limits (stored, or the
    caller's) it raises QuotaExceededError and binds nothing; within them it claims."""
    store = ctx.store
    members = await _ready_pool(ctx)
    await store.register_chat("c1", "alice")
    await store.set_limits("alice", Limits(running=0))
    head = await store.head()
    try:
        await store.claim_pooled("c1", "p", "dev", expected_workspace_id=None)
    except QuotaExceededError as exc:
        require((exc.limit, exc.used, exc.allowed) == ("running", 0, 0), f"the stored limit: {exc!r}")
    else:
        require(False, "a claim over the owner's stored running limit of 0 must be refused")
    require(await store.head() == head, "a refused claim appends no event")
    chat = await store.get_chat("c1")
    require(chat is not None and chat.workspace_id is None, "a refused claim binds nothing")
    await store.set_limits("alice", Limits())
    try:
        await store.claim_pooled("c1", "p", "dev", expected_workspace_id=None, limits=Limits(workspaces=0))
    except QuotaExceededError as exc:
        require(exc.limit == "workspaces", f"the caller's limit of workspaces: {exc!r}")
    else:
        require(False, "a claim over the caller's limit of 0 workspaces must be refused")
    claim = await store.claim_pooled("c1", "p", "dev", expected_workspace_id=None, limits=Limits(running=1))
    require(claim.claimed and claim.facts is not None, "within the limits the claim takes a member")
    assert claim.facts is not None
    require(claim.facts.workspace_id in members, "a member of the pool")
