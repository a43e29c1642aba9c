"""The provisioner conformance kit: :func:`check_provisioner` (exported by :mod:`.testing`).

It runs *your* provisioner against *your* store through an observing wrapper (every call the
provisioner makes is recorded; the kit can hold a call or cut a build's renewals off, as a slow
network would) and drives one workspace through the life a chat gives it, checking the
provisioner's side of the protocol at each step. A :class:`~workspace_lifecycle.reaper.LeaseReaper`
of the kit's own runs on the unwrapped store throughout.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
import attrs

from . import writes
from .adapters.base import Store
from .adapters.driver import Plan, ReadKind, Retry
from .errors import LeaseLostError, StoreUnavailableError
from .faults import FaultyStore
from .machine import derive_state
from .reaper import LeaseReaper
from .values import AgentLifecycle, Build, JobStatus, Transition, WorkspaceFacts

__all__ = ["LeasedProvisionerFactory", "ProvisionerCheckError", "ProvisionerReport", "check_provisioner"]

#: ``factory(store, worker=..., lease_seconds=...)``: an async context manager that runs your
#: provisioner on ``store`` as ``worker``, claiming under leases of ``lease_seconds``.
LeasedProvisionerFactory = Callable[..., AbstractAsyncContextManager[Any]]

T = TypeVar("T")

_KIT_CHAT = "provisioner-kit"
_KIT_OWNER = "provisioner-kit"
_WORKER = "kit-worker"


class ProvisionerCheckError(AssertionError):
    """The provisioner broke a rule of the protocol; the message says which, and what it did."""


@attrs.define
class ProvisionerReport:
    """What the kit saw the provisioner do (one workspace through its life)."""

    builds: list[str] = attrs.Factory(list)  # in the order they were claimed
    renewals: dict[str, int] = attrs.Factory(lambda: defaultdict(int))
    refused_after_loss: int = 0  # writes on the lost build that the store refused
    seconds: float = 0.0


@attrs.define(eq=False)
class _Call:
    method: str
    build_id: str | None
    workspace_id: str | None
    lease: str | None
    outcome: str  # "ok", or the exception's class name


class _Observed(FaultyStore):
    """The store as the provisioner sees it: every provisioner call recorded; a build's
    renewals can be cut off and its finish held back."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner, writes=())
        self.log: list[_Call] = []
        self.claims: dict[str, Build] = {}
        self.cut_off: set[str] = set()  # build ids whose renewals fail (a partition)
        self.hold_finish: dict[str, anyio.Event] = {}  # build id -> released when set
        self.finishes_held: dict[str, anyio.Event] = {}  # build id -> set once a finish waits
        self.noted = anyio.Event()  # set (and replaced) whenever a call is recorded

    def _note(
        self, method: str, build_id: str | None, ws: str | None, lease: str | None, outcome: str
    ) -> None:
        self.log.append(_Call(method, build_id, ws, lease, outcome))
        self.noted.set()
        self.noted = anyio.Event()

    async def seen(self, found: Callable[[list[_Call]], bool]) -> None:
        """Until the provisioner's calls satisfy ``found`` (a call's effect is in the store
        before the call has returned to the provisioner: wait for its return)."""
        while not found(self.log):
            await self.noted.wait()

    async def _write(self, plan: Plan[T], call: Callable[[], Awaitable[T | Retry]]) -> T | Retry:
        """Every provisioner write, recorded by what it names (the build or workspace it reads,
        the lease it passes); a cut-off renewal fails and a held finish waits first."""
        op, key = plan.op, plan.read.key
        build_id = key if plan.read.kind in (ReadKind.BUILD, ReadKind.LOG) else None
        ws = key if plan.read.kind is ReadKind.WORKSPACE else None
        if op == "renew_lease" and key in self.cut_off:
            self._note(op, build_id, ws, plan.lease, "cut off")
            raise StoreUnavailableError("provisioner kit: this build's renewals are cut off (a partition)")
        if op == "finish_build" and (held := self.hold_finish.get(key)) is not None:
            self.finishes_held.setdefault(key, anyio.Event()).set()
            await held.wait()
        try:
            result = await super()._write(plan, call)
        except Exception as exc:
            if op in _RECORDED:
                self._note(op, build_id, ws, plan.lease, type(exc).__name__)
            raise
        if op == "claim_build" and isinstance(result, Build):
            self.claims[result.build_id] = result
            self._note(op, result.build_id, result.workspace_id, result.lease_token, "ok")
        elif op in _RECORDED and not isinstance(result, Retry):
            self._note(op, build_id, ws, plan.lease, "ok")
        return result


#: The provisioner's writes the kit records whatever their outcome (a claim: when it got one).
_RECORDED = frozenset({"renew_lease", "finish_build", "report_agent"})


async def check_provisioner(
    factory: LeasedProvisionerFactory,
    store: Store,
    *,
    lease_seconds: float = 1.0,
    step_timeout: float = 30.0,
) -> ProvisionerReport:
    """Check that the provisioner ``factory`` makes follows the provisioner protocol on ``store``
    (an open, empty store); raise :class:`ProvisionerCheckError` naming the first rule broken.

    One workspace goes through create, stop, start, delete, with two faults on the way:

    1. **create**: its start build is claimed once, by the provisioner's worker, and finished
       ``succeeded`` with the claim's lease token; the agent is reported with the token too;
    2. **stop** and **start** again: each build claimed once and finished with its token;
    3. **renewal**: the next finish is held back for three leases; the provisioner must renew
       the lease meanwhile (the kit's reaper would fail the build otherwise) and then finish;
    4. **lost lease**: the next start build's renewals are cut off and its finish held back
       until the lease ran out and the kit's reaper failed the build; then everything the
       provisioner still does for that build must be refused by the store (it passed the token)
       and it must give up on it: no write of it lands, the build stays failed;
    5. **retry** and **delete**: the provisioner still serves builds; the delete build
       deletes the workspace.

    ``lease_seconds`` is passed to the factory (keep it short: the check waits several
    leases); ``step_timeout`` bounds each step. Typical use, in a pytest test::

        async def test_my_provisioner(tmp_path):
            async with wl.open_store(f"sqlite:///{tmp_path}/kit.db") as store:
                await check_provisioner(
                    lambda store, *, worker, lease_seconds: MyProvisioner(
                        store, worker=worker, lease_seconds=lease_seconds
                    ),
                    store,
                )
    """
    writes.check_lease_seconds(lease_seconds)
    observed = _Observed(store)
    report = ProvisionerReport()
    started = anyio.current_time()
    failure: ProvisionerCheckError | None = None
    async with LeaseReaper(store), factory(observed, worker=_WORKER, lease_seconds=lease_seconds):
        try:
            await _Kit(store, observed, report, lease_seconds, step_timeout).run()
        except ProvisionerCheckError as exc:  # raised as itself, not inside an exception group
            failure = exc
    if failure is not None:
        raise failure
    report.seconds = anyio.current_time() - started
    return report


@attrs.define
class _Kit:
    store: Store
    observed: _Observed
    report: ProvisionerReport
    lease_seconds: float
    timeout: float
    workspace_id: str = ""

    async def run(self) -> None:
        await self.store.register_chat(_KIT_CHAT, _KIT_OWNER)
        outcome = await self.store.create_workspace(_KIT_CHAT, "kit", expected_workspace_id=None)
        self.workspace_id = outcome.facts.workspace_id
        created = await self._served(Transition.START, "create")
        await self._agent_reported(created)
        await self._request(Transition.STOP, "stop")
        await self._served(Transition.STOP, "stop")
        await self._request(Transition.START, "start")
        await self._served(Transition.START, "start again")
        await self._renewal()
        await self._lost_lease()
        await self._request(Transition.START, "retry after the lost lease")
        await self._served(Transition.START, "retry after the lost lease")
        await self._request(Transition.DELETE, "delete")
        await self._served(Transition.DELETE, "delete")
        facts = await self.store.workspace_facts(self.workspace_id)
        if not facts.workspace.deleted:
            raise ProvisionerCheckError("delete: the delete build succeeded but the workspace is not deleted")

    # --- steps ----------------------------------------------------------------------------

    async def _request(self, transition: Transition, step: str) -> Build:
        facts = await self.store.workspace_facts(self.workspace_id)
        number = facts.latest_build.number if facts.latest_build else 0
        outcome = await self.store.request_build(self.workspace_id, transition, expected_build_number=number)
        if not outcome.fired or outcome.facts.latest_build is None:
            state = derive_state(outcome.facts).value
            raise ProvisionerCheckError(
                f"{step}: could not request a {transition.value} build (state {state})"
            )
        return outcome.facts.latest_build

    async def _served(
        self, transition: Transition, step: str, *, status: JobStatus = JobStatus.SUCCEEDED
    ) -> Build:
        """Wait for the latest build to finish; check it was claimed once, by the worker, and
        finished with the claim's token."""
        facts = await self._until(
            lambda f: f.latest_build is not None and f.latest_build.status.finished, step
        )
        build = facts.latest_build
        assert build is not None
        if build.transition is not transition:
            raise ProvisionerCheckError(
                f"{step}: expected a {transition.value} build, found {build.transition.value}"
            )
        if build.status is not status:
            raise ProvisionerCheckError(
                f"{step}: the {transition.value} build finished {build.status.value}"
                f" ({build.error or 'no error'}), not {status.value}"
            )
        claims = [c for c in self.observed.log if c.method == "claim_build" and c.build_id == build.build_id]
        if len(claims) != 1:
            raise ProvisionerCheckError(
                f"{step}: build {build.build_id} was claimed {len(claims)} times, not once"
            )
        token = claims[0].lease

        def finished(log: list[_Call]) -> bool:
            return any(
                c.method == "finish_build" and c.build_id == build.build_id and c.outcome == "ok" for c in log
            )

        with anyio.move_on_after(self.timeout):
            await self.observed.seen(finished)
        finishes = [
            c for c in self.observed.log if c.method == "finish_build" and c.build_id == build.build_id
        ]
        if status is JobStatus.SUCCEEDED and not any(
            c.outcome == "ok" and c.lease == token for c in finishes
        ):
            raise ProvisionerCheckError(
                f"{step}: build {build.build_id} was not finished with its lease token"
                " (pass lease=build.lease_token to finish_build)"
            )
        self.report.builds.append(build.build_id)
        return build

    async def _agent_reported(self, build: Build) -> None:
        facts = await self._until(
            lambda f: f.agent is not None and f.agent.lifecycle is not AgentLifecycle.CREATED,
            "create: the agent report",
        )

        def reported(log: list[_Call]) -> list[_Call]:
            return [
                c
                for c in log
                if c.method == "report_agent" and c.workspace_id == self.workspace_id and c.outcome == "ok"
            ]

        with anyio.move_on_after(self.timeout):
            await self.observed.seen(lambda log: bool(reported(log)))
        reports = reported(self.observed.log)
        if not reports or any(c.lease != build.lease_token for c in reports):
            raise ProvisionerCheckError(
                "create: the agent was reported without the start build's lease token"
                " (pass lease=build.lease_token to report_agent)"
            )
        assert facts.agent is not None

    async def _renewal(self) -> None:
        step = "renewal"
        await self._request(Transition.STOP, step)
        await self._served(Transition.STOP, step)
        build = await self._request(Transition.START, step)
        release = self.observed.hold_finish[build.build_id] = anyio.Event()
        try:
            await self._claimed(build, step)
            await anyio.sleep(3 * self.lease_seconds)  # its finish waits; its heartbeat must not
        finally:
            release.set()
        done = await self._served(Transition.START, step)
        renewals = sum(
            1
            for c in self.observed.log
            if c.method == "renew_lease" and c.build_id == done.build_id and c.outcome == "ok"
        )
        self.report.renewals[done.build_id] = renewals
        if renewals < 2:
            raise ProvisionerCheckError(f"{step}: the lease was renewed {renewals} times in three leases")

    async def _lost_lease(self) -> None:
        step = "lost lease"
        await self._request(Transition.STOP, step)
        await self._served(Transition.STOP, step)
        build = await self._request(Transition.START, step)
        self.observed.cut_off.add(build.build_id)
        release = self.observed.hold_finish[build.build_id] = anyio.Event()
        try:
            claimed = await self._claimed(build, step)
            await self._until(
                lambda f: f.latest_build is not None and f.latest_build.status is JobStatus.FAILED, step
            )
        finally:
            lost_at = len(self.observed.log)  # what follows, the provisioner did after the loss
            self.observed.cut_off.discard(build.build_id)
            release.set()
        await anyio.sleep(2 * self.lease_seconds)  # what the provisioner still does for the build
        # Its agent reports: with its token, or with none (no other build of the workspace is
        # in flight until the retry, and an unfenced report would land).
        after = [
            c
            for c in self.observed.log[lost_at:]
            if c.build_id == build.build_id
            or (
                c.method == "report_agent"
                and (
                    c.lease == claimed.lease_token
                    or (c.lease is None and c.workspace_id == self.workspace_id)
                )
            )
        ]
        landed = [c for c in after if c.outcome == "ok"]
        if landed:
            raise ProvisionerCheckError(
                f"{step}: after its lease was lost, {landed[0].method} landed for the build"
            )
        unfenced = [c for c in after if c.lease != claimed.lease_token]
        if unfenced:
            raise ProvisionerCheckError(
                f"{step}: {unfenced[0].method} for the lost build carried no lease token"
            )
        if any(c.outcome not in (LeaseLostError.__name__,) for c in after if c.method != "renew_lease"):
            raise ProvisionerCheckError(
                f"{step}: the store did not refuse the lost build's writes as LeaseLostError"
            )
        renewals = [c for c in after if c.method == "renew_lease"]
        if len(renewals) > 1:
            raise ProvisionerCheckError(
                f"{step}: the provisioner renewed a lost lease {len(renewals)} times: it must stop at the first refusal"
            )
        self.report.refused_after_loss = len(after)
        stored = await self.store.get_build(build.build_id)
        if stored.status is not JobStatus.FAILED:
            raise ProvisionerCheckError(f"{step}: the lost build ended {stored.status.value}, not failed")

    # --- waiting ----------------------------------------------------------------------------

    async def _claimed(self, build: Build, step: str) -> Build:
        """The build as the provisioner's worker claimed it (waiting for its claim to return)."""

        def claimed(log: list[_Call]) -> bool:
            return any(c.method == "claim_build" and c.build_id == build.build_id for c in log)

        with anyio.move_on_after(self.timeout):
            await self.observed.seen(claimed)
        found = self.observed.claims.get(build.build_id)
        if found is None:
            state = derive_state(await self.store.workspace_facts(self.workspace_id)).value
            raise ProvisionerCheckError(
                f"{step}: build {build.build_id} was not claimed within {self.timeout:g}s (the workspace is {state})"
            )
        return found

    async def _until(self, condition: Callable[[WorkspaceFacts], bool], step: str) -> WorkspaceFacts:
        """The workspace's facts once ``condition`` holds, woken by the store's events."""
        facts = None
        with anyio.move_on_after(self.timeout):
            while True:
                cursor = await self.store.head()
                facts = await self.store.workspace_facts(self.workspace_id)
                if condition(facts):
                    return facts
                await self.store.wait_for_change(cursor)
        state = derive_state(facts).value if facts is not None else "unknown"
        raise ProvisionerCheckError(
            f"{step}: nothing happened within {self.timeout:g}s (the workspace is {state})"
        )
