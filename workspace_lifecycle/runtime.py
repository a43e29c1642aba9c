"""The runtime: :class:`Lifecycle`, the public API over the interpreter of the requests' steps.

A request is decided step by step by :class:`~workspace_lifecycle.steps.Flow` (pure); the
:class:`~workspace_lifecycle._interpreter.Interpreter` only executes the steps: it reads the
chat, holds the workspace's tracker in the :class:`~workspace_lifecycle._registry.Registry`,
runs the store's compare-and-set writes (retrying transient failures after re-reading the
rows), and sleeps until a step's condition holds, woken by the
:class:`~workspace_lifecycle._pump.EventPump` that applies the store's events. This module holds
what a caller sees, the public API and its documentation; :class:`Lifecycle` composes the
:class:`~workspace_lifecycle._engine.Engine` (its moving parts and its own tasks: the pump, the
deadline scheduler, the turns' holds, the pool keeper), the
:class:`~workspace_lifecycle._requests.Requests` (the checks of a caller's arguments and how
each request is served) and the :class:`~workspace_lifecycle._warm_pools.WarmPools`. Nothing
sleeps in a loop; timeouts and cancellation are anyio cancel scopes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Self

from ._engine import Engine, Settings
from ._holds import Turn
from ._interpreter import workspace_name
from ._requests import Requests, check_id, check_ids, owned
from ._service import BackgroundService
from ._warm_pools import WarmPools
from .adapters.base import DEFAULT_HOLD_SECONDS, Store
from .clock import Clock, resolve_clock
from .limits import Limits, Usage
from .machine import Request
from .pools import Pool
from .skew import ClockSkew
from .values import Chat, Deadline, Policy, StateChange, StoreEvent, ToolResult, WorkspaceState

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
        settings = Settings.checked(
            build_timeout=build_timeout,
            agent_timeout=agent_timeout,
            write_retries=write_retries,
            resync_interval=resync_interval,
            hold_seconds=hold_seconds,
            fire_deadlines=fire_deadlines,
            policy=policy,
            limits=limits,
            skew_margin=skew_margin,
        )
        self.store, self.limits, self.policy = store, limits, settings.policy
        self.clock = resolve_clock(clock, store, who="Lifecycle")
        warm = WarmPools(store, pools, default_pool, self.clock, keep=keep_pools)
        self.pools, self.default_pool = warm.by_name, default_pool
        self.fire_deadlines, self.resync_interval = settings.fire_deadlines, settings.resync_interval
        self.build_timeout, self.agent_timeout = settings.build_timeout, settings.agent_timeout
        self.write_retries, self.skew_margin = settings.write_retries, settings.skew_margin
        self._engine = Engine(store, self.clock, warm, settings, tasks=lambda: self._tg)
        self._pump, self._keeper = self._engine.pump, self._engine.keeper  # read by the tests' histories
        self._requests = Requests(store, self.clock, self._engine, warm)

    # --- lifecycle of the runtime ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._engine.start()
        return await super().__aenter__()  # runs the pump and the deadline scheduler

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._engine.close()  # requests still waiting (from outer task groups) raise now
        return await super().__aexit__(exc_type, exc, tb)

    async def run(self) -> None:
        """The event pump (applies the store's events to the tracked workspaces), the deadline
        scheduler and the heartbeat of the turns' holds, until cancelled."""
        await self._engine.run()

    @property
    def clock_skew(self) -> ClockSkew | None:
        """The last measurement of this runtime's clock against the store's (see
        :mod:`workspace_lifecycle.skew`): taken at start and every 5 minutes; ``None`` before
        the first, or for a store with no clock of its own (SQLite, memory)."""
        return self._engine.skew.latest

    async def drain(self) -> None:
        """Returns at once: nothing of a request outlives its call in this process.

        A request answered with ``wait=False`` that had to wait for another build first (a
        start during a stop build) is stored on its workspace, and the store's write that
        finishes that build fires it, whether this process is alive then or not. (Before 0.3
        it finished in this runtime's background, and a short-lived process had to wait here.)
        """
        self._engine.raise_if_failed()

    @property
    def tracked(self) -> int:
        """How many workspaces have a machine now (somebody waits on or watches them)."""
        return len(self._engine.registry.entries)

    @property
    def events_applied(self) -> int:
        """Events applied to tracked workspaces since the runtime started."""
        return self._engine.registry.events_applied

    @property
    def write_retried(self) -> int:
        """Store writes retried after a :class:`~workspace_lifecycle.errors.TransientStoreError`."""
        return self._engine.writer.retried

    @property
    def deadlines_armed(self) -> int:
        """How many workspaces have an armed deadline (as far as this runtime knows)."""
        return self._engine.deadlines.armed

    @property
    def deadlines_fired(self) -> int:
        """Builds this runtime fired because a deadline passed (other replicas' are not counted)."""
        return self._engine.deadlines.fired

    @property
    def deadlines_warned(self) -> int:
        """``deadline_approaching`` events this runtime wrote (other replicas' are not counted)."""
        return self._engine.deadlines.warned

    def next_deadline(self) -> float | None:
        """When the earliest armed deadline comes due (wall-clock seconds), or ``None``."""
        return self._engine.deadlines.next_due()

    @property
    def resyncs(self) -> int:
        """Re-reads forced by silence: a waited-on workspace re-derived after
        ``resync_interval``, or the pump kicked after a lost wake-up."""
        return self._engine.registry.resyncs + self._engine.pump.kicks

    # --- reading -----------------------------------------------------------------------------

    async def register_chat(self, chat_id: str, *, owner: str, policy: Policy | None = None) -> Chat:
        """Record that ``chat_id`` belongs to ``owner`` (idempotent); return the chat as stored.

        A new chat gets ``policy``, or this runtime's default policy; ``policy`` given for an
        existing chat replaces its own (from the next deadline it arms: a touch, a build's end).
        Another owner's chat raises :class:`~workspace_lifecycle.errors.OwnershipError`.
        """
        return await self._requests.register_chat(chat_id, owner, policy, self.policy)

    async def set_limits(self, owner: str, limits: Limits) -> None:
        """Store ``owner``'s own limits (replacing any stored before), over this runtime's default
        field by field (an unset field, ``None``, keeps the default). They are in force from the
        next create or start, on every replica; an owner already over them keeps what it has
        (nothing is stopped) and is refused more."""
        await self._requests.set_limits(owner, limits)

    async def usage(self, owner: str) -> Usage:
        """``owner``'s usage (running workspaces, workspaces) with its stored limits, in one read;
        ``usage.as_dict(lc.limits)`` adds the limits in force."""
        return await self._requests.usage(owner)

    async def touch(self, chat_id: str, *, owner: str) -> Deadline | None:
        """Activity in the chat: push its workspace's idle deadline to now + ``idle_stop_after``
        (as E2B's ``setTimeout``). Returns the deadline armed after the call.

        Cheap enough for every chat message: one read, and one small write only when the
        deadline would move by more than :data:`~workspace_lifecycle.deadlines.TOUCH_SLACK`
        (concurrent touches share it). A workspace that is not running has no idle deadline to
        push. An unknown chat, or another owner's, raises
        :class:`~workspace_lifecycle.errors.NotFoundError` (the same one).
        """
        # Here rather than in Requests: a touch comes with every chat message, and one coroutine
        # less is 7% of the instructions of a touch that coalesces.
        check_id("chat_id", chat_id)
        check_id("owner", owner)
        chat = owned(await self.store.get_chat(chat_id), chat_id, owner)
        activity = self._engine.activity
        due, known = activity.due(chat)
        return await activity.write(chat) if due else known

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
        async with self._requests.turn(chat_id, owner) as held:
            yield held

    @property
    def turns(self) -> int:
        """How many turns this runtime holds now."""
        return self._engine.holds.held

    async def ensure_running(
        self, chat_id: str, *, owner: str, wait: bool = True, parameters: Mapping[str, str] | None = None
    ) -> ToolResult:
        """What a chat runtime calls before the model's turn: make the workspace run.

        No workspace: the same answer as ``start_workspace``. Stopped or failed: exactly one
        start build however many callers race, and (with ``wait``) its answer. Building: waits.
        Running: answers at once. It counts as activity (:meth:`touch`).
        """
        return await self._requests.serve(Request.START, chat_id, owner, wait, parameters=parameters)

    async def state(self, chat_id: str, *, owner: str | None = None) -> WorkspaceState:
        """The chat's workspace state, derived from the stored rows.

        With ``owner``, another owner's chat reads as an unknown one (``no_workspace``).
        """
        return await self._requests.state(chat_id, owner)

    def watch(
        self, chat_id: str | None = None, *, owner: str | None = None
    ) -> AsyncGenerator[StateChange, None]:
        """Every state change of ``chat_id``'s workspace (or of every chat, if ``None``).

        With ``owner``, only changes of that owner's chats are yielded: another owner's chat
        is watched exactly as an unknown one (nothing, ever). Watching every chat keeps one
        machine per workspace that changes while you watch.
        """
        check_ids(chat_id, owner)
        return self._engine.registry.watch(chat_id, owner=owner)

    def warnings(
        self, chat_id: str | None = None, *, owner: str | None = None
    ) -> AsyncGenerator[StoreEvent, None]:
        """Every ``deadline_approaching`` event of ``chat_id``'s workspace (or of every chat, if
        ``None``) from now on, whichever replica wrote it (the chat's ``Policy.warn_before``).

        With ``owner``, another owner's chat is followed exactly as an unknown one (nothing).
        :func:`~workspace_lifecycle.deadlines.in_words` says the event's deadline in words.
        """
        check_ids(chat_id, owner)
        return self._engine.warnings.follow(chat_id, owner=owner)

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
        return await self._requests.create(
            chat_id, owner, wait, name=name, parameters=parameters, pool=pool, default_pool=self.default_pool
        )

    async def pool_status(self) -> list[dict[str, object]]:
        """Each warm pool at a glance: ``pool``, ``size``, and how many of its workspaces are
        ``ready`` to claim, ``warming`` (being built) and ``other`` (failed, stopped, expired or
        being deleted), read from the store."""
        return await self._requests.warm.status()

    async def start_workspace(
        self, chat_id: str, *, owner: str, wait: bool = True, parameters: Mapping[str, str] | None = None
    ) -> ToolResult:
        """Start the chat's workspace; exactly one start build however many callers race.

        ``parameters`` go with the start build this call fires; a workspace already running
        fires nothing and answers ``parameters_applied: false``.
        """
        return await self._requests.serve(Request.START, chat_id, owner, wait, parameters=parameters)

    async def stop_workspace(self, chat_id: str, *, owner: str, wait: bool = True) -> ToolResult:
        """Stop the chat's workspace; waits for a build in flight first."""
        return await self._requests.serve(Request.STOP, chat_id, owner, wait)

    async def delete_workspace(self, chat_id: str, *, owner: str, wait: bool = True) -> ToolResult:
        """Delete the chat's workspace with one delete build."""
        return await self._requests.serve(Request.DELETE, chat_id, owner, wait)

    async def status(self, chat_id: str, *, owner: str, wait_ms: float = 0) -> ToolResult:
        """The chat's workspace status (``status``, ``reason``, ``build_id``, ``wait_expired``).

        With ``wait_ms`` (at most 30,000), wait that long for the workspace to settle (no build
        in flight, no agent still starting), woken by the store's events. Read-only: it never
        fires a build. Another owner's chat reads exactly as an unknown one.
        """
        return await self._requests.status(chat_id, owner, wait_ms)

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
        return await self._requests.logs(chat_id, owner, build, limit, after)
