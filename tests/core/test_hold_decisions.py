"""The pure decisions of turn holds (writes.hold_turn, writes.release_turn, writes.fire_deadline
with holds, deadlines.held_past), on values: no store, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workspace_lifecycle import deadlines, writes
from workspace_lifecycle.errors import HoldLostError
from workspace_lifecycle.values import (
    Build,
    Chat,
    Deadline,
    Hold,
    JobStatus,
    Policy,
    Reason,
    Transition,
    Workspace,
    WorkspaceFacts,
)

IDLE = 60.0
CHAT = Chat("c1", "alice", "w1", policy=Policy(idle_stop_after=IDLE))


def running(*holds: Hold, deadline: float = 1060.0) -> WorkspaceFacts:
    ws = Workspace("w1", "c1", "alice", "dev", deadline=Deadline(deadline, Reason.IDLE), holds=holds)
    build = Build("b1", "w1", 1, Transition.START, JobStatus.SUCCEEDED, has_agent=False)
    return WorkspaceFacts(ws, build, None, 5)


class TestHoldTurn:
    def test_take_renew_and_clear_the_lapsed(self) -> None:
        facts = running(Hold("dead", 990.0), Hold("t1", 1020.0))
        write = writes.hold_turn(facts, "t1", renew=True, at=1000.0, hold_seconds=30)
        assert write is not None and write.workspace is not None
        assert write.workspace.holds == (Hold("t1", 1030.0),) and write.events == ()

    @pytest.mark.parametrize("holds", [(), (Hold("t1", 1000.0),), (Hold("t1", 999.0),)])
    def test_a_lapsed_or_cleared_hold_is_not_renewed(self, holds: tuple[Hold, ...]) -> None:
        with pytest.raises(HoldLostError):
            writes.hold_turn(running(*holds), "t1", renew=True, at=1000.0, hold_seconds=30)

    def test_hold_seconds_are_checked(self) -> None:
        with pytest.raises(ValueError, match="hold_seconds"):
            writes.hold_turn(running(), "t1", renew=False, at=1000.0, hold_seconds=0)


class TestReleaseTurn:
    def test_the_last_release_arms_the_countdown(self) -> None:
        write = writes.release_turn(running(Hold("t1", 1030.0)), "t1", CHAT.policy, at=1010.0)
        assert write is not None and write.workspace is not None
        assert write.workspace.deadline == Deadline(1010.0 + IDLE, Reason.IDLE)
        assert [e.kind.value for e in write.events] == ["deadline_set"]

    def test_another_live_hold_keeps_holding(self) -> None:
        facts = running(Hold("t1", 1030.0), Hold("t2", 1025.0))
        write = writes.release_turn(facts, "t1", CHAT.policy, at=1010.0)
        assert write is not None and write.workspace is not None
        assert write.workspace.holds == (Hold("t2", 1025.0),) and write.events == ()

    def test_a_hold_that_is_gone_releases_nothing(self) -> None:
        assert writes.release_turn(running(), "t1", CHAT.policy, at=1010.0) is None


holds = st.lists(st.builds(Hold, st.sampled_from(["a", "b", "c"]), st.floats(900.0, 1200.0)), max_size=3).map(
    tuple
)


@given(holds=holds, at=st.floats(1060.0, 1400.0))
def test_a_fire_never_stops_a_held_workspace(holds: tuple[Hold, ...], at: float) -> None:
    """Whatever the holds: an idle stop fires only once every hold ended idle_stop_after ago,
    and otherwise the deadline is put off to exactly the latest end + idle_stop_after."""
    facts = running(*holds)
    assert facts.workspace.deadline is not None
    write = writes.fire_deadline(facts, chat=CHAT, expected=facts.workspace.deadline, build_id="b2", at=at)
    assert write is not None
    latest = max((h.expires_at for h in holds), default=-1.0)
    if latest + IDLE > at:
        assert write.build is None and write.workspace is not None
        assert write.workspace.deadline == Deadline(latest + IDLE, Reason.IDLE)
        assert all(not h.due(at) for h in write.workspace.holds)
        assert deadlines.held_past(holds, CHAT.policy, at) == write.workspace.deadline
    else:
        assert write.build is not None and write.build.transition is Transition.STOP
