"""The pure request module: every (state x request x compare-and-set outcome) cell, no store.

Each case brings a :class:`Tracker` to a state with events, asks a :class:`Flow` for its first
step, feeds it the outcome of the store's compare-and-set (fired, lost to an identical build,
lost to another build, refused because the chat moved on) and of the waits, and checks the
step or the answer it reaches. Nothing here awaits: the answers are chosen without a store.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from workspace_lifecycle import (
    AgentLifecycle,
    Build,
    Chat,
    EventKind,
    JobStatus,
    Request,
    StoreEvent,
    Tracker,
    Transition,
    Workspace,
    WorkspaceFacts,
    WorkspaceState,
    answers,
)
from workspace_lifecycle.steps import (
    Answer,
    CatchUp,
    Create,
    Defer,
    Fire,
    Flow,
    ReadBuild,
    Restart,
    Step,
    Track,
    WaitAgent,
    WaitBuild,
    first_step,
)

S = WorkspaceState
R = Request
WS = Workspace("w", "c", "alice", "dev")
_seq = itertools.count(1)


def ev(kind: EventKind, number: int, transition: Transition, **fields: Any) -> StoreEvent:
    return StoreEvent(
        seq=next(_seq),
        kind=kind,
        workspace_id="w",
        chat_id="c",
        build_number=number,
        build_id=f"b{number}",
        transition=transition,
        **fields,
    )


def queue(t: Tracker, transition: Transition) -> None:
    t.apply(ev(EventKind.BUILD_QUEUED, t.build_number + 1, transition, status=JobStatus.PENDING))


def finish(t: Tracker, status: JobStatus = JobStatus.SUCCEEDED, *, has_agent: bool = True) -> None:
    transition = t.transition
    assert transition is not None
    starts = status is JobStatus.SUCCEEDED and transition is Transition.START
    t.apply(
        ev(
            EventKind.BUILD_FINISHED,
            t.build_number,
            transition,
            status=status,
            has_agent=has_agent if starts else None,
            error="boom" if status is JobStatus.FAILED else None,
        )
    )


def report(t: Tracker, lifecycle: AgentLifecycle) -> None:
    t.apply(
        StoreEvent(
            seq=next(_seq),
            kind=EventKind.AGENT_UPDATED,
            workspace_id="w",
            chat_id="c",
            build_number=t.build_number,
            agent=lifecycle,
        )
    )


def tracker(state: WorkspaceState, *, building: Transition = Transition.START) -> Tracker:
    """A tracker in ``state``: build 1 starts it; later builds stop, fail or build again."""
    t = Tracker("w", "c")
    queue(t, Transition.START)
    if state is S.BUILDING and building is Transition.START:
        return t
    finish(t)
    if state is S.BUILDING:
        queue(t, building)
        return t
    if state is S.FAILED:
        queue(t, Transition.STOP)
        finish(t, JobStatus.FAILED)
    elif state is S.STOPPED:
        queue(t, Transition.STOP)
        finish(t)
    elif state is S.NO_WORKSPACE:
        queue(t, Transition.DELETE)
        finish(t)
        t.apply(ev(EventKind.WORKSPACE_DELETED, t.build_number, Transition.DELETE))
    elif state is S.AGENT_READY:
        report(t, AgentLifecycle.READY)
    assert t.state is state
    return t


def flow(request: Request, *, wait: bool = True) -> Flow:
    f = Flow(request, wait=wait)
    f.tracking(WS)
    return f


def facts_after(t: Tracker, latest: Build | None, *, deleted: bool = False) -> WorkspaceFacts:
    return WorkspaceFacts(Workspace("w", "c", "alice", "dev", deleted=deleted), latest, None, seq=t.seq + 1)


def build(number: int, transition: Transition, status: JobStatus = JobStatus.PENDING) -> Build:
    return Build(f"b{number}", "w", number, transition, status)


def kind(step: Step) -> str:
    return type(step).__name__


# --- the first step of every request in every state -------------------------------------------

#: (state, request) -> first step with wait=True and with wait=False.
FIRST: dict[tuple[WorkspaceState, Request], tuple[str, str]] = {
    (S.NO_WORKSPACE, R.CREATE): ("Create", "Create"),
    (S.NO_WORKSPACE, R.START): ("Answer", "Answer"),
    (S.NO_WORKSPACE, R.STOP): ("Answer", "Answer"),
    (S.NO_WORKSPACE, R.DELETE): ("Answer", "Answer"),
    (S.STOPPED, R.CREATE): ("Answer", "Answer"),
    (S.STOPPED, R.START): ("Fire", "Fire"),
    (S.STOPPED, R.STOP): ("Answer", "Answer"),
    (S.STOPPED, R.DELETE): ("Fire", "Fire"),
    (S.BUILDING, R.CREATE): ("WaitBuild", "Answer"),
    (S.BUILDING, R.START): ("WaitBuild", "Answer"),
    (S.BUILDING, R.STOP): ("WaitBuild", "Defer"),
    (S.BUILDING, R.DELETE): ("WaitBuild", "Defer"),
    (S.RUNNING, R.CREATE): ("WaitAgent", "Answer"),
    (S.RUNNING, R.START): ("WaitAgent", "Answer"),
    (S.RUNNING, R.STOP): ("Fire", "Fire"),
    (S.RUNNING, R.DELETE): ("Fire", "Fire"),
    (S.AGENT_READY, R.CREATE): ("WaitAgent", "Answer"),
    (S.AGENT_READY, R.START): ("WaitAgent", "Answer"),
    (S.AGENT_READY, R.STOP): ("Fire", "Fire"),
    (S.AGENT_READY, R.DELETE): ("Fire", "Fire"),
    (S.FAILED, R.CREATE): ("Create", "Create"),
    (S.FAILED, R.START): ("Fire", "Fire"),
    (S.FAILED, R.STOP): ("Fire", "Fire"),
    (S.FAILED, R.DELETE): ("Fire", "Fire"),
}


class TestFirstStep:
    def test_the_table_covers_every_cell(self) -> None:
        """Every state and every request has a row."""
        assert set(FIRST) == set(itertools.product(S, R))

    @pytest.mark.parametrize(("state", "request_"), list(FIRST))
    @pytest.mark.parametrize("wait", [True, False])
    def test_first_step(self, state: WorkspaceState, request_: Request, wait: bool) -> None:
        """The step each request takes first in each state (a start build in flight)."""
        step = flow(request_, wait=wait).next(tracker(state))
        assert kind(step) == FIRST[state, request_][0 if wait else 1]
        if isinstance(step, Fire):
            assert step.transition is {R.START: Transition.START, R.STOP: Transition.STOP}.get(
                request_, Transition.DELETE
            )
            assert step.expected_build_number == tracker(state).build_number
        if isinstance(step, Create):
            assert step.expected_workspace_id == "w"

    @pytest.mark.parametrize("request_", [R.START, R.STOP, R.DELETE])
    def test_deleted_workspace(self, request_: Request) -> None:
        """A deleted workspace answers every request but create with Coder's sentence."""
        step = flow(request_).next(tracker(S.NO_WORKSPACE))
        assert isinstance(step, Answer) and step.result.text == answers.WORKSPACE_DELETED

    def test_never_created(self) -> None:
        """A workspace with no build refuses start as having no workspace."""
        step = flow(R.START).next(Tracker("w", "c"))
        assert isinstance(step, Answer) and step.result.text == answers.NO_WORKSPACE

    def test_stopped_answers(self) -> None:
        """Stop on a stopped workspace: no build; create on it: Coder's stopped message."""
        stop = flow(R.STOP).next(tracker(S.STOPPED))
        assert isinstance(stop, Answer) and stop.result.data == {
            "stopped": True,
            "workspace_name": "dev",
            "no_build": True,
        }
        create = flow(R.CREATE).next(tracker(S.STOPPED))
        assert isinstance(create, Answer) and create.result.data["status"] == "stopped"

    @pytest.mark.parametrize("request_", list(R))
    def test_start_build_in_flight_joined_or_retried(self, request_: Request) -> None:
        """A start build in flight: start and create join it; stop and delete wait, then decide."""
        f = flow(request_)
        step = f.next(tracker(S.BUILDING))
        assert isinstance(step, WaitBuild) and step.number == 1
        assert (f.number is not None) == (request_ in (R.START, R.CREATE))

    def test_stop_build_in_flight_start_waits_then_fires(self) -> None:
        """SPEC: a stop build in progress makes start wait for it, then fire one start build."""
        t = tracker(S.BUILDING, building=Transition.STOP)
        f = flow(R.START)
        step = f.next(t)
        assert isinstance(step, WaitBuild) and f.number is None
        finish(t)
        f.waited(timed_out=False)
        step = f.next(t)
        assert (
            isinstance(step, Fire) and step.transition is Transition.START and step.expected_build_number == 2
        )


class TestFirstStepFromTheChat:
    def test_unknown_other_owner_and_unbound(self) -> None:
        """Unknown chat and another owner's chat answer alike; no workspace: create or refuse."""
        for chat in (None, Chat("c", "mallory", "w")):
            for request_ in R:
                step = first_step(request_, chat, "alice")
                assert isinstance(step, Answer) and step.result.is_error
                expected = answers.CHAT_NOT_FOUND if request_ is R.CREATE else answers.NO_WORKSPACE
                assert step.result.text == expected
        assert first_step(R.CREATE, Chat("c", "alice"), "alice") == Create(None)
        refused = first_step(R.START, Chat("c", "alice"), "alice")
        assert isinstance(refused, Answer) and refused.result.text == answers.NO_WORKSPACE
        assert first_step(R.STOP, Chat("c", "alice", "w"), "alice") == Track("w")


# --- the outcome of the compare-and-set -----------------------------------------------------------

FIRING = [(state, request_) for (state, request_), (step, _) in FIRST.items() if step == "Fire"]
OUTCOMES = ["fired", "lost_identical", "lost_other", "refused_moved", "lost_deleted"]


class TestCompareAndSet:
    @pytest.mark.parametrize(("state", "request_"), FIRING)
    @pytest.mark.parametrize("outcome", OUTCOMES)
    @pytest.mark.parametrize("wait", [True, False])
    def test_outcome(self, state: WorkspaceState, request_: Request, outcome: str, wait: bool) -> None:
        """Every firing cell, with each outcome the store can report."""
        t = tracker(state)
        f = flow(request_, wait=wait)
        fire = f.next(t)
        assert isinstance(fire, Fire)
        n = fire.expected_build_number
        mine = build(n + 1, fire.transition)
        other_transition = Transition.STOP if fire.transition is not Transition.STOP else Transition.START
        if outcome == "fired":
            step = f.fired(fire, fired=True, build=mine, facts=facts_after(t, mine))
            if wait:
                assert step == WaitBuild(n + 1) and f.own and f.build_id == mine.build_id
            else:
                assert isinstance(step, Answer)
                assert (
                    step.result.data["status"] == "building" and step.result.data["build_id"] == mine.build_id
                )
        elif outcome == "lost_identical":
            step = f.fired(fire, fired=False, build=None, facts=facts_after(t, mine))
            assert isinstance(step, CatchUp)
            queue(t, fire.transition)
            step = f.next(t)
            if wait:
                assert step == WaitBuild(n + 1) and f.own and f.build_id == mine.build_id
            else:
                assert isinstance(step, Answer) and step.result.data["build_id"] == mine.build_id
        elif outcome == "lost_other":
            theirs = build(n + 1, other_transition)
            step = f.fired(fire, fired=False, build=None, facts=facts_after(t, theirs))
            assert isinstance(step, CatchUp)
            queue(t, other_transition)
            step = f.next(t)  # decide again: a build of another kind is in flight now
            assert kind(step) == ("WaitBuild" if wait else "Defer") and f.number is None
        elif outcome == "refused_moved":
            latest = build(n, t.transition or Transition.START, t.status or JobStatus.SUCCEEDED)
            step = f.fired(fire, fired=False, build=None, facts=facts_after(t, latest))
            assert isinstance(step, Restart)
        else:  # lost_deleted: another caller's delete finished first
            latest = build(n + 1, Transition.DELETE, JobStatus.SUCCEEDED)
            step = f.fired(fire, fired=False, build=None, facts=facts_after(t, latest, deleted=True))
            assert isinstance(step, CatchUp)
            queue(t, Transition.DELETE)
            finish(t)
            t.apply(ev(EventKind.WORKSPACE_DELETED, t.build_number, Transition.DELETE))
            step = f.next(t)
            if request_ is R.DELETE and fire.transition is Transition.DELETE:
                # The very build this call meant to fire: answered as its own.
                assert isinstance(step, WaitBuild | Answer)
            else:
                assert isinstance(step, Answer) and step.result.text == answers.WORKSPACE_DELETED

    def test_moved_restarts_a_bounded_number_of_times(self) -> None:
        """A start refused because the chat moved on restarts, then gives up with a sentence."""
        t = tracker(S.STOPPED)
        f = flow(R.START)
        for _ in range(3):
            fire = f.next(t)
            assert isinstance(fire, Fire)
            latest = build(fire.expected_build_number, Transition.STOP, JobStatus.SUCCEEDED)
            assert isinstance(f.fired(fire, fired=False, build=None, facts=facts_after(t, latest)), Restart)
            f.restarted()
            f.tracking(WS)
        fire = f.next(t)
        assert isinstance(fire, Fire)
        latest = build(fire.expected_build_number, Transition.STOP, JobStatus.SUCCEEDED)
        step = f.fired(fire, fired=False, build=None, facts=facts_after(t, latest))
        assert isinstance(step, Answer) and step.result.text == answers.WORKSPACE_REPLACED


# --- the end of the awaited build ------------------------------------------------------------------


def started(request_: Request = R.START) -> tuple[Tracker, Flow]:
    """A start build fired by this call from stopped, now in flight (build 3)."""
    t = tracker(S.STOPPED)
    f = flow(request_)
    fire = f.next(t)
    assert isinstance(fire, Fire)
    queue(t, Transition.START)
    assert f.fired(
        fire, fired=True, build=build(3, Transition.START), facts=facts_after(t, None)
    ) == WaitBuild(3)
    return t, f


class TestBuildEnds:
    def test_succeeded_then_agent_ready(self) -> None:
        """Start succeeded: wait for the agent; ready means no agent fields."""
        t, f = started()
        finish(t)
        f.waited(timed_out=False)
        assert f.next(t) == WaitAgent(3)
        report(t, AgentLifecycle.READY)
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data == {"started": True, "workspace_name": "dev", "build_id": "b3"}

    @pytest.mark.parametrize(
        ("has_agent", "lifecycle", "timed_out", "fields"),
        [
            (False, None, False, {"agent_status": "no_agent"}),
            (True, AgentLifecycle.START_ERROR, False, {"startup_scripts": "startup_scripts_failed"}),
            (True, AgentLifecycle.CREATED, True, {"startup_scripts": "startup_scripts_timeout"}),
        ],
    )
    def test_agent_fields(
        self, has_agent: bool, lifecycle: AgentLifecycle | None, timed_out: bool, fields: dict[str, str]
    ) -> None:
        """Coder's agent fields: no agent, a failure state, the agent timeout."""
        t, f = started()
        finish(t, has_agent=has_agent)
        f.waited(timed_out=False)
        assert f.next(t) == WaitAgent(3)
        if lifecycle is not None and lifecycle is not AgentLifecycle.CREATED:
            report(t, lifecycle)
        f.waited(timed_out=timed_out)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert fields.items() <= step.result.data.items()
        assert step.result.data["build_id"] == "b3"

    @pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.CANCELED])
    def test_failed(self, status: JobStatus) -> None:
        """A failed build is answered with is_error false, the reason and the build id."""
        t, f = started()
        finish(t, status)
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer) and not step.result.is_error
        reason = "boom" if status is JobStatus.FAILED else "build was canceled"
        assert step.result.data == {"error": f"workspace start build failed: {reason}", "build_id": "b3"}

    def test_build_timeout(self) -> None:
        """The wait for the build ran out: Coder's timeout sentence."""
        t, f = started()
        f.waited(timed_out=True)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data["timed_out"] is True and step.result.data["build_status"] == "pending"
        assert "error" not in step.result.data and not step.result.is_error

    def test_succeeded_then_superseded_before_the_waiter_ran(self) -> None:
        """Hardening 3: the start succeeded; a stop was queued before the waiter ran. Not a failure."""
        t, f = started()
        finish(t, has_agent=False)
        queue(t, Transition.STOP)
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data == {
            "started": True,
            "workspace_name": "dev",
            "build_id": "b3",
            "agent_status": "no_agent",
            "superseded_by": {"transition": "stop", "build_id": "b4"},
        }

    def test_superseded_while_waiting_for_the_agent(self) -> None:
        """Hardening 4: the agent exists (created) when a stop comes: never 'no_agent'."""
        t, f = started()
        finish(t)
        f.waited(timed_out=False)
        assert f.next(t) == WaitAgent(3)
        queue(t, Transition.STOP)
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data == {
            "started": True,
            "workspace_name": "dev",
            "build_id": "b3",
            "agent_status": "not_ready",
            "lifecycle_state": "created",
            "superseded_by": {"transition": "stop", "build_id": "b4"},
        }

    def test_failed_then_superseded(self) -> None:
        """A build that failed and was then superseded is still answered as failed."""
        t, f = started()
        finish(t, JobStatus.FAILED)
        queue(t, Transition.STOP)
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data["error"] == "workspace start build failed: boom"
        assert step.result.data["superseded_by"] == {"transition": "stop", "build_id": "b4"}

    def test_stop_succeeded_then_superseded(self) -> None:
        """The mirror: a stop that succeeded, then another caller's start came."""
        t = tracker(S.RUNNING)
        f = flow(R.STOP)
        fire = f.next(t)
        assert isinstance(fire, Fire)
        queue(t, Transition.STOP)
        f.fired(fire, fired=True, build=build(2, Transition.STOP), facts=facts_after(t, None))
        finish(t)
        queue(t, Transition.START)
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data == {
            "stopped": True,
            "workspace_name": "dev",
            "build_id": "b2",
            "superseded_by": {"transition": "start", "build_id": "b3"},
        }

    def test_joined_in_flight_build_fails(self) -> None:
        """A start joining another caller's build that fails: 'waiting for in-progress build'."""
        t = tracker(S.BUILDING)
        f = flow(R.START)
        assert f.next(t) == WaitBuild(1)
        finish(t, JobStatus.FAILED)
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data == {"error": "waiting for in-progress build: boom", "build_id": "b1"}

    def test_other_kind_never_ends(self) -> None:
        """Waiting for another kind of build that outlives build_timeout."""
        t = tracker(S.BUILDING, building=Transition.STOP)
        f = flow(R.START)
        f.next(t)
        f.waited(timed_out=True)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data["timed_out"] is True and "error" not in step.result.data

    def test_create_fired_answers_full_name(self) -> None:
        """create_workspace that created the workspace answers owner/name (Coder's)."""
        f = Flow(R.CREATE)
        f.tracking(WS)
        t = Tracker("w", "c")
        step = f.created(fired=True, build=build(1, Transition.START), facts=facts_after(t, None), name="dev")
        assert step == WaitBuild(1)
        queue(t, Transition.START)
        finish(t, has_agent=False)
        f.waited(timed_out=False)
        assert f.next(t) == WaitAgent(1)
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data == {
            "created": True,
            "workspace_name": "alice/dev",
            "build_id": "b1",
            "agent_status": "no_agent",
        }

    def test_a_create_that_lost_to_an_identical_one_answers_about_its_build_even_once_over(self) -> None:
        """An identical create won (same name, its first build): the loser answers about that
        build as the followers that caught it in flight do, not "already running" without it."""
        t = tracker(S.AGENT_READY)  # the winner's build ended and its agent is ready
        f = flow(R.CREATE)
        won = facts_after(t, build(1, Transition.START, JobStatus.SUCCEEDED))
        assert f.created(fired=False, build=None, facts=won, name="dev") == CatchUp(won.seq)
        assert f.next(t) == WaitBuild(1)
        f.waited(timed_out=False)
        assert f.next(t) == WaitAgent(1)
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer)
        assert step.result.data["created"] is False and step.result.data["build_id"] == "b1"
        assert step.result.data["message"] == "workspace build completed"

    @pytest.mark.parametrize(
        ("name", "latest"),
        [("other", build(1, Transition.START)), ("dev", build(2, Transition.STOP)), ("dev", None)],
        ids=["another-name", "a-later-build", "no-build"],
    )
    def test_a_create_that_lost_to_anything_else_decides_again(self, name: str, latest: Build | None) -> None:
        t = tracker(S.BUILDING)
        f = flow(R.CREATE)
        assert f.created(fired=False, build=None, facts=facts_after(t, latest), name=name) is None

    def test_conditions_are_values(self) -> None:
        """The wait conditions are plain values with a pure test on the tracker."""
        t = tracker(S.BUILDING)
        assert not WaitBuild(1).holds(t)
        finish(t)
        assert WaitBuild(1).holds(t) and WaitBuild(0).holds(t)
        assert not WaitAgent(1).holds(t)
        report(t, AgentLifecycle.READY)
        assert WaitAgent(1).holds(t)
        assert Defer(Answer(answers.build_failed("x", "y", None)).result, 1).number == 1


class TestLostNews:
    def test_late_finish_of_the_previous_build_is_kept(self) -> None:
        """Reordered delivery: build 4 queued before build 3's finish arrived. The finish is
        stale for the machine, but the answer for build 3 still says how it ended."""
        t, f = started()
        queue(t, Transition.STOP)  # build 4's news first
        finish_3 = ev(
            EventKind.BUILD_FINISHED, 3, Transition.START, status=JobStatus.SUCCEEDED, has_agent=False
        )
        assert t.apply(finish_3) is None and t.state is S.BUILDING
        f.waited(timed_out=False)
        step = f.next(t)
        assert isinstance(step, Answer) and step.result.data["started"] is True
        assert step.result.data["agent_status"] == "no_agent"

    def test_unknown_outcome_is_read_from_the_store(self) -> None:
        """The tracker never learnt how build 3 ended (re-derived from the rows after build 4):
        the flow asks the store instead of guessing, then answers from the stored build."""
        t, f = started()
        t2 = Tracker.from_facts(
            WorkspaceFacts(WS, build(4, Transition.STOP), None, seq=t.seq + 5)
        )  # what a resync knows: the latest build only
        f.waited(timed_out=False)
        step = f.next(t2)
        assert step == ReadBuild("b3")
        f.read(Build("b3", "w", 3, Transition.START, JobStatus.SUCCEEDED, has_agent=True))
        step = f.next(t2)
        assert isinstance(step, Answer)
        assert step.result.data == {
            "started": True,
            "workspace_name": "dev",
            "build_id": "b3",
            "agent_status": "not_ready",
            "superseded_by": {"transition": "stop", "build_id": "b4"},
        }

    def test_create_during_a_delete_build_creates_afresh(self) -> None:
        """A create waits out a delete build, then creates a new workspace (not 'already_exists')."""
        t = tracker(S.BUILDING, building=Transition.DELETE)
        f = flow(R.CREATE)
        step = f.next(t)
        assert isinstance(step, WaitBuild) and f.number is None
        finish(t)
        t.apply(ev(EventKind.WORKSPACE_DELETED, t.build_number, Transition.DELETE))
        f.waited(timed_out=False)
        assert f.next(t) == Create("w")
