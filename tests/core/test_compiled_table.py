"""The compiled lookup (``machine.TABLE``) and python-statemachine's ``send`` are one table.

``WorkspaceMachine`` is the one declaration; the hot path looks events up in a table compiled
from it at import. These tests prove the two agree on every (state, event, guard outcome), with
the real guards on every input they read and with every guard forced either way, and that the
lookup is read from the class (a changed class changes it; nothing is written twice).
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import pytest
from statemachine import State, StateMachine
from statemachine.exceptions import TransitionNotAllowed
from statemachine.states import States

from workspace_lifecycle import (
    AgentLifecycle,
    EventKind,
    InvalidEventError,
    JobStatus,
    StoreEvent,
    Tracker,
    WorkspaceMachine,
    WorkspaceState,
)
from workspace_lifecycle import Transition as BuildTransition
from workspace_lifecycle.machine import (
    _GUARD_ATTR,
    TABLE,
    Request,
    bound_machine,
    compile_table,
    guard,
    select,
)

S = WorkspaceState
EVENTS = sorted(str(event) for event in WorkspaceMachine.events)


def _event(transition: BuildTransition | None) -> StoreEvent:
    return StoreEvent(
        seq=1,
        kind=EventKind.BUILD_FINISHED,
        workspace_id="w",
        chat_id="c",
        build_number=1,
        transition=transition,
        status=JobStatus.SUCCEEDED,
    )


def _cond_names(machine: type[StateMachine]) -> list[str]:
    """Every guard name the class's transitions declare (read from the class, not listed here)."""
    names = {spec.func for state in machine.states for t in state.transitions for spec in t.cond}
    return sorted(str(name) for name in names)


@attrs.define
class _Model:
    """What a python-statemachine instance reads: the state, and the tracker its guards get."""

    state: WorkspaceState
    tracker: Any


def _by_send(machine: type[StateMachine], state: WorkspaceState, event: str, tracker: Any, ev: Any) -> Any:
    """Where python-statemachine's ``send`` takes ``state`` on ``event``; the exception if refused."""
    model = _Model(state, tracker)
    sm = machine(model=model, state_field="state")
    try:
        sm.send(event, ev=ev)
    except TransitionNotAllowed:
        return TransitionNotAllowed
    return model.state


def test_the_lookup_is_compiled_from_the_class() -> None:
    assert compile_table(WorkspaceMachine) == TABLE
    for state in WorkspaceMachine.states:
        declared = {str(e) for t in state.transitions for e in t.events}
        assert set(TABLE[S(state.value)]) == declared
    assert set(TABLE) == set(S)
    # Every guard behind a cond name is the function the class declared for it.
    for by_event in TABLE.values():
        for arcs in by_event.values():
            for arc in arcs:
                for name, fn in zip(arc.conds, arc.guards, strict=True):
                    assert getattr(getattr(WorkspaceMachine, name), _GUARD_ATTR) is fn


def test_the_class_declares_guards() -> None:
    """The test below forces each of these; if the class gained a guard, it is forced too."""
    assert _cond_names(WorkspaceMachine) == ["agent_is_ready", "is_delete", "is_start", "is_stop"]


@pytest.mark.parametrize(
    "outcomes",
    list(itertools.product([False, True], repeat=len(_cond_names(WorkspaceMachine)))),
    ids=lambda o: "".join("T" if v else "F" for v in o),
)
def test_agrees_with_send_on_every_state_event_and_guard_outcome(outcomes: tuple[bool, ...]) -> None:
    """Each guard forced to each outcome: the compiled lookup lands where ``send`` lands."""
    forced = dict(zip(_cond_names(WorkspaceMachine), outcomes, strict=True))
    body = {name: guard(lambda tracker, ev, v=value: v) for name, value in forced.items()}
    machine = type("Forced", (WorkspaceMachine,), body)
    table = compile_table(machine)
    for state, event in itertools.product(S, EVENTS):
        tracker = Tracker("w", "c", state=state)
        arc = select(table, tracker, event, _event(None))
        compiled = TransitionNotAllowed if arc is None else arc.target
        assert compiled == _by_send(machine, state, event, tracker, _event(None)), (state, event, forced)


@pytest.mark.parametrize("transition", [*BuildTransition, None])
def test_real_guards_agree_with_send_on_every_input_they_read(transition: BuildTransition | None) -> None:
    """The real table and guards, through ``Tracker``, against ``send`` on the bound machine."""
    ev = _event(transition)
    for state, event, agent in itertools.product(S, EVENTS, [*AgentLifecycle, None]):
        reference = Tracker("w", "c", state=state, agent=agent)
        try:
            with bound_machine(reference) as sm:
                sm.send(event, ev=ev)
            expected: Any = reference.state
        except TransitionNotAllowed:
            expected = InvalidEventError
        ours = Tracker("w", "c", state=state, agent=agent)
        try:
            ours._send(event, ev)
            got: Any = ours.state
        except InvalidEventError:
            got = InvalidEventError
        assert got == expected, (state, event, agent, transition)
    for state in S:
        with bound_machine(Tracker("w", "c", state=state)) as sm:
            assert Tracker("w", "c", state=state).allowed_events() == {e.id for e in sm.allowed_events}


def test_decisions_read_the_compiled_table() -> None:
    """A request fires exactly where the class declares its ``request_*`` transition."""
    for state, request in itertools.product(S, Request):
        with bound_machine(Tracker("w", "c", state=state)) as sm:
            declared = f"request_{request.value}" in {e.id for e in sm.allowed_events}
        assert (f"request_{request.value}" in TABLE[state]) == declared


class _Variant(StateMachine):
    """Another table over the same states: what the compiler reads is what the class says."""

    validate_disconnected_states = validate_trap_states = False
    s = States({m.value: State(m.value, value=m, initial=m is S.NO_WORKSPACE) for m in S})
    build_queued = s.building.from_(s.no_workspace, s.stopped)
    build_succeeded = s.building.to(s.stopped, cond="is_stop") | s.building.to(s.running)
    agent_ready = s.running.to.itself(internal=True)

    is_stop = guard(lambda tracker, ev: ev.transition is BuildTransition.STOP)


def test_a_changed_class_changes_the_lookup() -> None:
    table = compile_table(_Variant)
    assert set(table[S.BUILDING]) == {"build_succeeded"}
    assert [(a.target, a.conds) for a in table[S.BUILDING]["build_succeeded"]] == [
        (S.STOPPED, ("is_stop",)),
        (S.RUNNING, ()),
    ]
    assert table[S.RUNNING]["agent_ready"][0].internal is True
    assert set(table[S.FAILED]) == set()
    t = Tracker("w", "c", state=S.BUILDING)
    stop = select(table, t, "build_succeeded", _event(BuildTransition.STOP))
    start = select(table, t, "build_succeeded", _event(BuildTransition.START))
    assert (stop and stop.target, start and start.target) == (S.STOPPED, S.RUNNING)


def test_what_the_lookup_cannot_honour_is_refused_at_compile_time() -> None:
    """Actions, ``unless``, boolean expressions and undeclared guards raise, never vanish."""

    class WithAction(_Variant):
        def on_build_queued(self) -> None: ...

    with pytest.raises(TypeError, match="runs no actions"):
        compile_table(WithAction)

    class PlainMethod(_Variant):
        def is_stop(self, ev: StoreEvent) -> bool:
            return True

    with pytest.raises(TypeError, match="not declared with guard"):
        compile_table(PlainMethod)

    class Unless(StateMachine):
        validate_disconnected_states = validate_trap_states = False
        s = States({m.value: State(m.value, value=m, initial=m is S.NO_WORKSPACE) for m in S})
        build_queued = s.no_workspace.to(s.building, unless="is_stop")
        is_stop = guard(lambda tracker, ev: False)

    with pytest.raises(TypeError, match="not the name of a guard"):
        compile_table(Unless)

    class Expression(StateMachine):
        validate_disconnected_states = validate_trap_states = False
        s = States({m.value: State(m.value, value=m, initial=m is S.NO_WORKSPACE) for m in S})
        build_queued = s.no_workspace.to(s.building, cond="is_stop and is_start")
        is_stop = guard(lambda tracker, ev: False)
        is_start = guard(lambda tracker, ev: False)

    with pytest.raises(TypeError, match="not the name of a guard"):
        compile_table(Expression)
