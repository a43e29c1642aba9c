"""``_replace.replace``: the same value as ``attrs.evolve``, on every value type the writes copy."""

from __future__ import annotations

import attrs
import pytest

from workspace_lifecycle import limits, values
from workspace_lifecycle._replace import replace
from workspace_lifecycle.between_turns import Deadline, Hold
from workspace_lifecycle.values import Agent, Build, Chat, StoreEvent, Workspace
from workspace_lifecycle.vocabulary import AgentLifecycle, EventKind, JobStatus, Reason, Transition

BUILD = Build(
    "b1",
    "w1",
    3,
    Transition.START,
    JobStatus.RUNNING,
    error="e",
    has_agent=True,
    worker="p",
    parameters={"region": "eu"},
    details={"why": 1},
    reason=Reason.IDLE,
    lease_token="t",
    lease_expires_at=100.0,
)
WORKSPACE = Workspace("w1", "c1", "alice", "dev", deadline=Deadline(50.0, Reason.IDLE))
EVENT = StoreEvent(
    seq=0, kind=EventKind.AGENT_UPDATED, workspace_id="w1", chat_id="c1", agent=AgentLifecycle.READY
)

CASES = [
    (BUILD, {"lease_expires_at": 130.0}),
    (BUILD, {"status": JobStatus.SUCCEEDED, "lease_expires_at": None, "worker": None}),
    (WORKSPACE, {"deadline": None}),
    (WORKSPACE, {"deadline": Deadline(90.0, Reason.IDLE, warn_at=80.0)}),
    (Deadline(10.0, Reason.IDLE), {"warned": True}),
    (Agent("w1", 3, AgentLifecycle.READY), {"lifecycle": AgentLifecycle.OFF}),
    (Chat("c1", "alice", "w1"), {"workspace_id": None}),
    (EVENT, {"seq": 7}),
]


def _all_fields(value: object) -> dict[str, object]:
    return {f.name: getattr(value, f.name) for f in attrs.fields(type(value))}


@pytest.mark.parametrize(
    ("value", "changes"), CASES, ids=lambda c: type(c).__name__ if attrs.has(type(c)) else ""
)
def test_the_same_value_as_attrs_evolve(value: object, changes: dict[str, object]) -> None:
    made, expected = replace(value, **changes), attrs.evolve(value, **changes)
    assert type(made) is type(expected)
    assert _all_fields(made) == _all_fields(expected)  # every field, those outside eq too
    assert made == expected and hash(made) == hash(expected)
    assert _all_fields(value) == _all_fields(attrs.evolve(value))  # the original is untouched


def test_a_changed_field_is_validated() -> None:
    with pytest.raises(TypeError):
        replace(BUILD, status="running")  # not a JobStatus: Build's validator refuses it
    with pytest.raises(ValueError):
        replace(Deadline(10.0, Reason.IDLE), reason=Reason.REQUEST)  # not a deadline's reason


def test_an_unknown_field_is_refused_as_attrs_refuses_it() -> None:
    with pytest.raises(TypeError, match="nope"):
        replace(BUILD, nope=1)


def test_a_class_with_converters_is_copied_by_attrs() -> None:
    # Hold converts its expiry to a float and Usage its limits: only attrs.evolve runs converters.
    assert replace(Hold("t", 10.0), expires_at=20) == Hold("t", 20.0)
    assert type(replace(Hold("t", 10.0), expires_at=20).expires_at) is float
    usage = limits.Usage("alice", 1, 1, limits.Limits(running=3))
    assert replace(usage, running=2) == attrs.evolve(usage, running=2)


def test_every_value_type_of_the_core_copies_like_attrs() -> None:
    """Each attrs class of ``values`` copied with no change equals itself (every field kept)."""
    samples = [BUILD, WORKSPACE, EVENT, Agent("w1", 1, AgentLifecycle.READY), Chat("c1", "a")]
    for sample in samples:
        assert _all_fields(replace(sample)) == _all_fields(sample)
    assert all(attrs.has(type(s)) for s in samples)
    assert values.Build is Build
