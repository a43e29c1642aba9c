"""Expiry warnings for whoever listens in this process: the ``deadline_approaching`` events of
the log, handed to each subscriber of their chat (or of every chat) as the event pump delivers
them. The scheduler of some replica wrote them (:mod:`._deadlines`); this only fans them out,
woken by the pump, never by a timer.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from .adapters.base import Store, Topic
from .values import EventKind, StoreEvent

__all__ = ["WarningFeed"]


class WarningFeed:
    """The subscribers to ``deadline_approaching`` events, by chat (``None``: every chat)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._subscribers: dict[str | None, set[MemoryObjectSendStream[StoreEvent]]] = {}

    def dispatch(self, event: StoreEvent) -> None:
        """One event of the log, in order (from the event pump)."""
        if event.kind is not EventKind.DEADLINE_APPROACHING:
            return
        for key in (event.chat_id, None):
            for send in self._subscribers.get(key, ()):
                send.send_nowait(event)

    async def follow(self, chat_id: str | None, *, owner: str | None) -> AsyncGenerator[StoreEvent, None]:
        """Every warning of ``chat_id`` (every chat if ``None``) from now on; with ``owner``,
        another owner's chat is followed exactly as an unknown one (nothing, ever)."""
        owners: dict[str, str | None] = {}  # a chat's owner never changes once it exists
        send, receive = anyio.create_memory_object_stream[StoreEvent](math.inf)
        self._subscribers.setdefault(chat_id, set()).add(send)
        try:
            with (
                receive,
                self.store.interest(Topic.EVERY_WORKSPACE if chat_id is None else Topic.chat(chat_id)),
            ):
                async for event in receive:
                    if owner is not None:
                        if event.chat_id not in owners:
                            chat = await self.store.get_chat(event.chat_id)
                            owners[event.chat_id] = chat.owner if chat is not None else None
                        if owners[event.chat_id] != owner:
                            continue
                    yield event
        finally:
            subscribers = self._subscribers[chat_id]
            subscribers.discard(send)
            if not subscribers:
                del self._subscribers[chat_id]
            send.close()
