"""Warm pools in one runtime (issue 28 item 1), on a virtual clock: the keeper fills the pool,
a create claims at once and the pool is replenished, an empty pool falls back to a build and
says so, members past their time to live are deleted and replaced, failed members are retired,
and ``watch`` shows the pool's workspaces and the claim."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.values import StateChange, WorkspaceState

pytestmark = pytest.mark.anyio

OWNER = "alice"


@asynccontextmanager
async def world(
    pool: wl.Pool, *, fail: object = None, policy: wl.Policy | None = None
) -> AsyncIterator[tuple[wl.MemoryStore, wl.Lifecycle, wl.VirtualClock]]:
    clock = wl.VirtualClock()
    store = wl.MemoryStore(clock=clock)
    async with (
        store,
        wl.SimulatedProvisioner(store, clock=clock, fail=fail),  # type: ignore[arg-type]
        wl.Lifecycle(store, clock=clock, pools=[pool], policy=policy) as lc,
    ):
        yield store, lc, clock


async def settled(lc: wl.Lifecycle, *, ready: int, warming: int = 0) -> dict[str, object]:
    """Until the pool has ``ready`` members ready and ``warming`` building, woken by the store."""
    store = lc.store
    with anyio.fail_after(5):
        while True:
            head = await store.head()
            (status,) = await lc.pool_status()
            if status["ready"] == ready and status["warming"] == warming:
                return status
            await store.wait_for_change(head)


class TestClaims:
    async def test_a_create_claims_a_ready_workspace_and_the_pool_refills(self) -> None:
        """The answer comes from the pool (``pooled: true``), the chat's workspace is the
        claimed one, ready, with the pool's parameters, and the keeper builds a replacement."""
        async with world(wl.Pool("default", size=2, parameters={"image": "py"})) as (store, lc, _):
            await settled(lc, ready=2)
            members = {m.workspace_id for m in await store.pool_members("default")}
            await lc.register_chat("c1", owner=OWNER, policy=wl.Policy(idle_stop_after=600))
            r = await lc.create_workspace("c1", owner=OWNER, name="dev", pool="default")
            assert r.data["pooled"] is True and r.data["created"] is True, r.data
            assert r.data["workspace_name"] == "alice/dev"
            chat = await store.get_chat("c1")
            assert chat is not None and chat.workspace_id in members
            facts = await store.workspace_facts(chat.workspace_id)
            assert facts.latest_build is not None and facts.latest_build.parameters == {"image": "py"}
            assert facts.workspace.deadline is not None and facts.workspace.deadline.reason is wl.Reason.IDLE
            assert await lc.state("c1") is WorkspaceState.AGENT_READY
            await settled(lc, ready=2)
            assert chat.workspace_id not in {m.workspace_id for m in await store.pool_members("default")}

    async def test_an_empty_pool_falls_back_to_a_build_and_says_so(self) -> None:
        async with world(wl.Pool("empty", size=0, parameters={"image": "py"})) as (store, lc, _):
            await lc.register_chat("c1", owner=OWNER)
            r = await lc.create_workspace("c1", owner=OWNER, name="dev", pool="empty", parameters={"x": "1"})
            assert r.data["pooled"] is False and r.data["created"] is True, r.data
            assert "warm pool 'empty' had no ready workspace" in r.data["message"]
            chat = await store.get_chat("c1")
            assert chat is not None and chat.workspace_id is not None
            latest = (await store.workspace_facts(chat.workspace_id)).latest_build
            assert latest is not None and latest.parameters == {"image": "py", "x": "1"}

    async def test_no_pool_no_pooled_key_and_an_unknown_pool_is_refused(self) -> None:
        async with world(wl.Pool("default", size=1)) as (_, lc, _):
            await lc.register_chat("c1", owner=OWNER)
            with pytest.raises(ValueError, match="no warm pool 'nope'"):
                await lc.create_workspace("c1", owner=OWNER, pool="nope")
            r = await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert "pooled" not in r.data
            again = await lc.create_workspace("c1", owner=OWNER, name="dev", pool="default")
            assert again.data["created"] is False and "pooled" not in again.data, again.data


class TestKeeper:
    async def test_members_past_their_ttl_are_deleted_and_replaced(self) -> None:
        """Nothing claims them: at the TTL each member is deleted and a new one built, at the
        virtual clock's time, not a tick before."""
        async with world(wl.Pool("default", size=2, ttl=3600)) as (store, lc, clock):
            await settled(lc, ready=2)
            first = {m.workspace_id for m in await store.pool_members("default")}
            clock.advance(3599)
            await anyio.sleep(0.05)
            assert {m.workspace_id for m in await store.pool_members("default")} == first
            clock.advance(2)
            with anyio.fail_after(5):
                while first & {m.workspace_id for m in await store.pool_members("default")}:
                    head = await store.head()
                    await store.wait_for_change(head)
            await settled(lc, ready=2)
            for workspace_id in first:
                assert (await store.workspace_facts(workspace_id)).workspace.deleted

    async def test_failed_members_are_retired_and_replaced(self) -> None:
        """A member whose build fails is deleted by the keeper; the pool still ends full."""
        failures = iter([True, False, False, False, False, False])
        async with world(wl.Pool("default", size=2), fail=lambda build: next(failures, False)) as (
            store,
            lc,
            _,
        ):
            await settled(lc, ready=2)
            assert lc._keeper is not None and lc._keeper.retired == 1
            assert len(await store.pool_members("default")) == 2


class TestWatch:
    async def test_watch_shows_the_pool_building_and_the_claim(self) -> None:
        """Watching every chat: a member's states under its holder, then the claim as the
        chat's workspace arriving ready."""
        async with world(wl.Pool("default", size=1)) as (_, lc, _):
            seen: list[StateChange] = []
            claimed = anyio.Event()

            async def watch() -> None:
                async for change in lc.watch():
                    seen.append(change)
                    if change.chat_id == "c1":
                        claimed.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await anyio.lowlevel.checkpoint()
                await settled(lc, ready=1)
                await lc.register_chat("c1", owner=OWNER)
                r = await lc.create_workspace("c1", owner=OWNER, name="dev", pool="default")
                assert r.data["pooled"] is True
                with anyio.fail_after(5):
                    await claimed.wait()
                tg.cancel_scope.cancel()
            holder = wl.Pool("default", size=1).holder
            assert any(c.chat_id == holder and c.to_state is WorkspaceState.AGENT_READY for c in seen)
            (arrived,) = [c for c in seen if c.chat_id == "c1"]
            assert arrived.from_state is WorkspaceState.NO_WORKSPACE
            assert arrived.to_state is WorkspaceState.AGENT_READY


class TestDefaultPool:
    async def test_a_default_pool_serves_every_create(self) -> None:
        """With ``default_pool``, a create that names none claims from it (the tools' path)."""
        clock = wl.VirtualClock()
        store = wl.MemoryStore(clock=clock)
        pool = wl.Pool("default", size=1)
        async with (
            store,
            wl.SimulatedProvisioner(store, clock=clock),
            wl.Lifecycle(store, clock=clock, pools=[pool], default_pool="default") as lc,
        ):
            await settled(lc, ready=1)
            await lc.register_chat("c1", owner=OWNER)
            r = await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert r.data["pooled"] is True, r.data
        with pytest.raises(ValueError, match="default_pool 'gpu'"):
            wl.Lifecycle(store, pools=[pool], default_pool="gpu")


class TestKeeperAlone:
    async def test_without_a_deadline_scheduler_the_keeper_expires_members_itself(self) -> None:
        """``fire_deadlines=False``: the keeper wakes at the members' TTL (it never polls) and
        deletes and replaces them itself."""
        clock = wl.VirtualClock()
        store = wl.MemoryStore(clock=clock)
        async with (
            store,
            wl.SimulatedProvisioner(store, clock=clock),
            wl.Lifecycle(
                store, clock=clock, pools=[wl.Pool("p", size=1, ttl=60)], fire_deadlines=False
            ) as lc,
        ):
            await settled(lc, ready=1)
            (first,) = await store.pool_members("p")
            clock.advance(61)
            with anyio.fail_after(5):
                while first.workspace_id in {m.workspace_id for m in await store.pool_members("p")}:
                    await store.wait_for_change(await store.head())
            await settled(lc, ready=1)
            assert lc.deadlines_fired == 0 and lc._keeper is not None and lc._keeper.retired == 1
