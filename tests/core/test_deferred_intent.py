"""A request deferred behind another build, decided in the pure core (issue 29 item 9).

The flow (:mod:`workspace_lifecycle.steps`) says when a request stores, replaces or withdraws
the intent; :func:`workspace_lifecycle.writes.defer_request` stores it under a compare-and-set;
:func:`workspace_lifecycle.writes.finish_build` acts on it in the write that ends the build.
"""

from __future__ import annotations

import pytest

from workspace_lifecycle import writes
from workspace_lifecycle.errors import CorruptStateError
from workspace_lifecycle.machine import Request, Tracker
from workspace_lifecycle.steps import Answer, CatchUp, Defer, Flow, WaitBuild
from workspace_lifecycle.values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    Deferred,
    EventKind,
    JobStatus,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
    WorkspaceState,
    parse_deferred,
)

WS = Workspace("w1", "c1", "alice", "dev")
CHAT = Chat("c1", "alice", "w1")


def in_flight(transition: Transition, number: int = 2, deferred: Deferred | None = None) -> WorkspaceFacts:
    ws = Workspace("w1", "c1", "alice", "dev", deferred=deferred)
    return WorkspaceFacts(ws, Build(f"b{number}", "w1", number, transition, JobStatus.RUNNING), None, seq=10)


def flow(request: Request, *, wait: bool) -> Flow:
    f = Flow(request, wait=wait, owner="alice")
    f.tracking(WS)
    return f


class TestTheFlowDecides:
    def test_wait_false_behind_another_kind_of_build_stores_the_request(self) -> None:
        """A start during a stop build, wait=False: store it, then answer ``building``."""
        step = flow(Request.START, wait=False).next(Tracker.from_facts(in_flight(Transition.STOP)))
        assert isinstance(step, Defer)
        assert (step.transition, step.number) == (Transition.START, 2)
        assert step.result is not None and step.result.data["status"] == "building"

    def test_an_identical_stored_request_is_not_written_again(self) -> None:
        """The same deferred start again: answered at once, nothing to write."""
        facts = in_flight(Transition.STOP, deferred=Deferred(Transition.START, 2, "alice"))
        step = flow(Request.START, wait=False).next(Tracker.from_facts(facts))
        assert isinstance(step, Answer) and step.result.data["status"] == "building"

    def test_a_later_request_of_another_kind_replaces_it(self) -> None:
        """A delete after a deferred start, both during the stop build: the delete is stored."""
        facts = in_flight(Transition.STOP, deferred=Deferred(Transition.START, 2, "alice"))
        step = flow(Request.DELETE, wait=False).next(Tracker.from_facts(facts))
        assert isinstance(step, Defer) and step.transition is Transition.DELETE

    @pytest.mark.parametrize("wait", [False, True])
    def test_a_stop_after_a_deferred_start_withdraws_it(self, wait: bool) -> None:
        """The stop joins the stop build in flight and withdraws the start stored behind it:
        the latest request wins, the workspace stays stopped."""
        facts = in_flight(Transition.STOP, deferred=Deferred(Transition.START, 2, "alice"))
        f = flow(Request.STOP, wait=wait)
        step = f.next(Tracker.from_facts(facts))
        assert isinstance(step, Defer) and step.transition is None and step.number == 2
        after = in_flight(Transition.STOP)
        following = f.deferred(step, held=True, facts=after)
        if not wait:
            assert isinstance(following, Answer) and following.result.data["status"] == "building"
            return
        assert isinstance(following, CatchUp)
        assert isinstance(f.next(Tracker.from_facts(after)), WaitBuild)  # then it joins the stop

    def test_wait_true_without_a_stored_request_writes_nothing(self) -> None:
        """wait=True behind another kind of build, nothing stored: it waits, as before."""
        step = flow(Request.START, wait=True).next(Tracker.from_facts(in_flight(Transition.STOP)))
        assert step == WaitBuild(2)

    def test_wait_true_replaces_a_stored_request_of_another_kind(self) -> None:
        """wait=True start while a delete is stored behind the stop: the start is stored instead."""
        facts = in_flight(Transition.STOP, deferred=Deferred(Transition.DELETE, 2, "alice"))
        step = flow(Request.START, wait=True).next(Tracker.from_facts(facts))
        assert isinstance(step, Defer) and step.transition is Transition.START and step.result is None

    def test_a_lost_compare_and_set_decides_again(self) -> None:
        """The build ended before the intent was stored: catch up and decide on what is there."""
        f = flow(Request.START, wait=False)
        step = f.next(Tracker.from_facts(in_flight(Transition.STOP)))
        assert isinstance(step, Defer)
        stopped = WorkspaceFacts(WS, Build("b2", "w1", 2, Transition.STOP, JobStatus.SUCCEEDED), None, seq=12)
        assert f.deferred(step, held=False, facts=stopped) == CatchUp(12)

    def test_a_create_is_never_stored(self) -> None:
        """A create behind a stop build finds the workspace stopped (nothing to create) once it
        ends: it is answered, never stored."""
        step = flow(Request.CREATE, wait=False).next(Tracker.from_facts(in_flight(Transition.STOP)))
        assert isinstance(step, Answer)


class TestTheTrackerLearnsIt:
    def test_a_request_deferred_event_sets_it_and_the_finish_clears_it(self) -> None:
        t = Tracker.from_facts(in_flight(Transition.STOP))
        ev = StoreEvent(
            11, EventKind.REQUEST_DEFERRED, "w1", "c1", build_number=2, transition=Transition.START
        )
        assert t.apply(ev) is None and t.deferred is Transition.START
        done = StoreEvent(
            12, EventKind.BUILD_FINISHED, "w1", "c1", 2, "b2", Transition.STOP, JobStatus.SUCCEEDED
        )
        t.apply(done)
        assert t.deferred is None and t.state is WorkspaceState.STOPPED

    def test_news_for_another_build_is_ignored(self) -> None:
        t = Tracker.from_facts(in_flight(Transition.STOP))
        ev = StoreEvent(
            11, EventKind.REQUEST_DEFERRED, "w1", "c1", build_number=1, transition=Transition.START
        )
        t.apply(ev)
        assert t.deferred is None


class TestTheStoreWrites:
    def test_defer_holds_only_while_the_build_is_in_flight(self) -> None:
        ended = WorkspaceFacts(WS, Build("b2", "w1", 2, Transition.STOP, JobStatus.SUCCEEDED), None, seq=12)
        assert (
            writes.defer_request(
                ended, transition=Transition.START, expected_build_number=2, requested_by="a", at=0
            )
            is None
        )
        assert not writes.deferral_holds(ended, 2)
        assert not writes.deferral_holds(in_flight(Transition.STOP, 3), 2)
        write = writes.defer_request(
            in_flight(Transition.STOP),
            transition=Transition.START,
            expected_build_number=2,
            requested_by="a",
            at=0,
        )
        assert write is not None and write.workspace is not None
        assert write.workspace.deferred == Deferred(Transition.START, 2, "a")

    def test_withdrawing_writes_none_and_an_event(self) -> None:
        facts = in_flight(Transition.STOP, deferred=Deferred(Transition.START, 2, "alice"))
        write = writes.defer_request(facts, transition=None, expected_build_number=2, requested_by="b", at=0)
        assert write is not None and write.workspace is not None and write.workspace.deferred is None
        assert [(e.kind, e.transition) for e in write.events] == [(EventKind.REQUEST_DEFERRED, None)]

    @pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED])
    def test_the_stop_builds_finish_queues_the_deferred_start(self, status: JobStatus) -> None:
        """Stopped or failed, a start fires: its build is queued in the finishing write."""
        facts = in_flight(Transition.STOP, deferred=Deferred(Transition.START, 2, "alice"))
        assert facts.latest_build is not None
        write = writes.finish_build(
            facts.latest_build,
            facts.workspace,
            status,
            None,
            has_agent=False,
            at=5,
            chat=CHAT,
            then_build_id="b3",
        )
        assert write.then is not None and (write.then.number, write.then.transition) == (3, Transition.START)
        assert write.then.status is JobStatus.PENDING and write.then.build_id == "b3"
        assert write.workspace is not None and write.workspace.deferred is None
        kinds = [e.kind for e in write.events]
        assert kinds[0] is EventKind.BUILD_FINISHED and EventKind.BUILD_QUEUED in kinds
        after = writes.applied(facts, write, 20)
        assert after.latest_build == write.then

    def test_a_deferred_start_after_a_delete_is_dropped_with_the_workspace(self) -> None:
        """The delete succeeded: nothing to start; the intent is cleared, no build queued."""
        facts = in_flight(Transition.DELETE, deferred=Deferred(Transition.START, 2, "alice"))
        assert facts.latest_build is not None
        write = writes.finish_build(
            facts.latest_build,
            facts.workspace,
            JobStatus.SUCCEEDED,
            None,
            has_agent=False,
            at=5,
            chat=CHAT,
            then_build_id="b3",
        )
        assert write.then is None and write.workspace is not None
        assert write.workspace.deleted and write.workspace.deferred is None

    def test_a_deferred_start_never_fires_on_a_workspace_its_chat_left(self) -> None:
        facts = in_flight(Transition.STOP, deferred=Deferred(Transition.START, 2, "alice"))
        assert facts.latest_build is not None
        moved = Chat("c1", "alice", "w2")
        write = writes.finish_build(
            facts.latest_build,
            facts.workspace,
            JobStatus.SUCCEEDED,
            None,
            has_agent=False,
            at=5,
            chat=moved,
            then_build_id="b3",
        )
        assert write.then is None and write.workspace is not None and write.workspace.deferred is None

    def test_a_deferred_stop_after_a_start_takes_the_new_agents_endpoints_nowhere(self) -> None:
        """A stop deferred behind a start: the start succeeds (its agent created), the stop is
        queued in the same write and disarms the idle deadline the start armed."""
        from workspace_lifecycle.values import Policy

        facts = in_flight(Transition.START, deferred=Deferred(Transition.STOP, 2, "alice"))
        assert facts.latest_build is not None
        write = writes.finish_build(
            facts.latest_build,
            facts.workspace,
            JobStatus.SUCCEEDED,
            None,
            has_agent=True,
            at=5,
            chat=CHAT,
            policy=Policy(idle_stop_after=60),
            then_build_id="b3",
        )
        assert write.then is not None and write.then.transition is Transition.STOP
        assert write.agent == Agent("w1", 2, AgentLifecycle.CREATED)
        assert write.workspace is not None and write.workspace.deadline is None
        assert [e.armed for e in write.events if e.kind is EventKind.DEADLINE_SET][-1] is None

    def test_an_expired_lease_acts_on_it_too(self) -> None:
        """A build failed by its lease's expiry (its worker died) still fires the request."""
        ws = Workspace("w1", "c1", "alice", "dev", deferred=Deferred(Transition.START, 2, "alice"))
        stop = Build(
            "b2",
            "w1",
            2,
            Transition.STOP,
            JobStatus.RUNNING,
            worker="x",
            lease_token="t",
            lease_expires_at=1.0,
        )
        write = writes.expire_lease(stop, ws, "t", at=2.0, chat=CHAT, then_build_id="b3")
        assert write is not None and write.then is not None and write.then.transition is Transition.START


class TestStoredValue:
    def test_round_trip(self) -> None:
        intent = Deferred(Transition.STOP, 4, "bob")
        assert parse_deferred(intent.stored(), key="w1") == intent
        assert parse_deferred(intent.record(), key="w1") == intent

    @pytest.mark.parametrize(
        "bad", ["{", "[]", '{"transition": "fly", "behind": 1, "by": "a"}', '{"behind": 1}']
    )
    def test_a_bad_value_names_the_row(self, bad: str) -> None:
        with pytest.raises(CorruptStateError, match="w9"):
            parse_deferred(bad, key="w9")


def test_the_answer_sentence_is_unchanged() -> None:
    """What the model is told about a deferred request did not change: ``status: building``."""
    step = flow(Request.STOP, wait=False).next(Tracker.from_facts(in_flight(Transition.START)))
    assert isinstance(step, Defer) and step.result is not None
    assert step.result.data == {
        "workspace_name": "dev",
        "status": "building",
        "request": "stop",
        "build_id": "b2",
    }
