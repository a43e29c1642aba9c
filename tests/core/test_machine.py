"""The pure machine: SPEC's transition table, the stale/duplicate rules, strictness, decisions."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest

from workspace_lifecycle import (
    AgentLifecycle,
    Decision,
    EventKind,
    InvalidEventError,
    JobStatus,
    Request,
    StoreEvent,
    Tracker,
    Transition,
    WorkspaceMachine,
    WorkspaceState,
)

S = WorkspaceState
_seq = itertools.count(100)


def ev(kind: EventKind, number: int = 1, *, seq: int | None = None, **fields: Any) -> StoreEvent:
    """An event of workspace ``w`` (chat ``c``), with a fresh seq unless given."""
    if kind in (EventKind.BUILD_QUEUED, EventKind.BUILD_UPDATED, EventKind.BUILD_FINISHED):
        fields.setdefault("build_id", f"b{number}")
        fields.setdefault("transition", Transition.START)
    return StoreEvent(
        seq=next(_seq) if seq is None else seq,
        kind=kind,
        workspace_id="w",
        chat_id="c",
        build_number=number,
        **fields,
    )


def queued(number: int, transition: Transition = Transition.START) -> StoreEvent:
    return ev(EventKind.BUILD_QUEUED, number, transition=transition, status=JobStatus.PENDING)


def finished(
    number: int,
    transition: Transition = Transition.START,
    status: JobStatus = JobStatus.SUCCEEDED,
    *,
    has_agent: bool | None = None,
    error: str | None = None,
) -> StoreEvent:
    if has_agent is None and status is JobStatus.SUCCEEDED and transition is Transition.START:
        has_agent = True
    return ev(
        EventKind.BUILD_FINISHED,
        number,
        transition=transition,
        status=status,
        has_agent=has_agent,
        error=error,
    )


def agent(number: int, lifecycle: AgentLifecycle) -> StoreEvent:
    return ev(EventKind.AGENT_UPDATED, number, agent=lifecycle)


def deleted(number: int) -> StoreEvent:
    return ev(EventKind.WORKSPACE_DELETED, number, build_id=f"b{number}", transition=Transition.DELETE)


def tracker_in(state: WorkspaceState) -> Tracker:
    """A tracker brought to ``state`` by events (build 1, or builds 1 and 2)."""
    t = Tracker("w", "c")
    if state is S.NO_WORKSPACE:
        return t
    t.apply(queued(1))
    if state is S.BUILDING:
        return t
    if state is S.FAILED:
        t.apply(finished(1, status=JobStatus.FAILED, error="boom"))
        return t
    t.apply(finished(1))
    if state is S.AGENT_READY:
        t.apply(agent(1, AgentLifecycle.READY))
    if state is S.STOPPED:
        t.apply(queued(2, Transition.STOP))
        t.apply(finished(2, Transition.STOP))
    assert t.state is state
    return t


class TestTransitionTable:
    @pytest.mark.parametrize("state", list(S))
    def test_build_queued_from_any_state(self, state: WorkspaceState) -> None:
        """SPEC: build queued (any transition), from any state -> building."""
        t = tracker_in(state)
        number = t.build_number + 1
        change = t.apply(queued(number, Transition.STOP))
        assert t.state is S.BUILDING and t.build_number == number
        if state is S.BUILDING:
            assert change is None  # building -> building is no change
        else:
            assert change is not None and (change.from_state, change.to_state) == (state, S.BUILDING)
            assert change.event is EventKind.BUILD_QUEUED and change.build_number == number

    @pytest.mark.parametrize(
        ("transition", "status", "to"),
        [
            (Transition.START, JobStatus.SUCCEEDED, S.RUNNING),
            (Transition.STOP, JobStatus.SUCCEEDED, S.STOPPED),
            (Transition.DELETE, JobStatus.SUCCEEDED, S.NO_WORKSPACE),
            (Transition.START, JobStatus.FAILED, S.FAILED),
            (Transition.STOP, JobStatus.FAILED, S.FAILED),
            (Transition.DELETE, JobStatus.CANCELED, S.FAILED),
            (Transition.START, JobStatus.CANCELED, S.FAILED),
        ],
    )
    def test_build_finished(self, transition: Transition, status: JobStatus, to: WorkspaceState) -> None:
        """SPEC: build succeeded start/stop/delete and failed/canceled, from building."""
        t = tracker_in(S.RUNNING)
        t.apply(queued(2, transition))
        t.apply(ev(EventKind.BUILD_UPDATED, 2, transition=transition, status=JobStatus.RUNNING))
        assert t.state is S.BUILDING and t.status is JobStatus.RUNNING
        change = t.apply(finished(2, transition, status, error="why" if status is JobStatus.FAILED else None))
        assert t.state is to
        assert change is not None and (change.from_state, change.to_state) == (S.BUILDING, to)
        assert t.status is status

    def test_start_succeeds_with_agent_already_ready(self) -> None:
        """SPEC: build succeeded, start -> agent_ready if the agent is already ready."""
        t = tracker_in(S.BUILDING)
        finish = finished(1)  # written first, delivered last
        report = agent(1, AgentLifecycle.READY)
        t.apply(report)
        assert t.state is S.BUILDING
        t.apply(finish)
        assert t.state is S.AGENT_READY

    def test_agent_ready_and_leaving_ready(self) -> None:
        """SPEC: agent ready: running -> agent_ready; leaves ready: agent_ready -> running."""
        t = tracker_in(S.RUNNING)
        assert t.agent is AgentLifecycle.CREATED
        assert t.apply(agent(1, AgentLifecycle.STARTING)) is None and t.state is S.RUNNING
        change = t.apply(agent(1, AgentLifecycle.READY))
        assert change is not None and change.to_state is S.AGENT_READY
        change = t.apply(agent(1, AgentLifecycle.SHUTTING_DOWN))
        assert change is not None and (change.from_state, change.to_state) == (S.AGENT_READY, S.RUNNING)

    @pytest.mark.parametrize("state", list(S))
    def test_workspace_deleted_from_any_state(self, state: WorkspaceState) -> None:
        """SPEC: workspace deleted, from any state -> no_workspace; later news changes nothing."""
        t = tracker_in(state)
        t.apply(deleted(max(t.build_number, 1)))
        assert t.state is S.NO_WORKSPACE and t.deleted
        assert t.apply(queued(t.build_number + 1)) is None
        assert t.state is S.NO_WORKSPACE

    def test_late_ready_after_start_timeout_is_followed(self) -> None:
        """start_timeout keeps the workspace running; a later ready still reaches agent_ready."""
        t = tracker_in(S.RUNNING)
        t.apply(agent(1, AgentLifecycle.START_TIMEOUT))
        assert t.state is S.RUNNING and t.agent is AgentLifecycle.START_TIMEOUT
        t.apply(agent(1, AgentLifecycle.READY))
        assert t.state is S.AGENT_READY

    def test_diagram_names_the_six_states(self) -> None:
        """The table is python-statemachine's: its states are exactly SPEC's six."""
        assert {s.id for s in WorkspaceMachine.states} == {m.value for m in S}


class TestStaleAndDuplicate:
    def test_duplicate_seq_changes_nothing(self) -> None:
        """An event whose seq was already applied is ignored, even once the state moved on."""
        t = Tracker("w", "c")
        q = queued(1)
        done = finished(1, has_agent=False)
        t.apply(q)
        t.apply(done)
        before = t.snapshot()
        assert t.apply(q) is None and t.apply(done) is None
        assert t.snapshot() == before and t.state is S.RUNNING

    def test_duplicate_agent_report_does_not_undo_a_newer_one(self) -> None:
        t = tracker_in(S.RUNNING)
        starting = agent(1, AgentLifecycle.STARTING)
        t.apply(starting)
        t.apply(agent(1, AgentLifecycle.READY))
        assert t.apply(starting) is None and t.state is S.AGENT_READY

    def test_older_agent_report_delivered_late_changes_nothing(self) -> None:
        """A report written before the newest one, delivered after it, is ignored."""
        t = tracker_in(S.RUNNING)
        old = agent(1, AgentLifecycle.STARTING)
        new = agent(1, AgentLifecycle.READY)
        t.apply(new)
        assert t.apply(old) is None and t.state is S.AGENT_READY and t.agent is AgentLifecycle.READY

    @pytest.mark.parametrize(
        "old",
        [
            lambda: finished(1, status=JobStatus.FAILED),
            lambda: agent(1, AgentLifecycle.READY),
            lambda: queued(1),
            lambda: ev(EventKind.BUILD_UPDATED, 1, status=JobStatus.CANCELING),
        ],
    )
    def test_older_build_changes_nothing(self, old: Any) -> None:
        """An event of a build older than the latest known is stale, whatever it says."""
        t = tracker_in(S.STOPPED)  # builds 1 (start) and 2 (stop)
        before = t.snapshot()
        assert t.apply(old()) is None
        assert t.snapshot() == before

    def test_events_up_to_the_loaded_seq_are_stale(self) -> None:
        """A tracker loaded at seq N ignores events with seq <= N (they are in its facts)."""
        t = Tracker("w", "c", state=S.STOPPED, seq=50, build_number=2, status=JobStatus.SUCCEEDED)
        assert t.apply(attrs.evolve(queued(3), seq=50)) is None
        assert t.state is S.STOPPED
        assert t.apply(queued(3)) is not None and t.state is S.BUILDING

    def test_chat_bound_is_not_a_state_event(self) -> None:
        t = Tracker("w", "c")
        assert t.apply(ev(EventKind.CHAT_BOUND, 0)) is None and t.state is S.NO_WORKSPACE


class TestReorder:
    def test_finish_before_queued_implies_queueing(self) -> None:
        """A build_finished for an unknown newer build implies its build_queued."""
        t = tracker_in(S.STOPPED)
        q = queued(3)
        done = finished(3, has_agent=False)
        change = t.apply(done)
        assert change is not None and (change.from_state, change.to_state) == (S.STOPPED, S.RUNNING)
        assert t.build_number == 3 and t.build_id == "b3"
        assert t.apply(q) is None and t.state is S.RUNNING

    def test_update_after_finish_changes_nothing(self) -> None:
        t = tracker_in(S.BUILDING)
        update = ev(EventKind.BUILD_UPDATED, 1, status=JobStatus.RUNNING)
        t.apply(finished(1, status=JobStatus.FAILED))
        assert t.apply(update) is None and t.state is S.FAILED and t.status is JobStatus.FAILED

    def test_agent_report_before_its_build_waits_for_it(self) -> None:
        """An agent report of a build not yet known is applied once that build is."""
        t = tracker_in(S.STOPPED)
        q, done, ready = queued(3), finished(3), agent(3, AgentLifecycle.READY)
        assert t.apply(ready) is None and t.state is S.STOPPED
        t.apply(done)
        assert t.state is S.AGENT_READY
        assert t.apply(q) is None and t.apply(ready) is None and t.state is S.AGENT_READY


class TestStrict:
    def test_final_status_in_build_updated(self) -> None:
        t = tracker_in(S.BUILDING)
        with pytest.raises(InvalidEventError, match="build_updated with final status"):
            t.apply(ev(EventKind.BUILD_UPDATED, 1, status=JobStatus.SUCCEEDED))

    def test_in_progress_status_in_build_finished(self) -> None:
        t = tracker_in(S.BUILDING)
        with pytest.raises(InvalidEventError, match="build_finished with status running"):
            t.apply(ev(EventKind.BUILD_FINISHED, 1, status=JobStatus.RUNNING))

    def test_finish_not_allowed_outside_building(self) -> None:
        """build_succeeded from running is not in the table: InvalidEventError, a ValueError."""
        t = Tracker("w", "c", state=S.RUNNING, build_number=1, build_id="b1", transition=Transition.START)
        with pytest.raises(InvalidEventError, match="not allowed in state running") as info:
            t.apply(finished(1))
        assert isinstance(info.value, ValueError)

    def test_agent_report_with_no_workspace(self) -> None:
        """An agent report after a delete build succeeded (no_workspace) is not in the table."""
        t = tracker_in(S.RUNNING)
        t.apply(queued(2, Transition.DELETE))
        t.apply(finished(2, Transition.DELETE))
        assert t.state is S.NO_WORKSPACE
        with pytest.raises(InvalidEventError):
            t.apply(ev(EventKind.AGENT_UPDATED, 2, agent=AgentLifecycle.READY))

    def test_event_of_another_workspace(self) -> None:
        t = Tracker("other", "c")
        with pytest.raises(InvalidEventError, match="not other"):
            t.apply(queued(1))

    def test_missing_status(self) -> None:
        t = tracker_in(S.BUILDING)
        with pytest.raises(InvalidEventError, match="carries no job status"):
            t.apply(ev(EventKind.BUILD_FINISHED, 1))


# decide(): every state x request. Building is split by the transition in flight.
_DECISIONS: list[tuple[str, Request, Decision]] = []
_TABLE = {
    #                   CREATE,           START,                  STOP,                   DELETE
    "no_workspace": ("fire", "refuse", "refuse", "already"),
    "deleted": ("fire", "refuse", "refuse", "already"),
    "stopped": ("already", "fire", "already", "fire"),
    "building:start": ("wait", "wait", "wait_then_retry", "wait_then_retry"),
    # A create waits out a stop or delete build and decides again: after a delete it creates a
    # new workspace (joining the delete answered the deleted workspace as "already_exists").
    "building:stop": ("wait_then_retry", "wait_then_retry", "wait", "wait_then_retry"),
    "building:delete": ("wait_then_retry", "wait_then_retry", "wait_then_retry", "wait"),
    "running": ("already", "already", "fire", "fire"),
    "agent_ready": ("already", "already", "fire", "fire"),
    # As Coder's create_workspace: a failed workspace is replaced by a new one.
    "failed": ("fire", "fire", "fire", "fire"),
}
for _where, _row in _TABLE.items():
    for _request, _decision in zip(Request, _row, strict=True):
        _DECISIONS.append((_where, _request, Decision(_decision)))


def _tracker_for(where: str) -> Tracker:
    if where == "deleted":
        t = tracker_in(S.RUNNING)
        t.apply(queued(2, Transition.DELETE))
        t.apply(finished(2, Transition.DELETE))
        t.apply(deleted(2))
        return t
    if where.startswith("building:"):
        t = tracker_in(S.RUNNING)
        t.apply(queued(2, Transition(where.split(":")[1])))
        return t
    return tracker_in(S(where))


class TestDecide:
    @pytest.mark.parametrize(("where", "request_", "expected"), _DECISIONS)
    def test_decision(self, where: str, request_: Request, expected: Decision) -> None:
        """decide() reads the transition table: fire, wait, wait then retry, already, refuse."""
        t = _tracker_for(where)
        before = t.snapshot()
        assert t.decide(request_) is expected
        assert t.snapshot() == before  # deciding never moves the machine

    def test_start_fires_only_from_stopped_and_failed(self) -> None:
        """SPEC: stopped -> building and failed -> building are start's only transitions."""
        firing = {
            where for where, request, d in _DECISIONS if request is Request.START and d is Decision.FIRE
        }
        assert firing == {"stopped", "failed"}


class TestSharedMachine:
    """One WorkspaceMachine per thread interprets the table; each tracker holds its own state."""

    def test_interleaved_trackers_keep_their_own_state(self) -> None:
        a, b = Tracker("w", "c"), Tracker("w", "c")
        a.apply(queued(1))
        b.apply(queued(1))
        a.apply(finished(1))
        b.apply(finished(1, status=JobStatus.FAILED, error="boom"))
        a.apply(agent(1, AgentLifecycle.READY))
        assert (a.state, b.state) == (S.AGENT_READY, S.FAILED)
        assert a.allowed_events() != b.allowed_events()
        assert "request_start" in b.allowed_events() and "request_start" not in a.allowed_events()

    def test_a_refused_event_leaves_the_machine_clean_for_the_next_tracker(self) -> None:
        bad = Tracker("w", "c", state=S.RUNNING, build_number=1, build_id="b1", transition=Transition.START)
        with pytest.raises(InvalidEventError):
            bad.apply(finished(1))
        assert bad.state is S.RUNNING
        good = tracker_in(S.BUILDING)  # the refused event is not replayed onto another tracker
        good.apply(finished(1, Transition.START))
        assert good.state is S.RUNNING
        assert bad.state is S.RUNNING

    def test_guards_read_the_bound_tracker(self) -> None:
        """agent_is_ready reads the tracker being applied, not whichever was bound before."""
        ready, plain = tracker_in(S.BUILDING), tracker_in(S.BUILDING)
        finish = finished(1)  # written before the report, delivered after it
        ready.apply(agent(1, AgentLifecycle.READY))
        plain.apply(finish)
        ready.apply(finish)
        assert (plain.state, ready.state) == (S.RUNNING, S.AGENT_READY)

    def test_each_thread_has_its_own_machine(self) -> None:
        """Trackers applied from several threads at once: python-statemachine instances are not
        thread-safe, so a shared one would queue one thread's event under another's tracker."""
        import threading

        from workspace_lifecycle.machine import bound_machine

        seen: dict[str, object] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def run(name: str) -> None:
            try:
                with bound_machine(Tracker("w", "c")) as sm:
                    seen[name] = sm
                barrier.wait()
                for _ in range(200):
                    t = tracker_in(S.STOPPED)
                    t.apply(queued(3))
                    t.apply(finished(3))
                    assert t.state is S.RUNNING
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len({id(sm) for sm in seen.values()}) == 4
