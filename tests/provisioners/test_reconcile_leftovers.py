"""The restart decision over the leftovers of a workspace (issue 29, item 3): processes that
carry a workspace's marker but are not its running recorded process are always ended; a process
whose end was already recorded is never reported again; a workspace the store does not know
runs nothing. Every combination, pure (``reconcile`` is in the core)."""

from __future__ import annotations

import itertools

import attrs

from workspace_lifecycle.reconcile import Adopt, Afterwards, Ended, Found, reconcile
from workspace_lifecycle.values import (
    Agent,
    AgentLifecycle,
    Build,
    JobStatus,
    Transition,
    Workspace,
    WorkspaceFacts,
)

WS = Workspace("w1", "c1", "alice", "dev")
BUILDS = [None] + [(n, s) for n in (1, 2, 3) for s in JobStatus]
AGENTS = [None] + [(n, lc) for n in (1, 2) for lc in AgentLifecycle]
STORED = [None, *list(itertools.product([False, True], BUILDS, AGENTS))]
FOUND = list(itertools.product([False, True], [None, "rec"], [False, True], [False, True]))


def facts_of(
    stored: tuple[bool, tuple[int, JobStatus] | None, tuple[int, AgentLifecycle] | None] | None,
) -> WorkspaceFacts | None:
    if stored is None:
        return None
    deleted, build, agent = stored
    latest = None
    if build is not None:
        latest = Build(f"b{build[0]}", "w1", build[0], Transition.START, build[1], lease_token=f"t{build[0]}")
    row = Agent("w1", agent[0], agent[1]) if agent is not None else None
    return WorkspaceFacts(attrs.evolve(WS, deleted=deleted), latest, row, seq=9)


class TestLeftovers:
    def test_every_combination(self) -> None:
        """Every stored state (or none) against every finding (alive, recorded lease,
        leftovers, end recorded): 12,784 decisions."""
        n = 0
        for stored, (alive, lease, leftovers, recorded) in itertools.product(STORED, FOUND):
            facts = facts_of(stored)
            found = Found(alive, 2, lease, leftovers=leftovers, recorded=recorded)
            decision = reconcile(facts, found)
            # Leftovers are ended, whatever the store says, whether the process lives or not.
            assert decision.end_leftovers is leftovers
            # Without them, the decision is the one for the process alone.
            alone = reconcile(facts, attrs.evolve(found, leftovers=False))
            assert attrs.evolve(decision, end_leftovers=False) == alone
            if facts is None:  # unknown to the store: nothing of it may run, nothing to report
                expected = (
                    Adopt(lease, False, Afterwards.END, leftovers)
                    if alive
                    else Ended(end_leftovers=leftovers)
                )
                assert decision == expected
            elif not alive and not recorded:  # its end was recorded (and reported) already
                assert decision == Ended(end_leftovers=leftovers)
            elif not alive:
                assert isinstance(decision, Ended)
            else:  # alive: whether its end was recorded does not matter
                assert decision == reconcile(facts, attrs.evolve(found, recorded=not recorded))
            n += 1
        assert n == 12_784 == len(STORED) * len(FOUND)

    def test_a_dead_process_with_leftovers_is_still_reported(self) -> None:
        """A ready agent whose process died, its daemon alive: ``off``, and the daemon ends."""
        facts = facts_of((False, (2, JobStatus.SUCCEEDED), (2, AgentLifecycle.READY)))
        decision = reconcile(facts, Found(False, 2, "t2", leftovers=True))
        assert decision == Ended(AgentLifecycle.OFF, "t2", end_leftovers=True)
