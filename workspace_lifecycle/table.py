"""The compiled lookup: a python-statemachine class read back into a dict per state.

:class:`~workspace_lifecycle.machine.WorkspaceMachine` is the one declaration of the transition
table (the diagram, validation and the docs read it). The hot path does not call
python-statemachine's ``send``: at import, :func:`compile_table` reads the class's transitions
back (events, sources, targets, ``cond`` names, internal flags) into a dict per state, and
:func:`select` looks an event up there (``machine.TABLE`` is that lookup). Guards are plain
functions of ``(tracker, event)`` declared with :func:`guard`: python-statemachine calls them as
methods (through the tracker bound to the machine's model), the compiled table calls the very
same functions, resolved from the ``cond`` names the transitions declare.

Rules for this module: no I/O, no awaits, no clocks, no imports of anyio or any driver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs
from statemachine import StateMachine

from .values import StoreEvent, WorkspaceState

__all__ = ["Arc", "Guard", "Model", "Table", "compile_table", "guard", "select"]


class Model(Protocol):
    """What the table is looked up for: a model in one of the states (the machine's
    :class:`~workspace_lifecycle.machine.Tracker`)."""

    @property
    def state(self) -> WorkspaceState: ...


#: A guard of the table: a pure function of the model the table is looked up for (the
#: machine's tracker) and the event being applied.
Guard = Callable[[Any, StoreEvent], bool]
_GUARD_ATTR = "__workspace_guard__"


def guard(fn: Guard) -> Callable[[StateMachine, StoreEvent], bool]:
    """Declare ``fn`` as a guard of a machine (:class:`~workspace_lifecycle.machine.WorkspaceMachine`),
    under ``fn``'s name.

    python-statemachine calls the returned method, which hands ``fn`` the tracker bound to the
    machine's model (:func:`~workspace_lifecycle.machine.bound_machine`); :func:`compile_table`
    finds ``fn`` itself behind the ``cond`` name, so both paths run the same function.
    """

    def method(self: StateMachine, ev: StoreEvent) -> bool:
        return fn(self.model.tracker, ev)

    method.__name__ = method.__qualname__ = fn.__name__.lstrip("_")
    method.__doc__ = fn.__doc__
    setattr(method, _GUARD_ATTR, fn)
    return method


@attrs.frozen
class Arc:
    """One compiled transition: ``event`` moves ``source`` to ``target`` if every guard holds.

    ``conds`` are the guard names the class declares; ``guards`` the functions behind them.
    """

    event: str
    source: WorkspaceState
    target: WorkspaceState
    conds: tuple[str, ...]
    internal: bool
    guards: tuple[Guard, ...] = attrs.field(eq=False, repr=False)


#: state -> event id -> the arcs to try, in declaration order (the first whose guards hold wins).
Table = Mapping[WorkspaceState, Mapping[str, tuple[Arc, ...]]]


def compile_table(machine: type[StateMachine]) -> Table:
    """Read ``machine``'s transitions back into a lookup: state -> event -> arcs.

    Everything the hot path needs is taken from the class (python-statemachine's own
    ``states``, ``transitions``, ``cond`` specs); guards are resolved from the ``cond`` names
    to the functions declared with :func:`guard`. What the lookup could not honour (actions,
    validators, ``unless``, boolean expressions, several targets) raises ``TypeError`` here,
    at import, rather than being silently skipped.
    """
    for name in dir(machine):
        if name.startswith(("on_", "before_", "after_")) and callable(getattr(machine, name, None)):
            raise TypeError(f"{machine.__name__}.{name}: the compiled table runs no actions")
    table: dict[WorkspaceState, dict[str, list[Arc]]] = {}
    for state in machine.states:
        source = WorkspaceState(state.value)
        if any(not spec.is_convention for spec in (*state.enter, *state.exit)):
            raise TypeError(f"state {state.id}: the compiled table runs no enter/exit actions")
        arcs = table.setdefault(source, {})
        for transition in state.transitions:
            if len(transition.targets) != 1 or transition.target is None:
                raise TypeError(f"{transition}: the compiled table needs exactly one target")
            for group in (transition.validators, transition.before, transition.on, transition.after):
                if any(not spec.is_convention for spec in group):
                    raise TypeError(f"{transition}: the compiled table runs no validators or actions")
            conds: list[str] = []
            guards: list[Guard] = []
            for spec in transition.cond:
                name = spec.func
                if spec.expected_value is not True or not isinstance(name, str) or not name.isidentifier():
                    raise TypeError(f"{transition}: cond {name!r} is not the name of a guard")
                fn = getattr(getattr(machine, name, None), _GUARD_ATTR, None)
                if fn is None:
                    raise TypeError(f"{transition}: cond {name!r} is not declared with guard()")
                conds.append(name)
                guards.append(fn)
            target = WorkspaceState(transition.target.value)
            for event in transition.events:
                arcs.setdefault(str(event), []).append(
                    Arc(str(event), source, target, tuple(conds), bool(transition.internal), tuple(guards))
                )
    return {
        state: {event: tuple(arcs) for event, arcs in by_event.items()} for state, by_event in table.items()
    }


def select(table: Table, tracker: Model, event: str, ev: StoreEvent) -> Arc | None:
    """The arc ``event`` takes from ``tracker``'s state: the first whose guards all hold, in
    declaration order (as python-statemachine's ``send`` picks it); ``None`` if there is none."""
    for arc in table[tracker.state].get(event, ()):
        for holds in arc.guards:
            if not holds(tracker, ev):
                break
        else:
            return arc
    return None
