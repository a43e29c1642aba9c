"""The plans of :class:`~.store.DriverStore` between turns: fire and warn of a deadline, hold
and release a turn, touch (push the idle deadline)."""

from __future__ import annotations

from collections.abc import Callable

from .. import writes
from ..values import Deadline, Policy
from ._plans import RequestPlan, facts_of
from .base import Outcome
from .driver import Plan, Read, Rows

__all__ = ["FireDeadline", "HoldTurn", "ReleaseTurn", "Touch", "WarnDeadline"]


class FireDeadline(RequestPlan):
    op = "fire_deadline"
    __slots__ = ("clock", "expected", "new_id")

    def __init__(
        self, workspace_id: str, expected: Deadline, clock: Callable[[], float], new_id: Callable[[], str]
    ) -> None:
        super().__init__(Read.workspace(workspace_id))
        self.expected, self.clock, self.new_id = expected, clock, new_id

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = facts_of(rows, f"no workspace {self.read.key!r}")
        write = writes.fire_deadline(
            facts, chat=rows.chat, expected=self.expected, build_id=self.new_id(), at=self.clock()
        )
        return self._decided(facts, write)


class WarnDeadline(RequestPlan):
    """Answered with ``fired`` true when this call wrote the warning."""

    op = "warn_deadline"
    __slots__ = ("clock", "expected")

    def __init__(self, workspace_id: str, expected: Deadline, clock: Callable[[], float]) -> None:
        super().__init__(Read.workspace(workspace_id))
        self.expected, self.clock = expected, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = facts_of(rows, f"no workspace {self.read.key!r}")
        return self._decided(facts, writes.warn_deadline(facts, expected=self.expected, at=self.clock()))

    def answer(self, head: int) -> Outcome:
        outcome = super().answer(head)
        return Outcome(fired=self._write is not None, build=None, facts=outcome.facts)


class HoldTurn(Plan[float | None]):
    op = "hold_turn"
    __slots__ = ("_until", "clock", "hold_seconds", "renew")

    def __init__(
        self, workspace_id: str, token: str, renew: bool, hold_seconds: float, clock: Callable[[], float]
    ) -> None:
        # The workspace's row alone: the holds are in it, so its guard covers them.
        super().__init__(Read.workspace(workspace_id, related=False), token)
        self.renew, self.hold_seconds, self.clock = renew, hold_seconds, clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = facts_of(rows, f"no workspace {self.read.key!r}")
        assert self.lease is not None
        write = writes.hold_turn(
            facts, self.lease, renew=self.renew, at=self.clock(), hold_seconds=self.hold_seconds
        )
        self._until = None
        if write is not None and write.workspace is not None:
            self._until = max(hold.expires_at for hold in write.workspace.holds if hold.token == self.lease)
        return write

    def answer(self, head: int) -> float | None:
        return self._until


class ReleaseTurn(Plan[bool]):
    op = "release_turn"
    __slots__ = ("_released", "clock")

    def __init__(self, workspace_id: str, token: str, clock: Callable[[], float]) -> None:
        super().__init__(Read.workspace(workspace_id), token)  # the chat's policy arms the countdown
        self.clock = clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = facts_of(rows, f"no workspace {self.read.key!r}")
        assert self.lease is not None
        policy = rows.chat.policy if rows.chat is not None else Policy()
        write = writes.release_turn(facts, self.lease, policy, at=self.clock())
        self._released = write is not None
        return write

    def answer(self, head: int) -> bool:
        return self._released


class Touch(Plan[Deadline | None]):
    op = "touch"
    __slots__ = ("_armed", "clock")

    def __init__(self, workspace_id: str, clock: Callable[[], float]) -> None:
        super().__init__(Read.workspace(workspace_id))
        self.clock = clock

    def decide(self, rows: Rows) -> writes.Write | None:
        facts = facts_of(rows, f"no workspace {self.read.key!r}")
        write = writes.touch(facts, rows.chat.policy if rows.chat is not None else Policy(), at=self.clock())
        self._armed = (
            facts.workspace.deadline if write is None or write.workspace is None else write.workspace.deadline
        )
        return write

    def answer(self, head: int) -> Deadline | None:
        return self._armed
