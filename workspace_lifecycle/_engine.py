"""The moving parts of a :class:`~workspace_lifecycle.runtime.Lifecycle` and its own tasks.

:class:`Engine` wires the collaborators one runtime composes (the
:class:`~workspace_lifecycle._registry.Registry` of tracked workspaces, the
:class:`~workspace_lifecycle._pump.EventPump` and what it delivers to, the deadline scheduler,
the turns' holds, the clock-skew watch, the retrying writer, the
:class:`~workspace_lifecycle._interpreter.Interpreter` of the steps) and runs the runtime's
background tasks: the pump, the deadline scheduler, the pool keeper, the holds' heartbeat and
the skew watch. The :class:`~workspace_lifecycle.runtime.Lifecycle` owns the task group they run
in (``tasks``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import attrs
from anyio.abc import TaskGroup

from . import checks
from ._activity import Activity
from ._deadlines import DeadlineScheduler
from ._holds import HoldKeeper
from ._interpreter import Interpreter
from ._pools import PoolKeeper
from ._pump import EventPump
from ._registry import Registry
from ._retry import RetryingWriter
from ._skew import SkewWatch
from ._warm_pools import WarmPools
from ._warnings import WarningFeed
from .adapters.base import Store
from .clock import Clock
from .limits import Limits
from .skew import act_margin
from .values import Policy, StoreEvent

__all__ = ["Engine", "Settings"]


@attrs.frozen
class Settings:
    """A runtime's numbers and defaults, checked once (:meth:`checked`)."""

    build_timeout: float
    agent_timeout: float
    write_retries: int
    resync_interval: float | None
    hold_seconds: float
    fire_deadlines: bool
    policy: Policy
    limits: Limits | None
    skew_margin: float = 0.0

    @classmethod
    def checked(
        cls,
        *,
        build_timeout: float,
        agent_timeout: float,
        write_retries: int,
        resync_interval: float | None,
        hold_seconds: float,
        fire_deadlines: bool,
        policy: Policy | None,
        limits: Limits | None,
        skew_margin: float = 0.0,
    ) -> Settings:
        """The settings, or ``ValueError`` naming the first argument out of bounds."""
        build_timeout = checks.seconds("build_timeout", build_timeout)
        hold_seconds = checks.seconds("hold_seconds", hold_seconds)
        skew_margin = checks.seconds("skew_margin", skew_margin, zero=True)
        agent_timeout = checks.seconds("agent_timeout", agent_timeout)
        if resync_interval is not None:
            resync_interval = checks.seconds("resync_interval", resync_interval)
        write_retries = checks.count("write_retries", write_retries)
        if policy is not None and not isinstance(policy, Policy):
            raise ValueError(f"policy must be a workspace_lifecycle.Policy, not {policy!r}")
        if limits is not None and not isinstance(limits, Limits):
            raise ValueError(f"limits must be a workspace_lifecycle.Limits, not {limits!r}")
        return cls(
            float(build_timeout),
            float(agent_timeout),
            write_retries,
            resync_interval,
            hold_seconds,
            bool(fire_deadlines),
            policy or Policy(),
            limits,
            skew_margin,
        )


class Engine:
    """The collaborators of one runtime, wired, and its background tasks (module docstring)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        warm: WarmPools,
        settings: Settings,
        tasks: Callable[[], TaskGroup | None],
    ) -> None:
        self.fire_deadlines = fire_deadlines = settings.fire_deadlines
        resync_interval = settings.resync_interval
        self.keeper = warm.keeper
        self._tasks = tasks
        self.registry = Registry(
            store,
            clock=clock,
            spawn=self.spawn,
            caught_up=self.caught_up,
            raise_if_failed=self.raise_if_failed,
            resync_interval=resync_interval,
        )
        self.skew = SkewWatch(store, clock)
        self.deadlines = DeadlineScheduler(
            store,
            clock,
            fires=fire_deadlines,
            margin=lambda: act_margin(settings.skew_margin, self.skew.latest),
        )
        self.warnings = WarningFeed(store)
        sinks = _Sinks(self.registry, self.deadlines if fire_deadlines else None, self.warnings, self.keeper)
        self.pump = EventPump(store, sinks, kick_after=resync_interval)
        self.activity = Activity(store, self.deadlines, clock)
        self.holds = HoldKeeper(store, clock, hold_seconds=settings.hold_seconds)
        self.writer = RetryingWriter(store, retries=settings.write_retries, limits=settings.limits)
        self.steps = Interpreter(
            store,
            self.registry,
            self.pump,
            self.writer,
            raise_if_failed=self.raise_if_failed,
            build_timeout=settings.build_timeout,
            agent_timeout=settings.agent_timeout,
            pools=warm.by_name,
        )

    async def start(self) -> None:
        """Before the tasks run: the pump's cursor, then the armed deadlines."""
        await self.pump.start()
        if self.fire_deadlines:
            await self.deadlines.load()  # after the pump's start: it replays what follows

    async def run(self) -> None:
        """The pump, the deadline scheduler, the pool keeper, the holds' heartbeat and the skew
        watch, until cancelled (or the pump ends)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.skew.run)
            if self.fire_deadlines:
                tg.start_soon(self.deadlines.run)
            if self.keeper is not None:
                tg.start_soon(self.keeper.run)
            tg.start_soon(self.holds.run)
            await self.pump.run()
            tg.cancel_scope.cancel()

    def close(self) -> None:
        """The runtime ends: watchers end, and requests still waiting raise now."""
        self.registry.close_watchers()
        self.pump.close()  # requests still waiting (from outer task groups) raise now

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Run ``fn(*args)`` in the runtime's task group (it runs: the ``async with`` began)."""
        tg = self._tasks()
        assert tg is not None
        tg.start_soon(fn, *args)

    async def caught_up(self, seq: int) -> None:
        await self.pump.caught_up(seq)

    def raise_if_failed(self) -> None:
        self.pump.raise_if_failed()
        if self._tasks() is None:
            raise RuntimeError("use the Lifecycle as an async context manager first")


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
