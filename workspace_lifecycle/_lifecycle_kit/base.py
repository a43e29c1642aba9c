"""The state machine's body: its configuration, the event loop it runs the store and the runtime
on (an ``anyio`` blocking portal), and the plumbing every rule uses (reading the log, checking a
workspace's rows against its events). The rules and invariants are mixins over it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, ExitStack
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis.stateful import RuleBasedStateMachine

from .. import answers
from ..adapters.base import Store
from ..clock import VirtualClock
from ..limits import Limits, Usage
from ..machine import Tracker, derive_state
from ..pools import Pool
from ..runtime import Lifecycle
from ..values import Build, EventKind, Policy, StoreEvent, ToolResult, Transition, WorkspaceState
from .histories import DEFAULT_CHATS, OWNER
from .holds import IDLE as HOLD_IDLE
from .holds import _Held

T = TypeVar("T")
StoreFactory = Callable[[], AbstractAsyncContextManager[Store]]
ProvisionerFactory = Callable[[Store], AbstractAsyncContextManager[Any]]


class MachineBase(RuleBasedStateMachine):
    """What the rule mixins share (see :class:`~workspace_lifecycle.testing.LifecycleMachine`)."""

    store_factory: StoreFactory
    provisioner_factory: ProvisionerFactory | None = None
    backend: str = "asyncio"
    chats: tuple[str, ...] = DEFAULT_CHATS
    owner: str = OWNER
    step_timeout: float = 10.0
    build_timeout: float = 10.0
    agent_timeout: float = 1.0
    pool_size: int = 2
    clocked: bool = False

    def __init__(self) -> None:
        super().__init__()
        self._stack = ExitStack()
        try:
            self.portal: BlockingPortal = self._stack.enter_context(start_blocking_portal(self.backend))
            self.clock = VirtualClock() if self.clocked else None
            factory: Callable[..., AbstractAsyncContextManager[Store]] = type(self).store_factory
            cm = factory(self.clock) if self.clock is not None else factory()
            self.store: Store = self._stack.enter_context(self.portal.wrap_async_context_manager(cm))
            if self.provisioner_factory is not None:
                prov = type(self).provisioner_factory(self.store)  # type: ignore[misc]
                self._stack.enter_context(self.portal.wrap_async_context_manager(prov))
            # The pool is filled by the machine's rule, not a keeper: a fill at a moment of the
            # keeper's choosing would make the histories differ between runs.
            self.pool = Pool("warm", size=self.pool_size, parameters={"image": "kit"})
            self._runtime = ExitStack()  # the Lifecycle's own: restart_runtime drops it
            self._stack.callback(lambda: self._runtime.close())
            self.lc: Lifecycle = self._open_runtime()
            for chat in self.chats:
                self.call(self.lc.register_chat, chat, owner=self.owner)
            self.cursor: int = self.call(self.store.head)
        except BaseException:
            self._stack.close()
            raise
        self.trackers: dict[str, Tracker] = {}
        self.pending: dict[str, list[StoreEvent]] = {}
        self.applied: dict[str, list[StoreEvent]] = {}
        self.in_flight: dict[str, set[int]] = {}
        self.deferred: dict[str, Transition] = {}  # workspace -> request waiting for a build
        self.limits: Limits | None = None  # the owner's stored limits (none: unlimited)
        self.usage: Usage = self.call(self.store.usage, self.owner)  # as last checked
        self.claimed: dict[str, str] = {}  # workspace -> the chat that claimed it from the pool
        # (workspace, token) -> the holds the machine took (clocked only)
        self.holds: dict[tuple[str, str], list[_Held]] = {}

    def teardown(self) -> None:
        self._stack.close()

    def _open_runtime(self) -> Lifecycle:
        lifecycle = Lifecycle(
            self.store,
            build_timeout=self.build_timeout,
            agent_timeout=self.agent_timeout,
            clock=self.clock,
            policy=Policy(idle_stop_after=HOLD_IDLE) if self.clock is not None else None,
            pools=[self.pool],
            keep_pools=False,
        )
        return self._runtime.enter_context(self.portal.wrap_async_context_manager(lifecycle))

    # --- plumbing ----------------------------------------------------------------------------

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the machine's event loop, bounded by ``step_timeout``."""

        async def bounded() -> T:
            with anyio.fail_after(self.step_timeout):
                return await fn(*args, **kwargs)

        return self.portal.call(bounded)

    @property
    def simulated(self) -> bool:
        """True when the machine itself plays the provisioner (no provisioner given)."""
        return self.provisioner_factory is None

    def _read(self, upto: int | None = None) -> list[StoreEvent]:
        """Read the log from the cursor (at least up to ``upto``); check builds in flight."""
        fresh: list[StoreEvent] = []
        while True:
            batch = self.call(self.store.read_events, self.cursor)
            for event in batch:
                self._record(event)
                fresh.append(event)
                self.cursor = event.seq
            if not batch and (upto is None or self.cursor >= upto):
                return fresh

    def _record(self, event: StoreEvent) -> None:
        ws = event.workspace_id
        self.pending.setdefault(ws, []).append(event)
        flying = self.in_flight.setdefault(ws, set())
        if event.kind is EventKind.BUILD_QUEUED:
            assert not flying, f"workspace {ws}: build {event.build_number} queued while {flying} in flight"
            flying.add(event.build_number)
        elif event.kind is EventKind.BUILD_FINISHED:
            flying.discard(event.build_number)

    def _workspace(self, chat: str) -> str | None:
        row = self.call(self.store.get_chat, chat)
        return row.workspace_id if row is not None else None

    def _check_workspace(self, ws: str) -> WorkspaceState:
        """derive_state over the rows == the state the events lead to (up to the same seq)."""
        facts = self.call(self.store.workspace_facts, ws)
        self._read(facts.seq)
        tracker = self.trackers.get(ws)
        if tracker is None:
            tracker = self.trackers[ws] = Tracker(ws, facts.workspace.chat_id)
        queue = self.pending.get(ws, [])
        due = [e for e in queue if e.seq <= facts.seq]
        self.pending[ws] = [e for e in queue if e.seq > facts.seq]
        for event in due:
            tracker.apply(event)
            self.applied.setdefault(ws, []).append(event)
        derived = derive_state(facts)
        assert derived is tracker.state, (
            f"workspace {ws}: rows say {derived.value}, events say {tracker.state.value} ({tracker.snapshot()})"
        )
        return derived

    def _state(self, chat: str) -> tuple[str | None, WorkspaceState, bool]:
        ws = self._workspace(chat)
        if ws is None:
            return None, WorkspaceState.NO_WORKSPACE, False
        facts = self.call(self.store.workspace_facts, ws)
        return ws, derive_state(facts), facts.workspace.deleted

    def _queued(self, events: Iterable[StoreEvent], ws: str | None) -> list[StoreEvent]:
        return [e for e in events if e.workspace_id == ws and e.kind is EventKind.BUILD_QUEUED]

    def _latest(self, ws: str) -> Build | None:
        return self.call(self.store.workspace_facts, ws).latest_build

    def _refused(self, r: ToolResult) -> bool:
        """Was ``r`` refused for quota? Then the owner was at the limit it names."""
        if r.data.get("error_code") != answers.INSUFFICIENT_QUOTA:
            return False
        quota = r.data["quota"]
        assert self.limits is not None, f"refused for quota with no limits set: {r.data}"
        assert quota["allowed"] == getattr(self.limits, quota["limit"]), (quota, self.limits)
        assert quota["used"] >= quota["allowed"], quota
        assert not r.is_error and r.data["next_steps"], r.data
        return True

    def _at_running_limit(self) -> bool:
        most = None if self.limits is None else self.limits.running
        return most is not None and self.call(self.store.usage, self.owner).running >= most
