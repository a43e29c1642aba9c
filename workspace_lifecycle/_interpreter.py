"""The interpreter of a request's steps: it executes what :class:`~workspace_lifecycle.steps.Flow`
decides and decides nothing.

Each step the flow returns is one thing to do: fire a build (the store's compare-and-set,
retried by :class:`~workspace_lifecycle._retry.RetryingWriter`), read a build, catch up with
the log, wait for a build or the agent (asleep on the
:class:`~workspace_lifecycle._registry.Registry`, woken by the
:class:`~workspace_lifecycle._pump.EventPump`'s events, bounded by a cancel scope), create a
workspace, follow the chat to another one, store a request deferred behind another build
on the workspace (the build's finish fires it, in the store: nothing here carries it), or
answer. The runtime returns to the pure core once per step, never to choose
an answer.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack

import anyio

from . import checks
from ._flight import SharedReads
from ._pump import EventPump
from ._registry import Entry, Registry
from ._retry import RetryingWriter, claim_pooled
from .adapters.base import Store
from .errors import QuotaExceededError
from .pools import Pool
from .steps import (
    Answer,
    CatchUp,
    Create,
    Defer,
    Fire,
    Flow,
    ReadBuild,
    Restart,
    Settled,
    Step,
    Track,
    WaitAgent,
    WaitBuild,
    first_step,
)
from .telemetry import RequestSpan
from .values import Chat, ToolResult

__all__ = ["Interpreter", "workspace_name"]

log = logging.getLogger("workspace_lifecycle.runtime")


def workspace_name(name: str | None) -> str:
    """The name a new workspace gets: the name given (the runtime and the tools refused an
    invalid one before, :func:`~workspace_lifecycle.checks.workspace_name`), or for none
    (``None`` or ``""``) a generated ``workspace-<4 hex>``. Never a rename: Coder's chat tool
    renames an invalid name, which leaves its giver with a name they did not choose."""
    if name:
        return checks.workspace_name("name", name)
    return f"workspace-{secrets.token_hex(2)}"


class Interpreter:
    """Executes requests' steps for a :class:`~workspace_lifecycle.runtime.Lifecycle`, on its
    store, registry, pump and writer; ``raise_if_failed`` raises if the runtime can no longer
    serve."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        pump: EventPump,
        writer: RetryingWriter,
        *,
        raise_if_failed: Callable[[], None],
        build_timeout: float,
        agent_timeout: float,
        pools: Mapping[str, Pool] | None = None,
    ) -> None:
        self.store = store
        self.pools = dict(pools or {})
        self._registry = registry
        self._pump = pump
        self._writer = writer
        self._raise_if_failed = raise_if_failed
        self.build_timeout = build_timeout
        self.agent_timeout = agent_timeout
        self._reads = SharedReads(store)  # concurrent requests share their first reads

    async def serve(
        self, flow: Flow, chat_id: str, owner: str, name: str | None, span: RequestSpan
    ) -> tuple[ToolResult, Chat | None]:
        """Run ``flow`` from the chat's row to its answer; return it with the row last read."""
        self._raise_if_failed()
        chat = await self._reads.get_chat(chat_id)
        step: Step = first_step(flow.request, chat, owner, flow.parameters, flow.pool)
        while True:
            if isinstance(step, Answer):
                return step.result, chat
            if isinstance(step, Restart):
                flow.restarted()
                chat = await self._reads.get_chat(chat_id)
                step = first_step(flow.request, chat, owner, flow.parameters, flow.pool)
            elif isinstance(step, Create):
                step = await self._create(flow, chat_id, step, name, span)
            elif isinstance(step, Track):
                async with self._registry.track(step.workspace_id) as entry:
                    await self._pump.caught_up(await self._reads.head())
                    step = await self.drive(flow, entry, chat_id, span)
            else:  # pragma: no cover - the flow asks for these only while a workspace is held
                raise AssertionError(f"step {step!r} outside a tracked workspace")

    async def drive(
        self, flow: Flow, entry: Entry, chat_id: str, span: RequestSpan, step: Step | None = None
    ) -> Step:
        """Execute ``flow``'s steps on the held workspace; return the first step that leaves it."""
        if entry.workspace is None:  # followed from its first event, never read: read it once
            entry.workspace = (await self.store.workspace_facts(entry.workspace_id)).workspace
        flow.tracking(entry.workspace)
        while True:
            if step is None:
                tracker = entry.current()
                step = flow.next(tracker)
                span.decision(type(step).__name__.lower(), tracker.state.value)
            if isinstance(step, Answer | Create | Track | Restart):
                return step
            if isinstance(step, Fire):
                try:
                    outcome = await self._writer.request_build(
                        entry.workspace_id, step.transition, step.expected_build_number, step.parameters
                    )
                except QuotaExceededError as exc:  # decided in the store's transaction
                    return flow.refused(limit=exc.limit, used=exc.used, allowed=exc.allowed)
                if outcome.fired and outcome.build is not None:
                    span.fired(outcome.build.build_id)
                step = flow.fired(step, fired=outcome.fired, build=outcome.build, facts=outcome.facts)
            elif isinstance(step, ReadBuild):
                flow.read(await self.store.get_build(step.build_id))
                step = None
            elif isinstance(step, CatchUp):
                await self._pump.caught_up(step.seq)
                step = None
            elif isinstance(step, WaitBuild | WaitAgent):
                timeout = self.build_timeout if isinstance(step, WaitBuild) else self.agent_timeout
                flow.waited(timed_out=not await self.wait(entry, step, timeout))
                step = None
            elif isinstance(step, Defer):
                deferral = await self._writer.defer_request(
                    entry.workspace_id, step.transition, step.number, flow.owner
                )
                step = flow.deferred(step, held=deferral.held, facts=deferral.facts)
            else:  # pragma: no cover
                raise AssertionError(f"unknown step {step!r}")

    async def wait(self, entry: Entry, condition: WaitBuild | WaitAgent | Settled, seconds: float) -> bool:
        """Sleep until ``condition`` holds; False after ``seconds``."""
        with anyio.move_on_after(seconds):
            await self._registry.wait(entry, condition)
            return True
        return False

    async def _create(
        self, flow: Flow, chat_id: str, step: Create, name: str | None, span: RequestSpan
    ) -> Step:
        """Execute a :class:`Create`; continue in the workspace the chat is bound to now."""
        registry = self._registry
        pool = self.pools.get(step.pool) if step.pool is not None else None
        if pool is not None and flow.pooled is None:
            claimed = await self._claim(flow, chat_id, step, pool, name, span)
            if claimed is not None:
                return claimed
        parameters = step.parameters
        if pool is not None:  # built the ordinary way, as the pool builds its own
            parameters = {**pool.parameters, **step.parameters}
        async with AsyncExitStack() as held:
            # Follow the chat while the create runs; once its workspace is held, stop following.
            async with registry.following(chat_id):
                try:
                    given = workspace_name(name)
                    outcome = await self._writer.create_workspace(
                        chat_id, given, step.expected_workspace_id, parameters
                    )
                except QuotaExceededError as exc:  # decided in the store's transaction
                    return flow.refused(limit=exc.limit, used=exc.used, allowed=exc.allowed)
                await self._pump.caught_up(outcome.facts.seq)
                ws = outcome.facts.workspace
                if outcome.fired and outcome.build is not None:
                    span.fired(outcome.build.build_id)
                    if not flow.wait:
                        flow.tracking(ws)
                        answer = flow.created(
                            fired=True, build=outcome.build, facts=outcome.facts, name=given
                        )
                        assert answer is not None
                        return answer
                entry = await held.enter_async_context(registry.track(ws.workspace_id))
            entry.workspace = entry.workspace or ws
            flow.tracking(entry.workspace)
            first = flow.created(fired=outcome.fired, build=outcome.build, facts=outcome.facts, name=given)
            return await self.drive(flow, entry, chat_id, span, first)

    async def _claim(
        self, flow: Flow, chat_id: str, step: Create, pool: Pool, name: str | None, span: RequestSpan
    ) -> Step | None:
        """Claim a ready workspace of ``pool`` for the chat and continue in it; ``None`` when the
        pool had none (the caller builds one)."""
        registry = self._registry
        async with registry.following(chat_id):
            try:
                claim = await claim_pooled(
                    self._writer, chat_id, pool.name, workspace_name(name), step.expected_workspace_id
                )
            except QuotaExceededError as exc:  # decided in the claim's transaction
                return flow.refused(limit=exc.limit, used=exc.used, allowed=exc.allowed)
            if claim.facts is None:
                flow.pool_empty()
                return None
            await self._pump.caught_up(claim.facts.seq)
            ws = claim.facts.workspace
            async with registry.track(ws.workspace_id) as entry:
                entry.workspace = ws if claim.claimed else entry.workspace or ws
                flow.tracking(entry.workspace)
                first: Step | None = None
                if claim.claimed:
                    latest = claim.facts.latest_build
                    assert latest is not None
                    span.claimed(ws.workspace_id)
                    first = flow.claimed(latest)
                return await self.drive(flow, entry, chat_id, span, first)
