"""The testing kit's stateful test is assembled from mixins (``workspace_lifecycle._lifecycle_kit``):
a mixin left out of :class:`~workspace_lifecycle.testing.LifecycleMachine`'s bases would drop its
rules without a failure anywhere else, so the rules and invariants are named here; and the API
reference, which lists the kit's names by hand, names every class and function it exports."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import workspace_lifecycle as wl
from workspace_lifecycle import testing
from workspace_lifecycle.testing import LifecycleMachine

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"

RULES = [
    "agent_goes_deaf",
    "build_pool_member",
    "claim",
    "concurrent_starts",
    "create",
    "create_pooled",
    "end",
    "fill_pool",
    "finish",
    "hold",
    "other_owner",
    "redeliver",
    "report_agent",
    "request",
    "restart_runtime",
    "set_limits",
    "tick",
]
INVARIANTS = [
    "derived_equals_applied",
    "no_agent_ready_answer_for_an_agent_not_ready",
    "no_idle_stop_while_held",
    "no_owner_above_its_limits",
    "pool_members_belong_to_no_chat",
]


def test_the_machine_has_every_rule_and_invariant_of_its_mixins() -> None:
    state = LifecycleMachine.setup_state()
    assert sorted(rule.function.__name__ for rule in state.rules) == RULES
    assert sorted(inv.function.__name__ for inv in state.invariants) == INVARIANTS
    assert state.initializers == []


def test_the_made_machines_have_them_too() -> None:
    machine = testing.make_lifecycle_machine(lambda: wl.open_store("memory://"), name="Made")
    assert sorted(rule.function.__name__ for rule in machine.setup_state().rules) == RULES


def test_the_reference_lists_every_class_and_function_of_the_kit() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    block = re.search(r"::: workspace_lifecycle\.testing\n(?:    .*\n|      .*\n)*", text)
    assert block is not None, "docs/reference.md has no block for workspace_lifecycle.testing"
    listed = re.search(r"members: \[([^\]]*)\]", block.group(0))
    assert listed is not None, block.group(0)
    members = {name.strip() for name in listed.group(1).split(",")}
    documented = {
        name
        for name in testing.__all__
        if inspect.isclass(getattr(testing, name)) or inspect.isfunction(getattr(testing, name))
    }
    assert documented - members == set(), "names of the kit missing from docs/reference.md"
    assert members - set(testing.__all__) == set()
