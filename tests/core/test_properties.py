"""SPEC's property: the state derived from the rows equals the state reached by the events.

Random histories of store operations (the kit's strategies) are played on the memory store;
their event log is then delivered with repeats and reorders to fresh trackers. The kit's
``RuleBasedStateMachine`` then drives the whole runtime over the memory store (asyncio and
trio), with a simulated provisioner, and over SQLite.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

import workspace_lifecycle as wl
from workspace_lifecycle.testing import (
    Create,
    Finish,
    HistoryOp,
    Report,
    applied_states,
    deliveries,
    histories,
    make_lifecycle_machine,
    run_history,
)


async def _play(ops: list[HistoryOp]) -> tuple[list[wl.StoreEvent], dict[str, wl.WorkspaceState]]:
    async with wl.open_store("memory://") as store:
        await run_history(store, ops)
        events = list(await store.read_events(0))
        derived = {}
        for ws in {e.workspace_id for e in events}:
            derived[ws] = wl.derive_state(await store.workspace_facts(ws))
        return events, derived


class TestDerivedEqualsApplied:
    @given(histories(max_size=40))
    def test_in_order(self, ops: list[HistoryOp]) -> None:
        """Events applied in commit order reach the derived state of every workspace."""
        events, derived = anyio.run(_play, ops)
        assert applied_states(events) == derived

    @given(histories(max_size=40), st.data())
    def test_repeated_and_reordered(self, ops: list[HistoryOp], data: st.DataObject) -> None:
        """Any delivery order, with repeats, reaches the same state as the rows."""
        events, derived = anyio.run(_play, ops)
        delivered = data.draw(deliveries(events), label="delivery")
        assert applied_states(delivered) == derived

    @given(histories(max_size=40), st.data())
    def test_repeats_only(self, ops: list[HistoryOp], data: st.DataObject) -> None:
        """In-order delivery with duplicates inserted anywhere changes nothing."""
        events, derived = anyio.run(_play, ops)
        delivered = data.draw(deliveries(events, reorder=False), label="delivery")
        assert applied_states(delivered) == derived

    def test_reordered_finish_after_agent_report(self) -> None:
        """The case that once failed: a build's finish delivered after its agent's report."""
        ops: list[HistoryOp] = [
            Create("c1"),
            Finish("c1", wl.JobStatus.SUCCEEDED, has_agent=True),
            Report("c1", wl.AgentLifecycle.READY),
        ]
        events, derived = anyio.run(_play, ops)
        assert list(derived.values()) == [wl.WorkspaceState.AGENT_READY]
        finish = next(e for e in events if e.kind is wl.EventKind.BUILD_FINISHED)
        reordered = [e for e in events if e is not finish] + [finish]
        assert applied_states(reordered) == derived


MemoryMachine = make_lifecycle_machine(lambda: wl.open_store("memory://"), name="MemoryMachine")
MemoryMachine.TestCase.settings = settings(stateful_step_count=30)
TestMemoryMachine = MemoryMachine.TestCase

TrioMachine = make_lifecycle_machine(lambda: wl.open_store("memory://"), backend="trio", name="TrioMachine")
TrioMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=30)
TestTrioMachine = TrioMachine.TestCase

HoldsMachine = make_lifecycle_machine(
    lambda clock: wl.open_store("memory://", clock=clock), clocked=True, name="HoldsMachine"
)
HoldsMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=40)
TestHoldsMachine = HoldsMachine.TestCase

SimulatedMachine = make_lifecycle_machine(
    lambda: wl.open_store("memory://"),
    provisioner=lambda store: wl.SimulatedProvisioner(store, fail=0.3, seed=7),
    name="SimulatedMachine",
)
SimulatedMachine.TestCase.settings = settings(max_examples=15, stateful_step_count=20)
TestSimulatedMachine = SimulatedMachine.TestCase


def test_sqlite_machine(tmp_path: Path) -> None:
    """The same stateful test over SQLite (a fresh database file per example)."""
    machine = make_lifecycle_machine(
        lambda: wl.open_store(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"), name="SQLiteMachine"
    )
    machine.TestCase.settings = settings(max_examples=10, stateful_step_count=20)
    machine.TestCase().runTest()
