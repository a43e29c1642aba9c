"""Random histories between turns: activity, requests, builds ending and clock steps.

A Hypothesis ``RuleBasedStateMachine`` drives two runtimes (replicas) over one store (memory,
and fewer histories on a SQLite file) on a
:class:`~workspace_lifecycle.VirtualClock`, with the provisioner played by the rules themselves
(claims and finishes in any order, with any outcome). After every step, once the runtimes have
acted on what they know, it checks against the whole event log:

* no deadline fires early: every build fired for a deadline (``reason`` idle or retention)
  consumed the deadline armed for its workspace, of its kind, due at the time it was fired;
* every deadline fires at most once: a fired deadline is disarmed in the same write, and no
  second build is fired for it;
* every passed deadline fires: once the runtimes settle, no armed deadline is due;
* a warning (``deadline_approaching``) is written at most once per armed deadline, never before
  its time nor after the deadline, and never for a deadline that was pushed or disarmed: it
  names the deadline armed at that moment in the log;
* the state derived from the rows equals the state reached by applying the log.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import anyio
import attrs
from anyio.from_thread import start_blocking_portal
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, EventKind, JobStatus, Reason, WorkspaceState
from workspace_lifecycle.adapters.sqlite import SQLiteStore
from workspace_lifecycle.deadlines import due_action
from workspace_lifecycle.testing import applied_states

OWNER = "alice"
CHATS = ("c1", "c2")
IDLE, RETAIN, WARN = 60.0, 600.0, 10.0
POLICIES = (
    wl.Policy(idle_stop_after=IDLE),
    wl.Policy(idle_stop_after=IDLE, delete_after_stopped=RETAIN),
    wl.Policy(delete_after_stopped=RETAIN),
    wl.Policy(),
    wl.Policy(idle_stop_after=IDLE, delete_after_stopped=RETAIN, warn_before=WARN),
    wl.Policy(idle_stop_after=IDLE, warn_before=WARN),
)
#: Clock steps around the deadlines and their warnings: just before, at, just after, far past.
STEPS = (
    0.5,
    1.0,
    WARN,
    IDLE / 2,
    IDLE - WARN,
    IDLE - WARN / 2,
    IDLE - 0.001,
    IDLE,
    IDLE + 0.001,
    RETAIN,
    2 * RETAIN,
)


class BetweenTurns(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = wl.VirtualClock()
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(start_blocking_portal("asyncio"))
        self.store = self.open_store()
        self._stack.enter_context(self.portal.wrap_async_context_manager(self.store))
        self.replicas = [
            self._stack.enter_context(
                self.portal.wrap_async_context_manager(
                    wl.Lifecycle(self.store, clock=self.clock, policy=POLICIES[4], build_timeout=3600)
                )
            )
            for _ in range(2)
        ]
        for chat in CHATS:
            self.call(self.replicas[0].register_chat, chat, owner=OWNER)

    def open_store(self) -> wl.Store:
        return wl.MemoryStore(clock=self.clock)

    def teardown(self) -> None:
        self._stack.close()

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def bounded() -> Any:
            with anyio.fail_after(10):
                return await fn(*args, **kwargs)

        return self.portal.call(bounded)

    # --- the rules -----------------------------------------------------------------------------

    @rule(chat=st.sampled_from(CHATS), replica=st.integers(0, 1))
    def create(self, chat: str, replica: int) -> None:
        self.call(self.replicas[replica].create_workspace, chat, owner=OWNER, name="dev", wait=False)

    @rule(
        chat=st.sampled_from(CHATS),
        replica=st.integers(0, 1),
        verb=st.sampled_from(["start_workspace", "stop_workspace", "ensure_running", "delete_workspace"]),
    )
    def request(self, chat: str, replica: int, verb: str) -> None:
        self.call(getattr(self.replicas[replica], verb), chat, owner=OWNER, wait=False)

    @rule(chat=st.sampled_from(CHATS), replica=st.integers(0, 1))
    def touch(self, chat: str, replica: int) -> None:
        self.call(self.replicas[replica].touch, chat, owner=OWNER)

    @rule(chat=st.sampled_from(CHATS), policy=st.sampled_from(POLICIES))
    def set_policy(self, chat: str, policy: wl.Policy) -> None:
        self.call(self.replicas[0].register_chat, chat, owner=OWNER, policy=policy)

    @rule(
        status=st.sampled_from([JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED]),
        ready=st.booleans(),
    )
    def provision(self, status: JobStatus, ready: bool) -> None:
        """The provisioner ends the oldest pending build (and its agent may report ready)."""
        build = self.call(self.store.claim_build, "rules")
        if build is None:
            return
        self.call(self.store.finish_build, build.build_id, status)
        if ready and status is JobStatus.SUCCEEDED and build.transition is wl.Transition.START:
            self.call(self.store.report_agent, build.workspace_id, AgentLifecycle.READY)

    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def nothing(self) -> None:
        """A step where only the runtimes act (what is due fires)."""

    # --- the checks --------------------------------------------------------------------------

    def _settle(self) -> list[wl.StoreEvent]:
        """Let the runtimes act on everything they can know (bounded); return the whole log."""

        async def settle() -> list[wl.StoreEvent]:
            with anyio.fail_after(5):
                while True:
                    for _ in range(20):
                        await anyio.lowlevel.checkpoint()
                    armed = await self.store.armed_deadlines()
                    now = self.clock()
                    due = [d for d in armed.deadlines.values() if due_action(d, now) is not None]
                    if not due:
                        return list(await self.store.read_events(0, 1_000_000))
                    await anyio.sleep(0.001)

        try:
            return self.portal.call(settle)
        except TimeoutError:
            raise AssertionError("a passed deadline was never fired") from None

    @invariant()
    def deadlines_fire_once_and_never_early(self) -> None:
        events = self._settle()
        armed: dict[str, wl.Deadline | None] = {}
        for event in events:
            if event.kind is EventKind.DEADLINE_SET:
                armed[event.workspace_id] = event.armed
            elif event.kind is EventKind.BUILD_QUEUED and event.reason in (Reason.IDLE, Reason.RETENTION):
                deadline = armed.get(event.workspace_id)
                assert deadline is not None, f"event {event.seq}: {event.reason} build with no deadline armed"
                assert deadline.reason is event.reason, f"event {event.seq}: fired for the wrong deadline"
                assert deadline.at <= event.at, f"event {event.seq}: fired {deadline.at - event.at}s early"
                armed[event.workspace_id] = None  # consumed: a second build needs a new deadline

        now = self.clock()
        for workspace_id, deadline in armed.items():
            assert deadline is None or not deadline.due(now) or self._deleted(workspace_id), (
                f"workspace {workspace_id}: deadline {deadline} passed and did not fire"
            )

    @invariant()
    def warnings_once_and_never_for_a_pushed_deadline(self) -> None:
        events = self._settle()
        armed: dict[str, wl.Deadline | None] = {}
        for event in events:
            if event.kind is EventKind.DEADLINE_SET:
                armed[event.workspace_id] = event.armed
            elif event.kind is EventKind.BUILD_QUEUED:
                armed[event.workspace_id] = None  # a build disarms (its end arms the next one)
            elif event.kind is EventKind.DEADLINE_APPROACHING:
                current = armed.get(event.workspace_id)
                assert current is not None, f"event {event.seq}: a warning with no deadline armed"
                assert not current.warned, f"event {event.seq}: a second warning for {current}"
                warned = event.armed
                assert warned is not None and warned == attrs.evolve(current, warned=True), (
                    f"event {event.seq}: a warning for {warned}, not the armed {current} (pushed?)"
                )
                assert current.warn_at is not None and current.warn_at <= event.at < current.at, (
                    f"event {event.seq}: warned at {event.at} for {current}"
                )
                armed[event.workspace_id] = warned

    def _deleted(self, workspace_id: str) -> bool:
        return bool(self.call(self.store.workspace_facts, workspace_id).workspace.deleted)

    @invariant()
    def derived_equals_applied(self) -> None:
        events = self._settle()
        applied = applied_states(events)
        for workspace_id, state in applied.items():
            derived = wl.derive_state(self.call(self.store.workspace_facts, workspace_id))
            assert derived is state, f"workspace {workspace_id}: derived {derived}, applied {state}"

    @invariant()
    def stored_deadlines_match_the_log(self) -> None:
        events = self._settle()
        logged: dict[str, wl.Deadline] = {}
        for event in events:
            if event.kind is EventKind.DEADLINE_SET:
                if event.armed is None:
                    logged.pop(event.workspace_id, None)
                else:
                    logged[event.workspace_id] = event.armed
            elif event.kind is EventKind.DEADLINE_APPROACHING:
                assert event.armed is not None
                logged[event.workspace_id] = event.armed  # the same deadline, marked warned
        assert dict(self.call(self.store.armed_deadlines).deadlines) == logged
        for workspace_id in logged:
            state = wl.derive_state(self.call(self.store.workspace_facts, workspace_id))
            assert state in (WorkspaceState.RUNNING, WorkspaceState.AGENT_READY, WorkspaceState.STOPPED)


TestBetweenTurns = BetweenTurns.TestCase
TestBetweenTurns.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


class BetweenTurnsOnSQLite(BetweenTurns):
    """The same histories on a SQLite file (its writer thread, group commit, rowid log)."""

    def open_store(self) -> wl.Store:
        folder = self._stack.enter_context(tempfile.TemporaryDirectory())
        return SQLiteStore(Path(folder) / "turns.db", clock=self.clock)


TestBetweenTurnsOnSQLite = BetweenTurnsOnSQLite.TestCase
TestBetweenTurnsOnSQLite.settings = settings(max_examples=10, stateful_step_count=30, deadline=None)


def test_the_machine_is_not_vacuous() -> None:
    """One scripted run through the machine's rules fires an idle stop and a retention delete."""
    machine = BetweenTurns()
    try:
        machine.create("c1", 0)
        machine.provision(JobStatus.SUCCEEDED, True)
        machine.advance(IDLE)
        machine.nothing()
        machine.deadlines_fire_once_and_never_early()
        machine.provision(JobStatus.SUCCEEDED, False)  # the idle stop build ends
        machine.advance(RETAIN)
        machine.deadlines_fire_once_and_never_early()
        events = machine._settle()
        reasons = [e.reason for e in events if e.kind is EventKind.BUILD_QUEUED]
        assert reasons == [Reason.REQUEST, Reason.IDLE, Reason.RETENTION]
    finally:
        machine.teardown()
