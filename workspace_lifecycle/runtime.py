"""The runtime: :class:`Lifecycle`, the public API over the interpreter of the requests' steps.

A request is decided step by step by :class:`~workspace_lifecycle.steps.Flow` (pure); the
:class:`~workspace_lifecycle._interpreter.Interpreter` only executes the steps: it reads the
chat, holds the workspace's tracker in the :class:`~workspace_lifecycle._registry.Registry`,
runs the store's compare-and-set writes (retrying transient failures after re-reading the
rows), and sleeps until a step's condition holds, woken by the
:class:`~workspace_lifecycle._pump.EventPump` that applies the store's events. This module holds
what a caller sees: the checks of its arguments, activity (touches), the between-turns
scheduler and the runtime's own life. Nothing sleeps in a loop; timeouts and cancellation are
anyio cancel scopes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio

from . import answers, checks, skew, steps
from . import pools as pools_core
from ._activity import Activity
from ._deadlines import DeadlineScheduler
from ._holds import HoldKeeper, Turn
from ._interpreter import Interpreter, workspace_name
from ._logread import read_logs
from ._pools import PoolKeeper
from ._pump import EventPump
from ._registry import Registry
from ._retry import RetryingWriter
from ._service import BackgroundService
from ._skew import SkewWatch
from ._warnings import WarningFeed
from .adapters.base import DEFAULT_HOLD_SECONDS, Store
from .clock import Clock, resolve_clock
from .errors import NotFoundError
from .limits import Limits, Usage
from .machine import Request, derive_state
from .pools import Pool
from .skew import ClockSkew
from .steps import (
    MAX_STATUS_WAIT_MS,
    Flow,
    Settled,
)
from .telemetry import RequestSpan
from .values import (
    Chat,
    Deadline,
    Policy,
    StateChange,
    StoreEvent,
    ToolResult,
    WorkspaceState,
    check_parameters,
)

__all__ = ["Lifecycle", "workspace_name"]

log = logging.getLogger("workspace_lifecycle.runtime")


class Lifecycle(BackgroundService):
    """Answers the workspace tools for the chats in ``store``.

    Use it as an async context manager; it runs its event pump in an anyio task group::

        async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lc:
            await lc.register_chat("chat-1", owner="alice")
            result = await lc.create_workspace("chat-1", owner="alice", name="dev")

    ``build_timeout`` bounds each wait for a build, ``agent_timeout`` the wait for the agent.
    ``write_retries`` is how often a request retries a store write that raised a
    :class:`~workspace_lifecycle.errors.TransientStoreError` (re-reading the rows first: the
    write may have committed). ``resync_interval``, off by default, makes a *waiting* request
    re-derive its workspace from the rows after that many seconds without news: a safety net
    for a store that may lose events (the fault-injecting test store does). The stores shipped
    here never lose a committed event, and their wake-ups have their own fallbacks, so by
    default a waiting request costs nothing until its event arrives, however long the build
    takes. When the ``async with`` ends, requests still waiting on it raise
    :class:`~workspace_lifecycle.errors.StoreClosedError` at once.

    Warm pools: ``pools`` (:class:`~workspace_lifecycle.pools.Pool` values) are kept full by
    this runtime (unless ``keep_pools=False``) and claimed by ``create_workspace(...,
    pool=NAME)``, or by every create when ``default_pool`` names one (docs/pools.md).

    Between turns: ``policy`` (:class:`~workspace_lifecycle.values.Policy`) is what a chat
    registered here gets unless :meth:`register_chat` gives it its own: stop the workspace
    after so long idle, delete it after so long stopped. The deadlines are rows in the store;
    with ``fire_deadlines`` (the default) this runtime sleeps until the earliest one and fires
    it (exactly one replica wins each). It waits on the store's clock (a
    :class:`~workspace_lifecycle.clock.VirtualClock` given to ``open_store(url, clock=...)``
    steps a test through hours); ``clock``, if given, must be that one
    (:func:`~workspace_lifecycle.clock.resolve_clock`). A :meth:`turn` holds its workspace
    against idle stops under a hold of ``hold_seconds``, renewed every third of it.
    ``skew_margin`` (0 by default) and the skew this runtime measured itself ahead of the
    store delay each firing past its deadline (:func:`~workspace_lifecycle.skew.act_margin`).

    Limits: ``limits`` (:class:`~workspace_lifecycle.limits.Limits`) are every owner's unless
    :meth:`set_limits` stored the owner's own: how many workspaces it may have running and in
    all. They are checked by the store inside the write that would take the slot, so replicas
    never pass the last one together; a create or start over a limit is answered as Coder's
    quota failure (``"error_code": "INSUFFICIENT_QUOTA"``) and fires nothing.
    """

    def __init__(
        self,
        store: Store,
        *,
        build_timeout: float = 600.0,
        agent_timeout: float = 600.0,
        write_retries: int = 3,
        resync_interval: float | None = None,
        clock: Clock | Callable[[], float] | None = None,
        policy: Policy | None = None,
        fire_deadlines: bool = True,
        limits: Limits | None = None,
        pools: Sequence[Pool] = (),
        keep_pools: bool = True,
        default_pool: str | None = None,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
        skew_margin: float = 0.0,
    ) -> None:
        build_timeout = checks.seconds("build_timeout", build_timeout)
        self.skew_margin = checks.seconds("skew_margin", skew_margin, zero=True)
        hold_seconds = checks.seconds("hold_seconds", hold_seconds)
        agent_timeout = checks.seconds("agent_timeout", agent_timeout)
        if resync_interval is not None:
            resync_interval = checks.seconds("resync_interval", resync_interval)
        write_retries = checks.count("write_retries", write_retries)
        if policy is not None and not isinstance(policy, Policy):
            raise ValueError(f"policy must be a workspace_lifecycle.Policy, not {policy!r}")
        if limits is not None and not isinstance(limits, Limits):
            raise ValueError(f"limits must be a workspace_lifecycle.Limits, not {limits!r}")
        self.limits = limits
        pool_list = list(pools)
        self.store = store
        self.clock = resolve_clock(clock, store, who="Lifecycle")
        self.pools = _pools_by_name(pool_list, default_pool)
        self.default_pool = default_pool
        self._keeper = PoolKeeper(store, pool_list, self.clock) if pool_list and keep_pools else None
        self.policy = policy or Policy()
        self.fire_deadlines = bool(fire_deadlines)
        self.build_timeout = float(build_timeout)
        self.agent_timeout = float(agent_timeout)
        self.write_retries = write_retries
        self.resync_interval = resync_interval
        self._registry = Registry(
            store,
            clock=self.clock,
            spawn=self._spawn,
            caught_up=self._caught_up,
            raise_if_failed=self._raise_if_failed,
            resync_interval=resync_interval,
        )
        self._deadlines = DeadlineScheduler(
            store,
            self.clock,
            fires=self.fire_deadlines,
            margin=lambda: skew.act_margin(self.skew_margin, self._skew.latest),
        )
        self._warnings = WarningFeed(store)
        self._pump = EventPump(
            store,
            _Sinks(self._registry, self._deadlines if fire_deadlines else None, self._warnings, self._keeper),
            kick_after=resync_interval,
        )
        self._activity = Activity(store, self._deadlines, self.clock)
        self._skew = SkewWatch(store, self.clock)
        self._holds = HoldKeeper(store, self.clock, hold_seconds=hold_seconds)
        self._writer = RetryingWriter(store, retries=write_retries, limits=limits)
        self._steps = Interpreter(
            store,
            self._registry,
            self._pump,
            self._writer,
            raise_if_failed=self._raise_if_failed,
            build_timeout=self.build_timeout,
            agent_timeout=self.agent_timeout,
            pools=self.pools,
        )

    # --- lifecycle of the runtime ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._pump.start()
        if self.fire_deadlines:
            await self._deadlines.load()  # after the pump's start: it replays what follows
        return await super().__aenter__()  # runs the pump and the deadline scheduler

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._registry.close_watchers()
        self._pump.close()  # requests still waiting (from outer task groups) raise now
        return await super().__aexit__(exc_type, exc, tb)

    async def run(self) -> None:
        """The event pump (applies the store's events to the tracked workspaces), the deadline
        scheduler and the heartbeat of the turns' holds, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._skew.run)
            if self.fire_deadlines:
                tg.start_soon(self._deadlines.run)
            if self._keeper is not None:
                tg.start_soon(self._keeper.run)
            tg.start_soon(self._holds.run)
            await self._pump.run()
            tg.cancel_scope.cancel()

    @property
    def clock_skew(self) -> ClockSkew | None:
        """The last measurement of this runtime's clock against the store's (see
        :mod:`workspace_lifecycle.skew`): taken at start and every 5 minutes; ``None`` before
        the first, or for a store with no clock of its own (SQLite, memory)."""
        return self._skew.latest

    def _spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        assert self._tg is not None
        self._tg.start_soon(fn, *args)

    async def _caught_up(self, seq: int) -> None:
        await self._pump.caught_up(seq)

    def _raise_if_failed(self) -> None:
        self._pump.raise_if_failed()
        if self._tg is None:
            raise RuntimeError("use the Lifecycle as an async context manager first")

    async def drain(self) -> None:
        """Returns at once: nothing of a request outlives its call in this process.

        A request answered with ``wait=False`` that had to wait for another build first (a
        start during a stop build) is stored on its workspace, and the store's write that
        finishes that build fires it, whether this process is alive then or not. (Before 0.3
        it finished in this runtime's background, and a short-lived process had to wait here.)
        """
        self._raise_if_failed()

    @property
    def tracked(self) -> int:
        """How many workspaces have a machine now (somebody waits on or watches them)."""
        return len(self._registry.entries)

    @property
    def events_applied(self) -> int:
        """Events applied to tracked workspaces since the runtime started."""
        return self._registry.events_applied

    @property
    def write_retried(self) -> int:
        """Store writes retried after a :class:`~workspace_lifecycle.errors.TransientStoreError`."""
        return self._writer.retried

    @property
    def deadlines_armed(self) -> int:
        """How many workspaces have an armed deadline (as far as this runtime knows)."""
        return self._deadlines.armed

    @property
    def deadlines_fired(self) -> int:
        """Builds this runtime fired because a deadline passed (other replicas' are not counted)."""
        return self._deadlines.fired

    @property
    def deadlines_warned(self) -> int:
        """``deadline_approaching`` events this runtime wrote (other replicas' are not counted)."""
        return self._deadlines.warned

    def next_deadline(self) -> float | None:
        """When the earliest armed deadline comes due (wall-clock seconds), or ``None``."""
        return self._deadlines.next_due()

    @property
    def resyncs(self) -> int:
        """Re-reads forced by silence: a waited-on workspace re-derived after
        ``resync_interval``, or the pump kicked after a lost wake-up."""
        return self._registry.resyncs + self._pump.kicks

    # --- reading -----------------------------------------------------------------------------

    async def register_chat(self, chat_id: str, *, owner: str, policy: Policy | None = None) -> Chat:
        """Record that ``chat_id`` belongs to ``owner`` (idempotent); return the chat as stored.

        A new chat gets ``policy``, or this runtime's default policy; ``policy`` given for an
        existing chat replaces its own (from the next deadline it arms: a touch, a build's end).
        Another owner's chat raises :class:`~workspace_lifecycle.errors.OwnershipError`.
        """
        _check_id("chat_id", chat_id)
        _check_id("owner", owner)
        if policy is not None and not isinstance(policy, Policy):
            raise ValueError(f"policy must be a workspace_lifecycle.Policy, not {policy!r}")
        return await self.store.register_chat(chat_id, owner, policy=policy, default_policy=self.policy)

    async def set_limits(self, owner: str, limits: Limits) -> None:
        """Store ``owner``'s own limits (replacing any stored before), over this runtime's default
        field by field (an unset field, ``None``, keeps the default). They are in force from the
        next create or start, on every replica; an owner already over them keeps what it has
        (nothing is stopped) and is refused more."""
        _check_id("owner", owner)
        if not isinstance(limits, Limits):
            raise ValueError(f"limits must be a workspace_lifecycle.Limits, not {limits!r}")
        await self.store.set_limits(owner, limits)

    async def usage(self, owner: str) -> Usage:
        """``owner``'s usage (running workspaces, workspaces) with its stored limits, in one read;
        ``usage.as_dict(lc.limits)`` adds the limits in force."""
        _check_id("owner", owner)
        return await self.store.usage(owner)

    async def touch(self, chat_id: str, *, owner: str) -> Deadline | None:
        """Activity in the chat: push its workspace's idle deadline to now + ``idle_stop_after``
        (as E2B's ``setTimeout``). Returns the deadline armed after the call.

        Cheap enough for every chat message: one read, and one small write only when the
        deadline would move by more than :data:`~workspace_lifecycle.deadlines.TOUCH_SLACK`
        (concurrent touches share it). A workspace that is not running has no idle deadline to
        push. An unknown chat, or another owner's, raises
        :class:`~workspace_lifecycle.errors.NotFoundError` (the same one).
        """
        _check_id("chat_id", chat_id)
        _check_id("owner", owner)
        chat = await self.store.get_chat(chat_id)
        if chat is None or chat.owner != owner:
            raise NotFoundError(f"no chat {chat_id!r} for this owner")
        return await self._activity.touch(chat)

    @asynccontextmanager
    async def turn(self, chat_id: str, *, owner: str) -> AsyncIterator[Turn]:
        """Hold the chat's workspace for a turn: while any turn holds it (in this process or
        another replica) no idle stop fires; when the last one ends, the idle countdown starts
        (the idle stop comes ``idle_stop_after`` later unless activity pushes it)::

            async with lc.turn("chat-1", owner="alice"):
                await run_the_agent()   # a ten-minute quiet command stops nothing

        The hold is a row in the store, renewed every third of ``hold_seconds`` while the block
        runs and released when it ends; a process that dies stops renewing it, and it lapses at
        its expiry (the countdown then starts from there). A turn begun before the chat has a
        workspace takes its hold at its next renewal after the chat got one. Yields the
        :class:`~workspace_lifecycle._holds.Turn`. An unknown chat, or another owner's, raises
        :class:`~workspace_lifecycle.errors.NotFoundError` (the same one).
        """
        _check_id("chat_id", chat_id)
        _check_id("owner", owner)
        self._raise_if_failed()
        chat = await self.store.get_chat(chat_id)
        if chat is None or chat.owner != owner:
            raise NotFoundError(f"no chat {chat_id!r} for this owner")
        async with self._holds.hold(chat) as held:
            yield held

    @property
    def turns(self) -> int:
        """How many turns this runtime holds now."""
        return self._holds.held

    async def ensure_running(
        self, chat_id: str, *, owner: str, wait: bool = True, parameters: Mapping[str, str] | None = None
    ) -> ToolResult:
        """What a chat runtime calls before the model's turn: make the workspace run.

        No workspace: the same answer as ``start_workspace``. Stopped or failed: exactly one
        start build however many callers race, and (with ``wait``) its answer. Building: waits.
        Running: answers at once. It counts as activity (:meth:`touch`).
        """
        return await self._run(Request.START, chat_id, owner, wait, parameters=parameters)

    async def state(self, chat_id: str, *, owner: str | None = None) -> WorkspaceState:
        """The chat's workspace state, derived from the stored rows.

        With ``owner``, another owner's chat reads as an unknown one (``no_workspace``).
        """
        _check_id("chat_id", chat_id)
        if owner is not None:
            _check_id("owner", owner)
        chat = await self.store.get_chat(chat_id)
        if chat is None or chat.workspace_id is None or (owner is not None and chat.owner != owner):
            return WorkspaceState.NO_WORKSPACE
        return derive_state(await self.store.workspace_facts(chat.workspace_id))

    def watch(
        self, chat_id: str | None = None, *, owner: str | None = None
    ) -> AsyncGenerator[StateChange, None]:
        """Every state change of ``chat_id``'s workspace (or of every chat, if ``None``).

        With ``owner``, only changes of that owner's chats are yielded: another owner's chat
        is watched exactly as an unknown one (nothing, ever). Watching every chat keeps one
        machine per workspace that changes while you watch.
        """
        if chat_id is not None:
            _check_id("chat_id", chat_id)
        if owner is not None:
            _check_id("owner", owner)
        return self._registry.watch(chat_id, owner=owner)

    def warnings(
        self, chat_id: str | None = None, *, owner: str | None = None
    ) -> AsyncGenerator[StoreEvent, None]:
        """Every ``deadline_approaching`` event of ``chat_id``'s workspace (or of every chat, if
        ``None``) from now on, whichever replica wrote it (the chat's ``Policy.warn_before``).

        With ``owner``, another owner's chat is followed exactly as an unknown one (nothing).
        :func:`~workspace_lifecycle.deadlines.in_words` says the event's deadline in words.
        """
        if chat_id is not None:
            _check_id("chat_id", chat_id)
        if owner is not None:
            _check_id("owner", owner)
        return self._warnings.follow(chat_id, owner=owner)

    # --- the tools ---------------------------------------------------------------------------

    async def create_workspace(
        self,
        chat_id: str,
        *,
        owner: str,
        name: str | None = None,
        wait: bool = True,
        parameters: Mapping[str, str] | None = None,
        pool: str | None = None,
    ) -> ToolResult:
        """Create the chat's workspace (Coder's ``create_workspace``); idempotent while one lives.

        ``name`` is kept as given, or refused with ``ValueError`` saying Coder's rule and a
        valid name to try (:func:`~workspace_lifecycle.checks.workspace_name`); ``None`` or
        ``""``: a generated one. ``parameters`` (template parameters, string to string) go with
        the first build to the provisioner; an answer about a build this call did not fire says
        ``parameters_applied: false``.

        ``pool`` names a warm pool of this runtime (``Lifecycle(pools=[...])``): the chat
        claims one of its ready workspaces by a compare-and-set and the answer comes at once,
        with ``pooled: true``. When the pool has none ready, the workspace is built as without
        a pool (with the pool's parameters, then ``parameters``) and the answer says
        ``pooled: false`` with a ``message``. Without ``pool``, the ``Lifecycle``'s
        ``default_pool`` (if any): so the tools, the MCP server and the integrations claim too.
        """
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a string or None, not {type(name).__name__}")
        _check_id("chat_id", chat_id)
        _check_id("owner", owner)
        if name:
            checks.workspace_name("name", name)
        if pool is None:
            pool = self.default_pool
        if pool is not None and pool not in self.pools:
            known = ", ".join(sorted(self.pools)) or "none"
            raise ValueError(f"no warm pool {pool!r} in this Lifecycle (its pools: {known})")
        return await self._run(
            Request.CREATE, chat_id, owner, wait, name=name, parameters=parameters, pool=pool
        )

    async def pool_status(self) -> list[dict[str, object]]:
        """Each warm pool at a glance: ``pool``, ``size``, and how many of its workspaces are
        ``ready`` to claim, ``warming`` (being built) and ``other`` (failed, stopped, expired or
        being deleted), read from the store."""
        now = self.clock()
        out = []
        for pool in self.pools.values():
            members = await self.store.pool_members(pool.name)
            out.append(pools_core.counts(pool, members, now).as_dict())
        return out

    async def start_workspace(
        self, chat_id: str, *, owner: str, wait: bool = True, parameters: Mapping[str, str] | None = None
    ) -> ToolResult:
        """Start the chat's workspace; exactly one start build however many callers race.

        ``parameters`` go with the start build this call fires; a workspace already running
        fires nothing and answers ``parameters_applied: false``.
        """
        return await self._run(Request.START, chat_id, owner, wait, parameters=parameters)

    async def stop_workspace(self, chat_id: str, *, owner: str, wait: bool = True) -> ToolResult:
        """Stop the chat's workspace; waits for a build in flight first."""
        return await self._run(Request.STOP, chat_id, owner, wait)

    async def delete_workspace(self, chat_id: str, *, owner: str, wait: bool = True) -> ToolResult:
        """Delete the chat's workspace with one delete build."""
        return await self._run(Request.DELETE, chat_id, owner, wait)

    async def status(self, chat_id: str, *, owner: str, wait_ms: float = 0) -> ToolResult:
        """The chat's workspace status (``status``, ``reason``, ``build_id``, ``wait_expired``).

        With ``wait_ms`` (at most 30,000), wait that long for the workspace to settle (no build
        in flight, no agent still starting), woken by the store's events. Read-only: it never
        fires a build. Another owner's chat reads exactly as an unknown one.
        """
        _check_id("chat_id", chat_id)
        _check_id("owner", owner)
        if (
            isinstance(wait_ms, bool)
            or not isinstance(wait_ms, int | float)
            or not 0 <= wait_ms <= MAX_STATUS_WAIT_MS
        ):
            raise ValueError(f"wait_ms must be a number from 0 to {MAX_STATUS_WAIT_MS}, not {wait_ms!r}")
        self._raise_if_failed()
        chat = await self.store.get_chat(chat_id)
        if chat is None or chat.owner != owner or chat.workspace_id is None:
            return steps.status(None)
        async with self._registry.track(chat.workspace_id) as entry:
            await self._pump.caught_up(await self.store.head())
            expired = wait_ms > 0 and not await self._steps.wait(entry, Settled(), wait_ms / 1000)
            result = steps.status(entry.current(), wait_expired=expired)
        await self._activity.after_request(chat)
        return await self._with_deadline(result, chat.workspace_id)

    async def logs(
        self,
        chat_id: str,
        *,
        owner: str,
        build: int | str | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> ToolResult:
        """The ``workspace_logs`` tool: the chat's latest build (or ``build``, its number or id)
        with its status, its error and up to ``limit`` of its log lines, the last ones or those
        numbered after ``after`` (see :func:`~workspace_lifecycle.buildlogs.page`). Read-only."""
        _check_id("chat_id", chat_id)
        _check_id("owner", owner)
        return await read_logs(self.store, chat_id, owner, build, limit, after)

    async def _run(
        self,
        request: Request,
        chat_id: str,
        owner: str,
        wait: bool,
        *,
        name: str | None = None,
        parameters: Mapping[str, str] | None = None,
        pool: str | None = None,
    ) -> ToolResult:
        _check_id("chat_id", chat_id)
        _check_id("owner", owner)
        if not isinstance(wait, bool):
            raise ValueError(f"wait must be a bool, not {type(wait).__name__}")
        flow = Flow(request, wait=wait, owner=owner, parameters=check_parameters(parameters), pool=pool)
        with RequestSpan(request.value, chat_id) as span:
            result, chat = await self._steps.serve(flow, chat_id, owner, name, span)
            span.result(result)
        if chat is None or chat.owner != owner:
            return result
        if request in (Request.START, Request.CREATE):
            await self._activity.after_request(chat)  # a stop or a delete leaves nothing to keep alive
        if result.is_error:
            return result
        workspace_id = chat.workspace_id
        if workspace_id is None:  # a create bound the chat after it was read
            bound = await self.store.get_chat(chat_id)
            workspace_id = bound.workspace_id if bound is not None else None
        return await self._with_deadline(result, workspace_id)

    async def _with_deadline(self, result: ToolResult, workspace_id: str | None) -> ToolResult:
        """The answer with the workspace's next deadline in words (a model keeps the workspace
        with a touch); read from the store when this runtime does not follow the deadlines."""
        if workspace_id is None or result.is_error:
            return result
        if self.fire_deadlines:
            deadline = self._deadlines.known(workspace_id)
        else:
            try:
                deadline = (await self.store.workspace_facts(workspace_id)).workspace.deadline
            except NotFoundError:
                return result
        return answers.with_deadline(result, deadline, self.clock())


class _Sinks:
    """What the pump delivers to: the tracked workspaces, and the deadline scheduler."""

    def __init__(
        self,
        registry: Registry,
        scheduler: DeadlineScheduler | None,
        warnings: WarningFeed,
        keeper: PoolKeeper | None,
    ) -> None:
        self.registry = registry
        self.scheduler = scheduler
        self.warnings = warnings
        self.keeper = keeper

    def dispatch(self, event: StoreEvent) -> None:
        self.registry.dispatch(event)
        self.warnings.dispatch(event)
        if self.scheduler is not None:
            self.scheduler.dispatch(event)
        if self.keeper is not None:
            self.keeper.dispatch(event)

    async def resync_all(self) -> None:
        await self.registry.resync_all()
        if self.scheduler is not None:
            await self.scheduler.resync()
        if self.keeper is not None:
            self.keeper.wake_all()

    def fail(self) -> None:
        self.registry.fail()


def _pools_by_name(pools: list[Pool], default: str | None) -> dict[str, Pool]:
    """A Lifecycle's warm pools by name, checked: Pool values, distinct names, the default one
    of them."""
    if not all(isinstance(pool, Pool) for pool in pools):
        raise ValueError("pools must be workspace_lifecycle.Pool values")
    by_name = {pool.name: pool for pool in pools}
    if len(by_name) != len(pools):
        raise ValueError("two pools have the same name")
    if default is not None and default not in by_name:
        raise ValueError(f"default_pool {default!r} is not one of this Lifecycle's pools")
    return by_name


def _check_id(what: str, value: object) -> None:
    checks.identifier(what, value)  # the one rule and sentence for ids, on every face
