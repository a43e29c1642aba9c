"""FaultyStore's list of write names follows the store: every write a DriverStore plan makes can
be named in ``FaultyStore(writes=...)`` (the list had drifted: seven writes added since 0.2 were
refused as unknown)."""

from __future__ import annotations

import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.adapters.driver import Plan
from workspace_lifecycle.faults import ALL_WRITES, FaultyStore

#: Plans that only read (they decide no write).
READ_PLANS = frozenset({"pool_members"})


def _plans(cls: type[Plan[object]]) -> set[type[Plan[object]]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _plans(sub)
    return found


def test_every_write_plan_is_a_nameable_write() -> None:
    ops = {plan.op for plan in _plans(Plan) if plan.op}
    assert "request_build" in ops and "touch" in ops  # the store's plans were found
    assert ops - READ_PLANS == ALL_WRITES


@pytest.mark.parametrize("name", sorted(ALL_WRITES))
def test_each_write_can_be_faulted(name: str) -> None:
    faulty = FaultyStore(wl.MemoryStore(), writes={name}, fail_before=1.0)
    assert faulty.writes == {name}


def test_an_unknown_write_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown write methods"):
        FaultyStore(wl.MemoryStore(), writes={"no_such_write"})
