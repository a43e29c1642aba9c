"""The harness of the answer tests: a memory store, a Lifecycle over it, and the chat ``c1`` of
``alice``, with the test playing the provisioner (and other callers) through the store's calls.

Shared by ``tests/runtime/test_runtime_answers.py`` and ``tests/runtime/test_race_answers.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, EventKind, JobStatus, Transition, WorkspaceState

OWNER = "alice"
CHAT = "c1"


@attrs.define
class H:
    """A store, a Lifecycle over it, and the chat ``c1`` of ``alice``."""

    store: wl.Store
    lc: wl.Lifecycle

    async def claim(self) -> wl.Build:
        """The next pending build, claimed (waits for one to be queued)."""
        with anyio.fail_after(5):
            while True:
                cursor = await self.store.head()
                build = await self.store.claim_build("test-worker")
                if build is not None:
                    return build
                await self.store.wait_for_change(cursor)

    async def complete(
        self, status: JobStatus = JobStatus.SUCCEEDED, *, error: str | None = None, agent: bool = False
    ) -> wl.Build:
        build = await self.claim()
        return await self.store.finish_build(build.build_id, status, error, has_agent=agent)

    async def workspace_id(self, chat: str = CHAT) -> str:
        row = await self.store.get_chat(chat)
        assert row is not None and row.workspace_id is not None
        return row.workspace_id

    async def latest(self, chat: str = CHAT) -> wl.Build:
        facts = await self.store.workspace_facts(await self.workspace_id(chat))
        assert facts.latest_build is not None
        return facts.latest_build

    async def report(self, lifecycle: AgentLifecycle, chat: str = CHAT) -> None:
        await self.store.report_agent(await self.workspace_id(chat), lifecycle)

    async def queue(self, transition: Transition) -> wl.Build:
        """Another caller (another replica) queues ``transition`` after the latest build."""
        latest = await self.latest()
        outcome = await self.store.request_build(
            await self.workspace_id(), transition, expected_build_number=latest.number
        )
        assert outcome.fired and outcome.build is not None
        return outcome.build

    async def running(self, agent: AgentLifecycle | None = None) -> None:
        """Bring c1 to running (no agent) or to the given agent lifecycle."""
        r = await self.lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)
        assert not r.is_error
        await self.complete(agent=agent is not None)
        if agent is not None:
            await self.report(agent)

    async def stopped(self) -> None:
        await self.running()
        assert not (await self.lc.stop_workspace(CHAT, owner=OWNER, wait=False)).is_error
        await self.complete()
        assert await self.lc.state(CHAT) is WorkspaceState.STOPPED

    async def start_builds(self, chat: str = CHAT) -> list[wl.StoreEvent]:
        ws = await self.workspace_id(chat)
        return [
            e
            for e in await self.store.read_events(0)
            if e.workspace_id == ws and e.kind is EventKind.BUILD_QUEUED and e.transition is Transition.START
        ]


@asynccontextmanager
async def harness(**options: Any) -> AsyncIterator[H]:
    """``H`` over a fresh memory store; ``options`` go to the ``Lifecycle``."""
    with anyio.fail_after(10):
        async with wl.open_store("memory://") as store, wl.Lifecycle(store, **options) as lc:
            await lc.register_chat(CHAT, owner=OWNER)
            yield H(store, lc)


@attrs.define
class Call:
    """A request running in the background; ``await call.result()`` bounds the wait."""

    result_: wl.ToolResult | None = None
    done: anyio.Event = attrs.Factory(anyio.Event)

    async def result(self) -> wl.ToolResult:
        with anyio.fail_after(5):
            await self.done.wait()
        assert self.result_ is not None
        return self.result_


def spawn(tg: TaskGroup, fn: Callable[[], Awaitable[wl.ToolResult]]) -> Call:
    """Run ``fn`` in the background and return its ``Call``."""
    call = Call()

    async def run() -> None:
        call.result_ = await fn()
        call.done.set()

    tg.start_soon(run)
    return call
