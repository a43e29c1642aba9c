"""What the plans of :class:`~.store.DriverStore` share: a plan that asks to read more, the
workspace's facts or a :class:`~workspace_lifecycle.errors.NotFoundError`, a finish's usage and
follow-up build id, and :class:`RequestPlan` (answered with an :class:`~.base.Outcome`).

A plan that makes ids takes ``new_id`` from the store (``store._new_id``), so a test that
swaps the store's ids swaps every plan's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import writes
from ..errors import NotFoundError
from ..values import WorkspaceFacts
from .base import Outcome
from .driver import Plan, Read, Rows

__all__ = ["ReadAgain", "RequestPlan", "facts_of", "then_id", "usage_needed"]


class ReadAgain(Exception):
    """A plan found it must read more than it asked for (``read``): decide again on those."""

    def __init__(self, read: Read) -> None:
        self.read = read


def facts_of(rows: Rows, missing: str) -> WorkspaceFacts:
    if rows.facts is None:
        raise NotFoundError(missing)
    return rows.facts


def usage_needed(plan: Plan[Any], rows: Rows) -> None:
    """A finish acts on a start deferred behind the build: it needs the owner's usage too."""
    ws = rows.workspace
    if not plan.read.usage and ws is not None and ws.deferred is not None and writes.needs_usage(ws):
        # The limits that apply: those stored for the owner, and the one the request carries.
        raise ReadAgain(plan.read._replace(usage=True, limited=ws.deferred.running_limit is not None))


def then_id(rows: Rows, new_id: Callable[[], str]) -> str | None:
    """The id of the build a finish may queue for a request deferred behind it (only then)."""
    return new_id() if rows.workspace is not None and rows.workspace.deferred is not None else None


class RequestPlan(Plan[Outcome]):
    """A plan answered with an :class:`Outcome`: the build it appended (if any), with the facts
    as the write left them (or as read, when it wrote nothing)."""

    __slots__ = ("_facts", "_write")

    def _decided(self, facts: WorkspaceFacts, write: writes.Write | None) -> writes.Write | None:
        self._facts, self._write = facts, write
        return write

    def answer(self, head: int) -> Outcome:
        write, facts = self._write, self._facts
        if write is None:
            return Outcome(fired=False, build=None, facts=facts)
        return Outcome(
            fired=write.build is not None, build=write.build, facts=writes.applied(facts, write, head)
        )
