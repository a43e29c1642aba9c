"""Rules of the pure core that the runtime and the provisioners only execute: configuration
numbers, the backoff schedule, a lease's end, the deadline table, the reconcile decision of a
restarted provisioner, the re-read after a failed write, and three behaviours of the writes
that nothing else pinned (issue 29, item 12)."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import checks, writes
from workspace_lifecycle.backoff import Backoff
from workspace_lifecycle.errors import BuildConflictError, LeaseLostError
from workspace_lifecycle.machine import DEADLINE_REQUEST, REQUEST_TRANSITION, Request
from workspace_lifecycle.reaper import LeaseReaper
from workspace_lifecycle.reconcile import Adopt, Afterwards, Ended, Found, reconcile
from workspace_lifecycle.values import (
    DEADLINE_TRANSITION,
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    Deadline,
    JobStatus,
    Lease,
    Policy,
    Reason,
    Transition,
    Workspace,
    WorkspaceFacts,
    parse_deadline,
    parse_policy,
)

T0 = 2_000_000_000.0
WS = Workspace("w1", "c1", "alice", "dev")

#: Numbers no duration may be: each refused with a sentence naming the parameter.
#: Parameters where ``None`` is a valid value ("never"): that pair is not generated.
NONE_MEANS_NEVER = ("idle_stop_after", "delete_after_stopped", "resync_interval")
BAD_SECONDS = [math.nan, math.inf, -math.inf, True, False, "5", None, b"1", 10**400, 10**5000, -1, 1e300]
BAD_IDS = [
    "nan",
    "inf",
    "-inf",
    "True",
    "False",
    "str",
    "None",
    "bytes",
    "10**400",
    "10**5000",
    "-1",
    "1e300",
]


class TestChecks:
    """One validator of durations and configuration numbers for every constructor."""

    CONSTRUCTORS: dict[str, Callable[[Any], object]] = {  # noqa: RUF012
        "idle_stop_after": lambda v: Policy(idle_stop_after=v),
        "delete_after_stopped": lambda v: Policy(delete_after_stopped=v),
        "build_timeout": lambda v: wl.Lifecycle(wl.MemoryStore(), build_timeout=v),
        "agent_timeout": lambda v: wl.Lifecycle(wl.MemoryStore(), agent_timeout=v),
        "resync_interval": lambda v: wl.Lifecycle(wl.MemoryStore(), resync_interval=v),
        "skew_margin": lambda v: wl.Lifecycle(wl.MemoryStore(), skew_margin=v),
        "build_seconds": lambda v: wl.SimulatedProvisioner(wl.MemoryStore(), build_seconds=v),
        "agent_seconds": lambda v: wl.SimulatedProvisioner(wl.MemoryStore(), agent_seconds=v),
        "max_retry_delay": lambda v: wl.SimulatedProvisioner(wl.MemoryStore(), max_retry_delay=v),
        "lease_seconds": lambda v: wl.SimulatedProvisioner(wl.MemoryStore(), lease_seconds=v),
        "ready_timeout": lambda v: wl.ProcessProvisioner(
            wl.MemoryStore(), root=".", command=["x"], ready_timeout=v
        ),
        "stop_grace": lambda v: wl.ProcessProvisioner(
            wl.MemoryStore(), root=".", command=["x"], stop_grace=v
        ),
        "spawn_grace": lambda v: wl.ProcessProvisioner(
            wl.MemoryStore(), root=".", command=["x"], spawn_grace=v
        ),
        "probe_interval": lambda v: wl.ProcessProvisioner(
            wl.MemoryStore(), root=".", command=["x"], probe_interval=v
        ),
        "retry_delay": lambda v: LeaseReaper(wl.MemoryStore(), retry_delay=v),
        "first": lambda v: Backoff(first=v),
        "cap": lambda v: Backoff(first=0.01, cap=v),
    }

    @pytest.mark.parametrize(
        ("name", "bad"),
        [
            pytest.param(name, bad, id=f"{name}-{bad_id}")
            for name in CONSTRUCTORS
            for bad, bad_id in zip(BAD_SECONDS, BAD_IDS, strict=True)
            if not (bad is None and name in NONE_MEANS_NEVER)
        ],
    )
    def test_every_constructor_refuses_a_bad_duration_naming_it(self, name: str, bad: object) -> None:
        """NaN, infinities, booleans, non-numbers, negatives, 1e300 and ints beyond a float
        (``10**400`` raised ``OverflowError``; NaN ``stop_grace`` was accepted) are one
        ``ValueError`` naming the parameter, at construction."""
        with pytest.raises(ValueError, match=name) as caught:
            self.CONSTRUCTORS[name](bad)
        assert type(caught.value) is ValueError
        assert len(str(caught.value)) < 200  # a sentence, not 400 digits

    @pytest.mark.parametrize("name", list(CONSTRUCTORS))
    def test_every_constructor_takes_a_sound_duration(self, name: str) -> None:
        self.CONSTRUCTORS[name](2)
        self.CONSTRUCTORS[name](0.5)

    def test_zero_only_where_a_pause_may_be_none(self) -> None:
        wl.SimulatedProvisioner(wl.MemoryStore(), build_seconds=0, agent_seconds=0)
        wl.ProcessProvisioner(wl.MemoryStore(), root=".", command=["x"], spawn_grace=0)
        for name in ("build_timeout", "stop_grace", "probe_interval", "lease_seconds", "retry_delay"):
            with pytest.raises(ValueError, match=f"{name} must be a positive"):
                self.CONSTRUCTORS[name](0)

    def test_the_bound_is_said_only_to_a_value_that_broke_it(self) -> None:
        with pytest.raises(ValueError, match=r"at most 3153600000\), not 1000\.\.\.000 \(401 digits\)"):
            checks.seconds("x", 10**400)
        with pytest.raises(ValueError, match=r"^x must be a positive finite number of seconds, not -1$"):
            checks.seconds("x", -1)
        assert checks.seconds("x", checks.MAX_SECONDS) == checks.MAX_SECONDS

    @pytest.mark.parametrize("bad", [-1, True, 1.5, "3", 10**400, None])
    def test_counts(self, bad: object) -> None:
        with pytest.raises(ValueError, match="retries must be a non-negative integer"):
            wl.ProcessProvisioner(wl.MemoryStore(), root=".", command=["x"], retries=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="write_retries must be a non-negative integer"):
            wl.Lifecycle(wl.MemoryStore(), write_retries=bad)  # type: ignore[arg-type]

    @pytest.mark.parametrize("bad", [math.nan, math.inf, 10**400, True, "0"])
    def test_times_are_finite(self, bad: object) -> None:
        with pytest.raises(ValueError, match="start must be a finite number of seconds"):
            wl.VirtualClock(start=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="seconds must be a finite number of seconds"):
            wl.VirtualClock().advance(bad)  # type: ignore[arg-type]

    def test_a_stored_policy_beyond_the_bound_is_a_corrupt_row(self) -> None:
        with pytest.raises(wl.CorruptStateError, match="idle_stop_after"):
            parse_policy(10**400, None, key="c1")


class TestBackoff:
    def test_the_schedule(self) -> None:
        assert list(itertools.islice(Backoff(first=0.05, factor=2, cap=2.0).delays(), 8)) == [
            0.05,
            0.1,
            0.2,
            0.4,
            0.8,
            1.6,
            2.0,
            2.0,
        ]
        assert list(itertools.islice(Backoff(first=0.01, factor=4, cap=0.5).delays(), 4)) == [
            0.01,
            0.04,
            0.16,
            0.5,
        ]

    def test_jitter_changes_the_pauses_not_the_schedule(self) -> None:
        halves = Backoff(first=1.0, cap=4.0).delays(jitter=lambda d: d / 2)
        assert list(itertools.islice(halves, 4)) == [0.5, 1.0, 2.0, 2.0]

    def test_a_fresh_iterator_starts_over(self) -> None:
        schedule = Backoff(first=0.1, cap=1.0)
        used = schedule.delays()
        next(used), next(used)
        assert next(schedule.delays()) == 0.1
        assert schedule.after(0.8) == 1.0

    @pytest.mark.parametrize("bad", [0.5, 101, math.nan, True, "2"])
    def test_a_bad_factor(self, bad: object) -> None:
        with pytest.raises(ValueError, match="factor must be a number from 1 to 100"):
            Backoff(first=0.1, factor=bad)  # type: ignore[arg-type]

    def test_cap_below_first(self) -> None:
        with pytest.raises(ValueError, match="cap"):
            Backoff(first=2.0, cap=1.0)


class TestLease:
    def test_due_at_its_expiry(self) -> None:
        lease = Lease("b1", "w1", "w", "t", T0)
        assert not lease.due(T0 - 0.001)
        assert lease.due(T0) and lease.due(T0 + 1)
        assert lease.renewed(T0 + 30).due(T0 + 29.999) is False

    def test_a_build_s_lease(self) -> None:
        build = Build("b1", "w1", 1, Transition.START, JobStatus.RUNNING, worker="w")
        assert build.lease is None
        claimed = attrs.evolve(build, lease_token="t", lease_expires_at=T0)
        assert claimed.lease == Lease("b1", "w1", "w", "t", T0)
        assert attrs.evolve(claimed, lease_expires_at=None).lease is None

    def test_finished_under(self) -> None:
        build = Build(
            "b1", "w1", 1, Transition.START, JobStatus.RUNNING, lease_token="t", lease_expires_at=T0
        )
        assert not build.finished_under("t")  # still in flight
        done = attrs.evolve(build, status=JobStatus.SUCCEEDED, lease_expires_at=None)
        assert done.finished_under("t") and not done.finished_under("u")
        reaped = attrs.evolve(done, status=JobStatus.FAILED, lease_token=None)
        assert not reaped.finished_under("t")

    def test_the_writes_agree_on_the_boundary(self) -> None:
        """A fencing check and an expiry use the same comparison: at the expiry the lease is
        over for both (the worker's writes refused, the reaper's expiry allowed)."""
        build = Build(
            "b1", "w1", 1, Transition.START, JobStatus.RUNNING, lease_token="t", lease_expires_at=T0
        )
        assert writes.expire_lease(build, WS, "t", at=T0 - 0.001) is None
        writes.renew_lease(build, WS, "t", at=T0 - 0.001, lease_seconds=30)
        assert writes.expire_lease(build, WS, "t", at=T0) is not None
        with pytest.raises(LeaseLostError, match="expired"):
            writes.renew_lease(build, WS, "t", at=T0, lease_seconds=30)


class TestDeadlineTable:
    def test_every_deadline_reason_has_one_transition_and_request(self) -> None:
        assert set(DEADLINE_TRANSITION) == set(Reason) - {Reason.REQUEST}
        assert DEADLINE_TRANSITION == {Reason.IDLE: Transition.STOP, Reason.RETENTION: Transition.DELETE}
        assert DEADLINE_REQUEST == {Reason.IDLE: Request.STOP, Reason.RETENTION: Request.DELETE}
        for reason, request in DEADLINE_REQUEST.items():
            assert REQUEST_TRANSITION[request] is DEADLINE_TRANSITION[reason]
            assert Deadline(T0, reason).transition is DEADLINE_TRANSITION[reason]

    def test_a_request_is_no_deadline_reason(self) -> None:
        with pytest.raises(ValueError):
            Deadline(T0, Reason.REQUEST)
        with pytest.raises(wl.CorruptStateError, match="deadline_reason"):
            parse_deadline(T0, "request", key="w1")

    @pytest.mark.parametrize("reason", list(DEADLINE_TRANSITION))
    def test_a_fired_deadline_builds_its_table_transition(self, reason: Reason) -> None:
        start = Build("b1", "w1", 1, Transition.START, JobStatus.SUCCEEDED)
        armed = Deadline(T0, reason)
        facts = WorkspaceFacts(attrs.evolve(WS, deadline=armed), start, None, seq=3)
        write = writes.fire_deadline(
            facts, chat=Chat("c1", "alice", "w1"), expected=armed, build_id="b2", at=T0
        )
        assert write is not None and write.build is not None
        assert write.build.transition is DEADLINE_TRANSITION[reason] and write.build.reason is reason


def _facts(
    *, deleted: bool, build: tuple[int, JobStatus] | None, agent: tuple[int, AgentLifecycle] | None
) -> WorkspaceFacts:
    latest = None
    if build is not None:
        number, status = build
        latest = Build(f"b{number}", "w1", number, Transition.START, status, lease_token=f"t{number}")
    stored = Agent("w1", agent[0], agent[1]) if agent is not None else None
    return WorkspaceFacts(attrs.evolve(WS, deleted=deleted), latest, stored, seq=9)


#: Every combination of stored facts and what the host shows, for a process of build 2.
BUILDS = [None] + [(n, s) for n in (1, 2, 3) for s in JobStatus]
AGENTS = [None] + [(n, lc) for n in (1, 2) for lc in AgentLifecycle]
COMBINATIONS = list(itertools.product([False, True], BUILDS, AGENTS, [False, True], [None, "rec"]))


class TestReconcile:
    """:func:`reconcile` over every combination: the rule the restarted provisioner executes."""

    def test_every_combination(self) -> None:
        """All 3,192 combinations (deleted, latest build, agent, alive, recorded lease)."""
        for combination in COMBINATIONS:
            self.check(*combination)

    @staticmethod
    def check(
        deleted: bool,
        build: tuple[int, JobStatus] | None,
        agent: tuple[int, AgentLifecycle] | None,
        alive: bool,
        lease: str | None,
    ) -> None:
        facts = _facts(deleted=deleted, build=build, agent=agent)
        decision = reconcile(facts, Found(alive=alive, build_number=2, lease=lease))
        current = build == (2, JobStatus.SUCCEEDED) and not deleted
        ours = agent is not None and agent[0] == 2
        if not alive:
            assert isinstance(decision, Ended)
            if current and ours and agent is not None and agent[1].was_ready:  # ready, or disconnected
                assert decision == Ended(AgentLifecycle.OFF, "t2")
            elif current and ours and agent is not None and agent[1].pending:
                assert decision == Ended(AgentLifecycle.START_ERROR, "t2")
            else:
                assert decision == Ended()  # nothing to report: not its agent, or already past
            return
        assert isinstance(decision, Adopt)
        # The recorded token wins; a record older than leases takes its build's stored one.
        assert decision.lease == (lease or ("t2" if build is not None and build[0] == 2 else None))
        assert decision.ready == (ours and agent is not None and agent[1].was_ready)
        answering = decision.ready and agent is not None and agent[1] is AgentLifecycle.READY
        newer_in_flight = build is not None and build[0] == 3 and build[1].in_progress
        if deleted or not (current or newer_in_flight):
            assert decision.afterwards is Afterwards.END
        elif ours and not answering:  # not ready yet, or no longer (disconnected): probe again
            assert decision.afterwards is Afterwards.PROBE
        else:
            assert decision.afterwards is Afterwards.WATCH

    def test_no_ready_report_and_no_report_for_a_deleted_workspace(self) -> None:
        for deleted, build, agent, alive, lease in COMBINATIONS:
            decision = reconcile(_facts(deleted=deleted, build=build, agent=agent), Found(alive, 2, lease))
            if isinstance(decision, Ended):
                assert decision.report is not AgentLifecycle.READY
                assert not (deleted and decision.report is not None)
            else:
                assert not (deleted and decision.afterwards is not Afterwards.END)


class TestAfterAFailedWrite:
    """The re-read after a write that may have committed, decided in the core."""

    def test_build_moved_on(self) -> None:
        one = Build("b1", "w1", 1, Transition.START, JobStatus.SUCCEEDED)
        assert not writes.build_moved_on(WorkspaceFacts(WS, one, None, seq=1), 1)
        assert not writes.build_moved_on(WorkspaceFacts(WS, None, None, seq=1), 0)
        assert writes.build_moved_on(WorkspaceFacts(WS, attrs.evolve(one, number=2), None, seq=1), 1)
        assert writes.build_moved_on(WorkspaceFacts(attrs.evolve(WS, deleted=True), one, None, seq=1), 1)

    def test_rebound(self) -> None:
        assert writes.rebound(None, None) is None
        assert writes.rebound(Chat("c1", "alice"), None) is None
        assert writes.rebound(Chat("c1", "alice", "w0"), "w0") is None
        assert writes.rebound(Chat("c1", "alice", "w1"), "w0") == "w1"
        assert writes.rebound(Chat("c1", "alice", "w1"), None) == "w1"

    def test_create_landed(self) -> None:
        first = Build("b1", "w1", 1, Transition.START, JobStatus.PENDING)
        assert writes.create_landed(WorkspaceFacts(WS, first, None, seq=1), "dev")
        assert not writes.create_landed(WorkspaceFacts(WS, first, None, seq=1), "other")
        assert not writes.create_landed(WorkspaceFacts(WS, attrs.evolve(first, number=2), None, seq=1), "dev")
        assert not writes.create_landed(WorkspaceFacts(WS, None, None, seq=1), "dev")


class TestUnpinnedBehaviours:
    """Issue 29, item 12: each fails on the mutant named in its docstring."""

    def test_a_newer_build_s_lease_cannot_report_the_older_build_s_agent(self) -> None:
        """Mutant: ``report_agent`` drops ``latest.number != agent.build_number``."""
        agent = Agent("w1", 1, AgentLifecycle.READY)
        newer = Build(
            "b2", "w1", 2, Transition.STOP, JobStatus.RUNNING, lease_token="t2", lease_expires_at=T0 + 30
        )
        with pytest.raises(LeaseLostError, match="newer build"):
            writes.report_agent(agent, WS, AgentLifecycle.OFF, at=T0, latest=newer, lease="t2")
        # The build that made it reports as before.
        made = Build("b1", "w1", 1, Transition.START, JobStatus.SUCCEEDED, lease_token="t1")
        write = writes.report_agent(agent, WS, AgentLifecycle.OFF, at=T0, latest=made, lease="t1")
        assert write.agent == Agent("w1", 1, AgentLifecycle.OFF)

    @pytest.mark.parametrize("status", [s for s in JobStatus if s is not JobStatus.PENDING])
    def test_claim_refuses_a_build_that_is_not_pending(self, status: JobStatus) -> None:
        """Mutant: ``claim_build`` drops its pending check (only the adapters' filter kept it)."""
        build = Build("b1", "w1", 1, Transition.START, status, worker="first", lease_token="t1")
        with pytest.raises(BuildConflictError, match="not pending"):
            writes.claim_build(build, WS, worker="second", at=T0, token="t2", lease_seconds=30)

    @pytest.mark.parametrize("reason", list(DEADLINE_TRANSITION))
    def test_a_succeeded_delete_clears_an_armed_deadline_itself(self, reason: Reason) -> None:
        """Mutant: ``finish_build`` of a succeeded delete keeps the workspace's deadline
        (relying on the request that queued it to have disarmed it)."""
        armed = attrs.evolve(WS, deadline=Deadline(T0 + 60, reason))
        delete = Build(
            "b2", "w1", 2, Transition.DELETE, JobStatus.RUNNING, lease_token="t2", lease_expires_at=T0 + 30
        )
        write = writes.finish_build(
            delete,
            armed,
            JobStatus.SUCCEEDED,
            None,
            has_agent=False,
            at=T0,
            policy=Policy(60, 60),
            lease="t2",
        )
        assert write.workspace is not None
        assert write.workspace.deleted and write.workspace.deadline is None


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[wl.Store]:
    async with wl.open_store(store_url, clock=wl.VirtualClock(start=T0)) as s:
        yield s


@pytest.mark.anyio
class TestUnpinnedBehavioursOnEveryStore:
    async def test_a_newer_build_s_lease_cannot_report_the_older_build_s_agent(self, store: wl.Store) -> None:
        """The workspace's agent was made by build 1; build 2 (a stop) is claimed: its valid
        lease cannot change build 1's agent, and nothing is written."""
        await store.register_chat("c1", "alice")
        ws = (await store.create_workspace("c1", "dev", expected_workspace_id=None)).facts.workspace_id
        first = await store.claim_build("w", lease_seconds=30)
        assert first is not None
        await store.finish_build(first.build_id, JobStatus.SUCCEEDED, has_agent=True, lease=first.lease_token)
        await store.report_agent(ws, AgentLifecycle.READY, lease=first.lease_token)
        assert (await store.request_build(ws, Transition.STOP, expected_build_number=1)).fired
        stop = await store.claim_build("w", lease_seconds=30)
        assert stop is not None and stop.number == 2
        before = await store.workspace_facts(ws), await store.head()
        with pytest.raises(LeaseLostError, match="newer build"):
            await store.report_agent(ws, AgentLifecycle.OFF, lease=stop.lease_token)
        assert (await store.workspace_facts(ws), await store.head()) == before
        facts = before[0]
        assert facts.agent == Agent(ws, 1, AgentLifecycle.READY)

    async def test_a_claimed_build_is_not_claimed_again(self, store: wl.Store) -> None:
        await store.register_chat("c1", "alice")
        await store.create_workspace("c1", "dev", expected_workspace_id=None)
        assert await store.claim_build("w1", lease_seconds=30) is not None
        assert await store.claim_build("w2", lease_seconds=30) is None
