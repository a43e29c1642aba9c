"""The warm pools' decisions (issue 28 item 1), on values: which member a claim takes, when the
keeper builds, retires and wakes, and what the claim and fill writes change."""

from __future__ import annotations

import pytest

from workspace_lifecycle import pools, writes
from workspace_lifecycle.errors import NotFoundError
from workspace_lifecycle.machine import derive_state
from workspace_lifecycle.values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    Deadline,
    EventKind,
    JobStatus,
    Policy,
    Reason,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
    WorkspaceState,
)

POOL = pools.Pool("default", size=3, parameters={"image": "py"}, ttl=600)
HOLDER = POOL.holder


def member(
    n: int,
    *,
    status: JobStatus = JobStatus.SUCCEEDED,
    agent: AgentLifecycle | None = AgentLifecycle.READY,
    transition: Transition = Transition.START,
    deadline: float | None = 1000.0,
    number: int = 1,
) -> WorkspaceFacts:
    ws = Workspace(
        f"w{n}",
        HOLDER,
        "",
        "default",
        deadline=None if deadline is None else Deadline(deadline, Reason.RETENTION),
    )
    has_agent = None if status is not JobStatus.SUCCEEDED else agent is not None
    build = Build(f"b{n}", ws.workspace_id, number, transition, status, has_agent=has_agent)
    reported = None if agent is None else Agent(ws.workspace_id, number, agent)
    return WorkspaceFacts(ws, build, reported, seq=n)


class TestPool:
    def test_a_pool_checks_its_values(self) -> None:
        """Name, size and ttl are checked as every other input, in one sentence each."""
        with pytest.raises(ValueError, match="size"):
            pools.Pool("p", size=-1)
        with pytest.raises(ValueError, match="ttl"):
            pools.Pool("p", size=1, ttl=0)
        with pytest.raises(ValueError, match="pool name"):
            pools.Pool("a\nb", size=1)
        with pytest.raises(ValueError, match="parameter"):
            pools.Pool("p", size=1, parameters={"n": 3})  # type: ignore[dict-item]

    def test_the_holder_is_no_chat_a_caller_can_name(self) -> None:
        """The holder's id has a control character, refused in every id a caller passes."""
        from workspace_lifecycle.checks import identifier

        with pytest.raises(ValueError):
            identifier("chat_id", HOLDER)
        assert pools.pool_of(HOLDER) == "default" and pools.pool_of("default") is None


class TestChoose:
    def test_only_ready_unexpired_members_are_claimed(self) -> None:
        """Building, failed, agent-starting and expired members are never chosen."""
        candidates = [
            member(1, status=JobStatus.RUNNING, agent=None),
            member(2, status=JobStatus.FAILED, agent=None),
            member(3, agent=AgentLifecycle.STARTING),
            member(4, deadline=10.0),  # expired at 100
            member(5, agent=AgentLifecycle.START_ERROR),
        ]
        assert pools.choose(candidates, "chat-1", 100.0) is None
        ready = member(6)
        assert pools.choose([*candidates, ready], "chat-1", 100.0) == ready

    def test_a_member_without_an_agent_is_ready_once_built(self) -> None:
        assert pools.is_ready(member(1, agent=None), 0.0)

    def test_claimers_spread_over_the_ready_members(self) -> None:
        """Many chats choose among 10 ready members: most members are somebody's first choice,
        so concurrent claims mostly do not collide."""
        ready = [member(i) for i in range(10)]
        chosen = {pools.choose(ready, f"chat-{i}", 0.0).workspace_id for i in range(100)}  # type: ignore[union-attr]
        assert len(chosen) >= 8

    def test_the_choice_is_stable(self) -> None:
        ready = [member(i) for i in range(5)]
        assert pools.choose(ready, "chat-7", 0.0) == pools.choose(list(reversed(ready)), "chat-7", 0.0)


class TestKeeperDecisions:
    def test_shortfall_counts_ready_and_warming_members(self) -> None:
        """Ready and on-their-way members count; failed, expired and deleting ones do not."""
        members = [
            member(1),
            member(2, status=JobStatus.PENDING, agent=None),
            member(3, status=JobStatus.FAILED, agent=None),
        ]
        assert pools.shortfall(POOL, members, 0.0) == 1
        assert pools.shortfall(POOL, [*members, member(4)], 0.0) == 0
        assert pools.shortfall(POOL, [member(1, deadline=5.0), member(2), member(4)], 10.0) == 1
        assert pools.shortfall(pools.Pool("x", size=0), [], 0.0) == 0

    def test_retired_are_the_failed_stopped_and_expired_with_nothing_in_flight(self) -> None:
        failed = member(1, status=JobStatus.FAILED, agent=None)
        stopped = member(2, transition=Transition.STOP, agent=None, number=2)
        expired = member(3, deadline=5.0)
        agent_failed = member(4, agent=AgentLifecycle.START_ERROR)
        deleting = member(5, transition=Transition.DELETE, status=JobStatus.RUNNING, agent=None, number=2)
        building = member(6, status=JobStatus.RUNNING, agent=None)
        ready = member(7)
        got = pools.retired([failed, stopped, expired, agent_failed, deleting, building, ready], 10.0)
        assert [m.workspace_id for m in got] == ["w1", "w2", "w3", "w4"]

    def test_next_expiry_is_the_earliest_future_ttl(self) -> None:
        assert pools.next_expiry([member(1, deadline=50.0), member(2, deadline=20.0)], 10.0) == 20.0
        assert pools.next_expiry([member(1, deadline=5.0), member(2, deadline=None)], 10.0) is None

    def test_only_news_that_can_give_the_keeper_work_wakes_it(self) -> None:
        """Claims, failures, stops and deletes of members wake it; a member coming up does not,
        nor does news of chats' own workspaces."""
        ws = Workspace("w1", HOLDER, "", "default")
        start = Build("b1", "w1", 1, Transition.START, JobStatus.PENDING)

        def ev(kind: EventKind, build: Build | None = None, **fields: object) -> StoreEvent:
            return StoreEvent.about(kind, ws, build, seq=1, at=0.0, **fields)

        assert pools.wakes_keeper(ev(EventKind.BUILD_QUEUED, start, status=JobStatus.PENDING)) is None
        assert pools.wakes_keeper(ev(EventKind.BUILD_UPDATED, start, status=JobStatus.RUNNING)) is None
        assert pools.wakes_keeper(ev(EventKind.BUILD_FINISHED, start, status=JobStatus.SUCCEEDED)) is None
        assert pools.wakes_keeper(ev(EventKind.AGENT_UPDATED, agent=AgentLifecycle.READY)) is None
        assert pools.wakes_keeper(ev(EventKind.DEADLINE_SET)) is None
        assert pools.wakes_keeper(ev(EventKind.CHAT_BOUND)) is None  # a fill
        assert pools.wakes_keeper(ev(EventKind.BUILD_FINISHED, start, status=JobStatus.FAILED)) == "default"
        assert pools.wakes_keeper(ev(EventKind.AGENT_UPDATED, agent=AgentLifecycle.START_ERROR)) == "default"
        assert pools.wakes_keeper(ev(EventKind.WORKSPACE_DELETED)) == "default"
        delete = Build("b2", "w1", 2, Transition.DELETE, JobStatus.PENDING)
        assert pools.wakes_keeper(ev(EventKind.BUILD_QUEUED, delete, status=JobStatus.PENDING)) == "default"
        claimed = Workspace("w1", "chat-1", "alice", "dev")
        bound = StoreEvent.about(
            EventKind.CHAT_BOUND, claimed, None, seq=2, at=0.0, details={"pool": "default"}
        )
        assert pools.wakes_keeper(bound) == "default" and pools.claimed_from(bound) == "default"
        own = StoreEvent.about(EventKind.CHAT_BOUND, claimed, None, seq=2, at=0.0)
        assert pools.wakes_keeper(own) is None and pools.claimed_from(own) is None

    def test_counts(self) -> None:
        members = [member(1), member(2, status=JobStatus.RUNNING, agent=None), member(3, deadline=1.0)]
        assert pools.counts(POOL, members, 10.0).as_dict() == {
            "pool": "default",
            "size": 3,
            "ready": 1,
            "warming": 1,
            "other": 1,
        }


class TestWrites:
    def test_fill_queues_a_member_with_its_ttl_until_the_pool_is_full(self) -> None:
        write = writes.fill_pool(None, [], POOL, workspace_id="w9", build_id="b9", at=100.0)
        assert write is not None and write.workspace is not None and write.build is not None
        assert write.workspace.chat_id == HOLDER and write.workspace.owner == ""
        assert write.workspace.deadline == Deadline(700.0, Reason.RETENTION)
        assert write.build.parameters == {"image": "py"} and write.queued
        assert write.chat == Chat(HOLDER, "", None)
        assert [e.kind for e in write.events] == [
            EventKind.CHAT_BOUND,
            EventKind.BUILD_QUEUED,
            EventKind.DEADLINE_SET,
        ]
        full = [member(1), member(2), member(3)]
        assert writes.fill_pool(Chat(HOLDER, ""), full, POOL, workspace_id="w9", build_id="b9", at=0) is None

    def test_a_finished_member_keeps_its_ttl(self) -> None:
        """The holder has no policy: a member's start build ends without re-arming its deadline."""
        facts = member(1, status=JobStatus.RUNNING, agent=None)
        assert facts.latest_build is not None
        write = writes.finish_build(
            facts.latest_build, facts.workspace, JobStatus.SUCCEEDED, None, has_agent=True, at=5.0
        )
        assert write.workspace is None  # the deadline is as it was

    def test_claim_binds_a_ready_member_and_arms_the_chat_policy(self) -> None:
        chat = Chat("chat-1", "alice", policy=Policy(idle_stop_after=60))
        write = writes.claim_pooled(
            chat,
            [member(1, status=JobStatus.RUNNING, agent=None), member(2)],
            pool="default",
            expected_workspace_id=None,
            replaced=None,
            name="dev",
            at=100.0,
        )
        assert write is not None and write.workspace is not None and write.chat is not None
        assert (write.workspace.workspace_id, write.workspace.chat_id, write.workspace.owner) == (
            "w2",
            "chat-1",
            "alice",
        )
        assert write.workspace.name == "dev"
        assert write.workspace.deadline == Deadline(160.0, Reason.IDLE)
        assert write.chat.workspace_id == "w2"
        assert write.build is None and write.agent is None  # nothing rebuilt: it answers at once
        assert pools.claimed_from(write.events[0]) == "default"
        facts = writes.applied(member(2), write, 7)
        assert derive_state(facts) is WorkspaceState.AGENT_READY

    def test_claim_is_a_compare_and_set_on_the_chat(self) -> None:
        """A chat bound since it was read claims nothing; nothing ready claims nothing."""
        bound = Chat("chat-1", "alice", "w0")
        args = {"pool": "default", "replaced": None, "name": "dev", "at": 0.0}
        assert writes.claim_pooled(bound, [member(1)], expected_workspace_id=None, **args) is None  # type: ignore[arg-type]
        free = Chat("chat-1", "alice")
        assert writes.claim_pooled(free, [], expected_workspace_id=None, **args) is None  # type: ignore[arg-type]
        with pytest.raises(NotFoundError):
            writes.claim_pooled(None, [member(1)], expected_workspace_id=None, **args)  # type: ignore[arg-type]
