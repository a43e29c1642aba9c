"""The deadline scheduler: one task per :class:`~workspace_lifecycle.runtime.Lifecycle` that
sleeps until the earliest armed deadline it knows of and fires it.

It knows every workspace's armed deadline: it loads them once (:meth:`Store.armed_deadlines`,
with the log's head read in the same transaction) and then follows the log's ``deadline_set``
and ``workspace_deleted`` events, which the event pump hands it with every other event. It
sleeps in its clock's ``sleep_until`` until the earliest one; an event that arms an earlier one
cancels that sleep (re-armed, never polled). A due deadline is fired with the store's
compare-and-set (:meth:`Store.fire_deadline`): with any number of replicas only one fires it,
and a deadline extended meanwhile fires nothing. What the store answers (the deadline armed
after the call) is what the scheduler knows next, so it never fires the same deadline twice.

A deadline with a warning (the chat's ``warn_before``) is looked at twice: at its warning's
time, when the scheduler writes the ``deadline_approaching`` event with the store's
compare-and-set (:meth:`Store.warn_deadline`: once across replicas, never for a deadline pushed
meanwhile), and at the deadline itself. The warned deadline the store answers (or the log's
event) is what it knows next, so it wakes for the deadline and never warns twice.

It decides nothing: when a deadline or its warning is due and what each writes are the pure
core's (:func:`~workspace_lifecycle.deadlines.due_action`,
:func:`~workspace_lifecycle.writes.fire_deadline`, :func:`~workspace_lifecycle.writes.warn_deadline`).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import math
from collections.abc import Callable

import anyio

from .adapters.base import Outcome, Store
from .clock import Clock
from .deadlines import Due, due_action, wake_at
from .errors import CorruptStateError, NotFoundError, StoreClosedError, StoreError
from .telemetry import log_warning
from .values import Deadline, EventKind, StoreEvent

__all__ = ["DeadlineScheduler"]

log = logging.getLogger("workspace_lifecycle.runtime")

#: After a store error or a deadline the store did not find due yet, try again this much later.
_RETRY = 1.0


class DeadlineScheduler:
    """Every armed deadline of the store, in a heap; :meth:`run` fires them as they come due."""

    def __init__(
        self, store: Store, clock: Clock, *, fires: bool = True, margin: Callable[[], float] = lambda: 0.0
    ) -> None:
        self.store = store
        self.clock = clock
        #: Seconds past a deadline before it fires, asked at each scheduling (the skew margin:
        #: :func:`~workspace_lifecycle.skew.act_margin`).
        self.margin = margin
        self.fires = fires  # False: it only remembers what this process wrote (for touch)
        self.fired = 0  # builds this scheduler fired
        self.warned = 0  # deadline_approaching events this scheduler wrote
        self.lost = 0  # fire or warn attempts another replica (or a newer deadline) won
        self._armed: dict[str, Deadline] = {}
        self._seen: dict[str, int] = {}  # workspace id -> seq of the news we hold about it
        self._floor = 0  # everything up to this seq is in the loaded snapshot
        self._heap: list[tuple[float, str, Deadline]] = []  # (when to look, workspace, deadline)
        self._sleep: anyio.CancelScope | None = None
        self._waking_at = math.inf
        self._reload_due = False  # a reload failed: run() retries it before anything else

    # --- what it knows ---------------------------------------------------------------------

    @property
    def armed(self) -> int:
        """How many deadlines are armed."""
        return len(self._armed)

    def known(self, workspace_id: str) -> Deadline | None:
        """The workspace's armed deadline, as far as this process knows."""
        return self._armed.get(workspace_id)

    def next_due(self) -> float | None:
        """When the earliest armed deadline comes due (``None``: none armed, or this scheduler
        fires none). A warning before it is not a deadline: :meth:`next_wake` says when the
        scheduler wakes next."""
        if not self.fires or not self._armed:
            return None
        return min(deadline.at for deadline in self._armed.values())

    def next_wake(self) -> float | None:
        """When the scheduler wakes next: a deadline, a warning, or a retry (``None``: never)."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    async def load(self) -> None:
        """Read every armed deadline (the events after the read's head follow by dispatch)."""
        snapshot = await self.store.armed_deadlines()
        for workspace_id, exc in snapshot.unreadable.items():
            log.error("deadline of workspace %s is unreadable; it will not fire: %s", workspace_id, exc)
        self._reload_due = False
        self._armed.clear()
        self._seen.clear()
        self._heap.clear()
        self._floor = snapshot.head
        for workspace_id, deadline in snapshot.deadlines.items():
            self._learn(workspace_id, deadline, snapshot.head)

    async def resync(self) -> None:
        """Load again after the log was pruned past the pump's cursor. A store error is logged
        and the load retried by :meth:`run` a little later: it must not stop the pump."""
        try:
            await self.load()
        except (StoreError, CorruptStateError) as exc:
            log.warning("deadlines could not be reloaded (%s); retrying in %.0fs", exc, _RETRY)
            self._reload_due = True
            if self._sleep is not None:
                self._sleep.cancel()

    def dispatch(self, event: StoreEvent) -> None:
        """One event of the log, in order (from the event pump)."""
        if event.seq <= self._floor:
            return  # the loaded snapshot holds it already
        if event.kind is EventKind.DEADLINE_SET or event.kind is EventKind.DEADLINE_APPROACHING:
            self._learn(event.workspace_id, event.armed, event.seq)
        elif event.kind is EventKind.WORKSPACE_DELETED:
            self._learn(event.workspace_id, None, event.seq)
            self._seen.pop(event.workspace_id, None)  # no news follows a deletion

    def news_of(self, workspace_id: str) -> int:
        """The seq of the newest news held about the workspace (0: none)."""
        return self._seen.get(workspace_id, 0)

    def note(self, workspace_id: str, deadline: Deadline | None, *, held: int) -> None:
        """What this process just wrote (a touch), known before its event comes round; ``held``
        is :meth:`news_of` taken before the write. If newer news arrived meanwhile, it is kept:
        the write's own event follows it in order, and an answer that came back late must not
        overwrite a deadline set after it."""
        if self._seen.get(workspace_id, 0) == held:
            self._learn(workspace_id, deadline, held)

    def _learn(self, workspace_id: str, deadline: Deadline | None, seq: int) -> None:
        if seq < self._seen.get(workspace_id, 0):
            return  # older than what we hold (a fire's answer can run ahead of the pump)
        self._seen[workspace_id] = seq
        if deadline is None:
            self._armed.pop(workspace_id, None)
            return
        if self._armed.get(workspace_id) == deadline:
            return
        self._armed[workspace_id] = deadline
        self._schedule(wake_at(deadline, self.margin()), workspace_id, deadline)

    def _schedule(self, when: float, workspace_id: str, deadline: Deadline) -> None:
        if not self.fires:
            return
        heapq.heappush(self._heap, (when, workspace_id, deadline))
        if when < self._waking_at and self._sleep is not None:
            self._sleep.cancel()  # an earlier deadline: wake and sleep again until it

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap and self._armed.get(heap[0][1]) != heap[0][2]:
            heapq.heappop(heap)

    # --- firing ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Sleep until the earliest deadline, fire what is due, repeat; until cancelled."""
        while True:
            self._drop_stale()
            if self._reload_due:  # a reload failed: try again a little later, before anything else
                self._waking_at = self.clock() + _RETRY
            else:
                self._waking_at = self._heap[0][0] if self._heap else math.inf
            with anyio.CancelScope() as self._sleep:
                await self.clock.sleep_until(self._waking_at)
            self._sleep = None
            self._waking_at = -math.inf  # awake: a new deadline only goes into the heap
            if self._reload_due:
                with contextlib.suppress(StoreError, CorruptStateError):
                    await self.load()
                continue
            now = self.clock()
            while True:
                self._drop_stale()
                if not self._heap or self._heap[0][0] > now:
                    break
                _, workspace_id, deadline = heapq.heappop(self._heap)
                try:
                    await self._act(workspace_id, deadline, due_action(deadline, now, self.margin()))
                except StoreClosedError:
                    return  # the store went away under the runtime: its pump says so to callers

    async def _act(self, workspace_id: str, deadline: Deadline, action: Due | None) -> None:
        if action is None:  # a retry looked before its time: look again when it is due
            self._schedule(wake_at(deadline, self.margin()), workspace_id, deadline)
            return
        try:
            if action is Due.FIRE:
                outcome: Outcome = await self.store.fire_deadline(workspace_id, deadline)
            else:
                outcome = await self.store.warn_deadline(workspace_id, deadline)
        except (NotFoundError, CorruptStateError) as exc:
            log.error("deadline of workspace %s cannot fire: %s", workspace_id, exc)
            self._learn(workspace_id, None, self._seen.get(workspace_id, 0))
            return
        except StoreClosedError:
            raise
        except StoreError as exc:
            log.warning("deadline of workspace %s: %s; retrying in %.0fs", workspace_id, exc, _RETRY)
            self._schedule(self.clock() + _RETRY, workspace_id, deadline)
            return
        if not outcome.fired:
            self.lost += 1
        elif action is Due.FIRE:
            self.fired += 1
        else:
            self.warned += 1
            ws = outcome.facts.workspace
            log_warning(ws.chat_id, workspace_id, deadline, self.clock())
        after = outcome.facts.workspace.deadline
        if after == deadline:
            # Not due by the store's clock yet (a clock behind ours): look again a little later.
            self._schedule(self.clock() + _RETRY, workspace_id, deadline)
            return
        self._learn(workspace_id, after, outcome.facts.seq)
