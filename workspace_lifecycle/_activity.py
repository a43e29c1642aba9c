"""Activity in a chat: what pushes its workspace's idle deadline (a request, a message).

:func:`~workspace_lifecycle.deadlines.touch_due` (pure) says whether a touch is worth a write;
this module makes it, once for concurrent touches of one workspace, and tells the deadline
scheduler what the store armed.
"""

from __future__ import annotations

import logging

from . import deadlines
from ._deadlines import DeadlineScheduler
from ._flight import SingleFlight
from .adapters.base import Store
from .clock import Clock
from .errors import CorruptStateError, NotFoundError, StoreError
from .values import Chat, Deadline

__all__ = ["Activity"]

log = logging.getLogger("workspace_lifecycle.runtime")


class Activity:
    """Touches of a :class:`~workspace_lifecycle.runtime.Lifecycle`'s chats."""

    def __init__(self, store: Store, scheduler: DeadlineScheduler, clock: Clock) -> None:
        self.store = store
        self._scheduler = scheduler
        self._clock = clock
        self._touches = SingleFlight[Deadline | None]()  # one touch write per workspace at a time

    async def after_request(self, chat: Chat) -> None:
        """A tool request on ``chat``: it counts as activity; a failed touch fails no answer."""
        if chat.policy.idle_stop_after is None or chat.workspace_id is None:
            return
        try:
            due, _ = self.due(chat)
            if due:
                await self.write(chat)
        except (StoreError, CorruptStateError, NotFoundError) as exc:
            log.warning("touch of %s after a request failed: %s", chat.chat_id, exc)

    def due(self, chat: Chat) -> tuple[bool, Deadline | None]:
        """Whether a touch of ``chat`` is worth a write, and the deadline armed if it is not
        (most touches: a chat message within the slack of the last one needs no coroutine)."""
        workspace_id = chat.workspace_id
        if workspace_id is None or chat.policy.idle_stop_after is None:
            return False, None
        known = self._scheduler.known(workspace_id)
        return deadlines.touch_due(known, chat.policy, self._clock()), known

    async def write(self, chat: Chat) -> Deadline | None:
        """The touch's write (one for concurrent touches of a workspace, sharing its answer)."""
        workspace_id = chat.workspace_id
        assert workspace_id is not None, "due() said a workspace has a deadline to push"
        return await self._touches.run(workspace_id, lambda: self._write(workspace_id), _same)

    async def _write(self, workspace_id: str) -> Deadline | None:
        held = self._scheduler.news_of(workspace_id)
        armed = await self.store.touch(workspace_id)
        self._scheduler.note(workspace_id, armed, held=held)
        return armed


def _same(armed: Deadline | None) -> Deadline | None:
    return armed
