"""The values of optimistic concurrency: the guard a write is persisted under (:class:`Seen`)
and the rows this process last read or wrote (:class:`Known`). Pure values, no I/O."""

from __future__ import annotations

import attrs

from ... import writes
from ...values import Chat, WorkspaceFacts

__all__ = ["Known", "Seen"]


@attrs.frozen
class Seen:
    """The rows a decision was made on, as read: the guard of the statement that persists it.

    Every write that changes a workspace's facts (its row, its builds, its agent) bumps the
    workspace's ``version``; every write of a chat row bumps the chat's. So "the versions are
    still these" is "the rows are still as I read them": generic optimistic concurrency that
    knows no rule of :mod:`workspace_lifecycle.writes`.
    """

    workspace_id: str
    version: int
    chat_id: str | None = None  # set when the decision read the chat row too
    chat_version: int = 0
    #: Set when the decision counted no usage of this owner (``Read.limited`` false): the write
    #: holds only while the owner has no stored limits.
    unlimited_owner: str | None = None


@attrs.frozen
class Known:
    """A workspace's rows as this process last read or wrote them, at ``version`` (the chat's
    row at ``chat_version``): what the next write of this process on it may decide on
    without reading, its guard checking that they are still current."""

    version: int
    facts: WorkspaceFacts
    chat: Chat
    chat_version: int

    def seen(self, *, chat: bool = True) -> Seen:
        """The guard of a write decided on these rows (``chat``: the chat's row among them)."""
        if not chat:
            return Seen(self.facts.workspace_id, self.version)
        return Seen(self.facts.workspace_id, self.version, self.chat.chat_id, self.chat_version)

    def after(self, write: writes.Write, head: int) -> Known:
        """The rows once ``write`` (decided on these) is persisted with its last event at
        ``head``: what the compiled statement writes, applied to the values instead of the tables."""
        return Known(
            self.version + 1,
            writes.applied(self.facts, write, head),
            write.chat or self.chat,
            self.chat_version + (write.chat is not None),
        )
