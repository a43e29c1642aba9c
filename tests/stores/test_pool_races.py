"""Warm pools across replicas (issue 28 item 1): 8 Lifecycles over 8 store objects on one
database race 400 creates against a pool of 20, on SQLite and PostgreSQL.

Every pooled workspace goes to exactly one chat, the other creates fall back to a build and say
so, no workspace is bound twice or left running bound to no chat, and the pool is back to its
size afterwards (never more).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import pools
from workspace_lifecycle.values import EventKind, WorkspaceState

REPLICAS, CREATES, SIZE = 8, 400, 20


@pytest.fixture(params=["sqlite", "postgres"])
def race_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pool.db'}"
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _until(store: wl.Store, check: Callable[[], Any], *, seconds: float = 10.0) -> None:
    """Until ``await check()`` is true, looking again after each change of the store."""
    with anyio.fail_after(seconds):
        while True:
            head = await store.head()
            if await check():
                return
            await store.wait_for_change(head)


@contextlib.asynccontextmanager
async def _replicas(url: str, pool: wl.Pool) -> AsyncIterator[list[wl.Lifecycle]]:
    async with contextlib.AsyncExitStack() as stack:
        # PostgreSQL: two pooled connections a replica (and its listener), so that eight replicas
        # beside the other workers' tests stay far below the server's max_connections.
        options = {"pool_max_size": 2} if url.startswith("postgresql") else {}
        stores = [await stack.enter_async_context(wl.open_store(url, **options)) for _ in range(REPLICAS)]
        for store in stores[:4]:
            # No agent: a build is ready when it succeeds (one write fewer per build).
            await stack.enter_async_context(wl.SimulatedProvisioner(store, build_seconds=0.005, agent=None))
        yield [await stack.enter_async_context(wl.Lifecycle(s, pools=[pool])) for s in stores]


async def _ready(lc: wl.Lifecycle) -> dict[str, object]:
    (status,) = await lc.pool_status()
    return status


@pytest.mark.anyio
async def test_replicas_race_creates_against_a_pool(race_url: str) -> None:
    """8 replicas x 50 creates (400 chats) against a pool of 20: each pooled workspace bound to
    exactly one chat, the rest built and saying so, the pool back to 20 and no more."""
    pool = wl.Pool("default", size=SIZE, parameters={"image": "py"})
    async with _replicas(race_url, pool) as lcs:

        async def full() -> bool:
            status = await _ready(lcs[0])
            return status["ready"] == SIZE

        await _until(lcs[0].store, full)
        store = lcs[0].store
        before = {m.workspace_id for m in await store.pool_members("default")}
        assert len(before) == SIZE
        for i in range(CREATES):
            await lcs[i % REPLICAS].register_chat(f"chat-{i}", owner=f"user-{i % 7}")

        answers: dict[str, wl.ToolResult] = {}

        async def create(i: int) -> None:
            # wait=False: a claim answers at once anyway, a cold create once its build is queued
            # (the race is the claims; the 380 cold builds are the provisioners' to finish).
            answers[f"chat-{i}"] = await lcs[i % REPLICAS].create_workspace(
                f"chat-{i}", owner=f"user-{i % 7}", name="dev", pool="default", wait=False
            )

        with anyio.fail_after(30):  # ~2 s on SQLite, ~10 s on PostgreSQL on 2 loaded cores
            async with anyio.create_task_group() as tg:
                for i in range(CREATES):
                    tg.start_soon(create, i)

        assert not [a for a in answers.values() if a.is_error]
        pooled = {chat for chat, a in answers.items() if a.data["pooled"] is True}
        cold = {chat for chat, a in answers.items() if a.data["pooled"] is False}
        assert len(pooled) + len(cold) == CREATES
        assert len(pooled) >= SIZE  # every ready one at the start was claimed (and maybe refills)
        assert cold and all("no ready workspace" in answers[c].data["message"] for c in cold)

        # Each chat is bound to its own workspace; every claimed one was a pool member.
        rows = {row.chat.chat_id: row for row in await store.list_chats()}
        bound = {chat: rows[chat].chat.workspace_id for chat in answers}
        assert None not in bound.values()
        assert len(set(bound.values())) == CREATES, "a workspace was bound to two chats"
        claims = [e for e in await _events(store) if pools.claimed_from(e) == "default"]
        assert len(claims) == len(pooled)
        assert {e.chat_id for e in claims} == pooled
        assert len({e.workspace_id for e in claims}) == len(claims)
        assert before <= {e.workspace_id for e in claims}
        for chat in pooled:
            facts = rows[chat].facts
            assert facts is not None and facts.workspace.chat_id == chat
            assert facts.workspace.owner == answers[chat].data["workspace_name"].partition("/")[0]
            assert facts.latest_build is not None and facts.latest_build.parameters == {"image": "py"}

        async def refilled() -> bool:
            status = await _ready(lcs[3])
            return status["ready"] == SIZE and status["warming"] == 0

        await _until(lcs[3].store, refilled, seconds=60)
        members = await store.pool_members("default")
        assert len(members) == SIZE, "the pool was overfilled"
        assert not {m.workspace_id for m in members} & set(bound.values())

        # No workspace runs bound to no chat: each is a member, or its chat points at it.
        known = set(bound.values()) | {m.workspace_id for m in members}
        for workspace_id in {e.workspace_id for e in await _events(store)} - known:
            facts = await store.workspace_facts(workspace_id)  # a member since deleted, or a stray
            if pools.pool_of(facts.workspace.chat_id) is not None and facts.workspace.deleted:
                continue
            running = wl.derive_state(facts) in (WorkspaceState.RUNNING, WorkspaceState.AGENT_READY)
            assert not running, f"workspace {workspace_id} runs bound to no chat"


async def _events(store: wl.Store) -> list[wl.StoreEvent]:
    out: list[wl.StoreEvent] = []
    after = 0
    while batch := await store.read_events(after, 1000):
        out.extend(batch)
        after = batch[-1].seq
    return [e for e in out if e.kind in (EventKind.CHAT_BOUND, EventKind.BUILD_QUEUED)]
