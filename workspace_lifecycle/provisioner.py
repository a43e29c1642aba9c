"""The provisioner side: the claim loop, the lease a worker holds while it works, and a
simulated provisioner that completes builds like a real one would.

A provisioner uses only the provisioner side of the store (``claim_build``, ``renew_lease``,
``finish_build``, ``report_agent``), from any process:

* :func:`claims` claims builds as they are queued, each under a lease (a fencing token and a
  duration), and sleeps in the store's ``wait_for_change`` when nothing is pending;
* :func:`holding` renews a build's lease while the worker works on it (a heartbeat) and cancels
  that work if the lease is lost, so a worker presumed dead never acts on a build that another
  worker may already be retrying; every write it then makes carries the token, and the store
  refuses a lost one (:class:`~workspace_lifecycle.errors.LeaseLostError`, nothing changed);
* a :class:`~workspace_lifecycle.reaper.LeaseReaper` next to the provisioners fails the builds
  whose lease ran out.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio
import attrs

from . import checks, leases, writes
from ._held import Held, retrying
from ._lease_keeper import LeaseKeeper
from ._service import BackgroundService
from .adapters.base import DEFAULT_LEASE_SECONDS, Store, Topic
from .clock import Clock, resolve_clock
from .errors import (
    CallerError,
    CursorExpiredError,
    StoreClosedError,
    StoreError,
    TransientStoreError,
)
from .reaper import LeaseReaper
from .values import AgentLifecycle, Build, JobStatus, StoreEvent, Transition

__all__ = [
    "Held",
    "SimulatedFailure",
    "SimulatedProvisioner",
    "claims",
    "holding",
    "quota_failure",
    "retrying",
    "simulated_endpoints",
    "validation_failure",
]

log = logging.getLogger("workspace_lifecycle.provisioner")

#: The longest pause a provisioner may be configured to wait between retries of a write.
_MAX_RETRY_DELAY = 3600.0


def simulated_endpoints() -> dict[str, str]:
    """The endpoints a simulated ready agent reports: well-formed, reaching nothing (``.invalid``
    is reserved for names that never resolve), and the same for every workspace (so that two
    chats' answers differ only where their workspaces do).

    >>> simulated_endpoints()
    {'http': 'http://workspace.simulated.invalid'}
    """
    return {"http": "http://workspace.simulated.invalid"}


@attrs.frozen
class SimulatedFailure:
    """How a simulated build fails: the error sentence and the structured ``details`` a real
    provisioner would attach (see :func:`quota_failure`, :func:`validation_failure`)."""

    error: str = "simulated failure"
    details: Mapping[str, Any] | None = None


def quota_failure(*, credits_consumed: int, budget: int) -> SimulatedFailure:
    """A build refused for quota, with Coder's fields (``error_code: "INSUFFICIENT_QUOTA"``).

    >>> quota_failure(credits_consumed=12, budget=10).details["quota"]
    {'credits_consumed': 12, 'budget': 10}
    """
    return SimulatedFailure(
        "insufficient quota",
        {
            "error_code": "INSUFFICIENT_QUOTA",
            "title": "Workspace quota exceeded",
            "message": f"This build needs more credits than remain: {credits_consumed} consumed of {budget}.",
            "next_steps": ["Stop or delete another workspace to free credits, then retry."],
            "quota": {"credits_consumed": credits_consumed, "budget": budget},
        },
    )


def validation_failure(
    detail: str, *, validations: Sequence[Mapping[str, str]] = (), template_id: str | None = None
) -> SimulatedFailure:
    """A build the provisioner refused for its parameters. As Coder's, the template id is given
    only with ``validations`` (the model needs it to fix the parameters and retry).

    >>> validation_failure("bad", validations=[{"field": "region", "detail": "unknown"}], template_id="t1").details
    {'detail': 'bad', 'validations': [{'field': 'region', 'detail': 'unknown'}], 'template_id': 't1'}
    >>> validation_failure("responder error", template_id="t1").details
    {'detail': 'responder error'}
    """
    details: dict[str, Any] = {"detail": detail}
    if validations:
        details["validations"] = [dict(v) for v in validations]
        if template_id is not None:
            details["template_id"] = template_id
    return SimulatedFailure("the build was refused", details)


async def claims(
    store: Store,
    worker: str,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    heard: Callable[[Sequence[StoreEvent]], None] | None = None,
) -> AsyncIterator[Build]:
    """Every build ``worker`` claims from ``store``, as it claims it, each under a lease of
    ``lease_seconds`` (the build's ``lease_token``): the loop of a provisioner.

    It claims what is pending when it starts, then sleeps in the store's ``wait_for_change``
    and, on each wake-up, reads the log once and claims again only for the ``build_queued``
    events it shows (:func:`~workspace_lifecycle.leases.claims_owed`): no read of the head
    around a claim, and no claim for a wake-up that queued nothing (its own claim, finish or
    agent report, another workspace's news). ``heard``, if given, is handed every batch read
    (the provisioner's lease reaper follows the log through it instead of reading it again).
    An idle provisioner costs nothing; transient store errors are retried after a short pause;
    it ends when the store closes. Its interest is builds queued in any workspace
    (``Topic.BUILDS``).
    """
    with store.interest(Topic.BUILDS):
        cursor: int | None = None  # the log read up to here (None: read the head first)
        owed: int | None = None  # claims the log's news call for (None: until one finds nothing)
        while True:
            try:
                if cursor is None:
                    cursor, owed = await store.head(), None
                build = events = None
                if owed is None or owed > 0:
                    build = await store.claim_build(worker, lease_seconds=lease_seconds)
                    owed = 0 if build is None else None if owed is None else owed - 1
                else:
                    await store.wait_for_change(cursor)
                    events = await store.read_events(cursor)
            except StoreClosedError:
                return
            except CursorExpiredError:
                cursor = None  # the log was pruned past us: claim whatever is pending now
                continue
            except TransientStoreError as exc:
                log.warning("provisioner %s: %s; retrying", worker, exc)
                cursor = None
                await anyio.sleep(0.1)
                continue
            if build is not None:
                yield build
            if events:
                cursor = events[-1].seq
                owed = leases.claims_owed(events)
                if heard is not None:
                    heard(events)


@contextlib.asynccontextmanager
async def holding(
    store: Store,
    build: Build,
    *,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    clock: Clock | Callable[[], float] | None = None,
) -> AsyncIterator[Held]:
    """Work on ``build`` under its lease: renew it every third of ``lease_seconds`` (on the
    store's clock; ``clock``, if given, must be that one) while the body runs, including while the body's own store writes wait, and
    cancel the body if the lease is lost (then ``held.lost`` is true after the block). A
    renewal that fails on a store error is tried again after half the interval (two may fail
    in a row and the lease is still renewed before it runs out); a worker cut off from the
    store until its lease ran out (on ``clock``: it must read the store's time) stops too,
    without waiting to hear it from the store.
    Once the build is finished under this lease, renewals end quietly::

        async with holding(store, build, lease_seconds=30) as held:
            ...  # the work
            await store.finish_build(build.build_id, "succeeded", lease=held.token)
        if held.lost:
            return  # another worker may be retrying this build: touch nothing of it
    """
    # One build's own keeper: the heartbeat that a provisioner's LeaseKeeper runs for all.
    keeper = LeaseKeeper(store, lease_seconds=lease_seconds, clock=resolve_clock(clock, store, who="holding"))
    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(keeper.run)
        try:
            async with keeper.hold(build) as held:
                yield held
        except Exception as exc:  # re-raised below as itself, not inside an exception group
            failure = exc
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


FailSpec = Callable[[Build], bool | SimulatedFailure | None] | float | None


class SimulatedProvisioner(BackgroundService):
    """Completes builds after ``build_seconds``; the agent reaches ``agent`` ``agent_seconds`` later.

    ``fail`` is a predicate on the build, or a probability in [0, 1], that makes a build fail
    (a predicate may return a :class:`SimulatedFailure` to choose the error and details, e.g.
    :func:`quota_failure`);
    ``agent`` is the agent's final lifecycle state (``"ready"``, ``"start_error"``, ...) or
    ``None`` for workspaces without an agent. ``seed`` makes probabilistic failures repeatable.
    The simulated durations and the lease renewals are measured on the store's clock (``clock``,
    if given, must be that one): with a :class:`~workspace_lifecycle.clock.VirtualClock`
    given to the store, a build of an hour finishes when the test advances the clock by an hour. Each build is claimed under a lease of ``lease_seconds``,
    renewed while it runs (:func:`holding`); with ``reap_leases`` a
    :class:`~workspace_lifecycle.reaper.LeaseReaper` on the same clock runs beside the claim
    loop and fails the builds of workers whose lease ran out.

    >>> SimulatedProvisioner(None, fail=2.0)  # type: ignore[arg-type]
    Traceback (most recent call last):
    ...
    ValueError: fail must be a predicate or a probability in [0, 1], not 2.0
    """

    def __init__(
        self,
        store: Store,
        *,
        build_seconds: float = 0.0,
        agent_seconds: float = 0.0,
        fail: FailSpec = None,
        agent: str | AgentLifecycle | None = "ready",
        seed: int | None = None,
        worker: str = "simulated",
        retries: int = 8,
        max_retry_delay: float = 2.0,
        clock: Clock | Callable[[], float] | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        reap_leases: bool = True,
    ) -> None:
        if not (
            fail is None
            or callable(fail)
            or (isinstance(fail, int | float) and not isinstance(fail, bool) and 0.0 <= fail <= 1.0)
        ):
            raise ValueError(f"fail must be a predicate or a probability in [0, 1], not {fail!r}")
        self.store = store
        self.clock = resolve_clock(clock, store, who="SimulatedProvisioner")
        self.build_seconds = checks.seconds("build_seconds", build_seconds, zero=True)
        self.agent_seconds = checks.seconds("agent_seconds", agent_seconds, zero=True)
        self.fail = fail
        self.agent = None if agent is None else AgentLifecycle(agent)
        self.worker = worker
        self.retries = checks.count("retries", retries)
        self.max_retry_delay = checks.seconds("max_retry_delay", max_retry_delay, most=_MAX_RETRY_DELAY)
        self.lease_seconds = writes.check_lease_seconds(lease_seconds)
        self.reaper = LeaseReaper(store, clock=self.clock, follow_log=False) if reap_leases else None
        # One heartbeat for every build held (not a task group per build).
        self.leases = LeaseKeeper(store, lease_seconds=self.lease_seconds, clock=self.clock)
        self._random = random.Random(seed)
        self.builds_done = 0
        #: Builds whose lease this provisioner lost (their work was stopped).
        self.leases_lost = 0

    def _fails(self, build: Build) -> SimulatedFailure | None:
        if self.fail is None:
            return None
        if callable(self.fail):
            verdict = self.fail(build)
            if isinstance(verdict, SimulatedFailure):
                return verdict
            return SimulatedFailure() if verdict else None
        return SimulatedFailure() if self._random.random() < self.fail else None

    async def run(self) -> None:
        """Claim and complete builds until cancelled (or the store closes)."""
        async with anyio.create_task_group() as tg:
            heard = None
            if self.reaper is not None:
                tg.start_soon(self.reaper.run)
                heard = self.reaper.heard  # it follows the log the claim loop reads
            tg.start_soon(self.leases.run)
            async for build in claims(self.store, self.worker, lease_seconds=self.lease_seconds, heard=heard):
                tg.start_soon(self._complete, build)
            tg.cancel_scope.cancel()  # the store closed: the reaper and the heartbeat too

    async def _complete(self, build: Build) -> None:
        try:
            has_agent = False
            async with self.leases.hold(build) as held:
                await self._sleep(self.build_seconds)
                failure = self._fails(build)
                if failure is not None:
                    await self._finish(
                        held, JobStatus.FAILED, failure.error, has_agent=False, details=failure.details
                    )
                    return
                has_agent = self.agent is not None and build.transition is Transition.START
                await self._finish(held, JobStatus.SUCCEEDED, None, has_agent=has_agent)
            if held.lost:
                self.leases_lost += 1
                return
            if has_agent and self.agent is not None:
                await self._sleep(self.agent_seconds)
                agent = self.agent
                reached = simulated_endpoints() if agent is AgentLifecycle.READY else None
                await self._retrying(
                    lambda: self.store.report_agent(
                        build.workspace_id, agent, lease=held.token, endpoints=reached
                    )
                )
        except (StoreError, CallerError) as exc:
            log.warning("provisioner: build %s: %s", build.build_id, exc)

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await self.clock.sleep_until(self.clock() + seconds)
        else:
            await anyio.lowlevel.checkpoint()

    async def _finish(
        self,
        held: Held,
        status: JobStatus,
        error: str | None,
        *,
        has_agent: bool,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        await held.finish(
            self.store,
            status,
            error,
            has_agent=has_agent,
            details=details,
            retries=self.retries,
            max_delay=self.max_retry_delay,
        )
        self.builds_done += 1

    async def _retrying(self, call: Callable[[], Awaitable[object]], *, until_it_lands: bool = False) -> None:
        await retrying(
            call, retries=self.retries, max_delay=self.max_retry_delay, until_it_lands=until_it_lands
        )
