"""Turn holds: :class:`HoldKeeper`, one heartbeat for every turn a runtime holds.

A turn (:meth:`~workspace_lifecycle.Lifecycle.turn`) holds its chat's workspace: a hold in the
store (:meth:`~workspace_lifecycle.adapters.base.Store.hold_turn`: a fencing token and an
expiry, in the workspace's row) that keeps any idle stop from firing while it is live. The
keeper renews every hold it keeps as the lease keeper of a provisioner does (the same pattern:
:mod:`~workspace_lifecycle._lease_keeper`): a heap ordered by when each renewal is due
(:func:`~workspace_lifecycle.leases.renewal_due`, a third of ``hold_seconds`` after the last
one landed, pure), and one task that sleeps on the clock until the earliest. When a turn ends
its hold is released, and the last hold to go starts the idle countdown; when its process dies
nobody renews the hold, and it lapses at its expiry (the countdown then starts from there).

It decides nothing: what a hold, a renewal and a release write, and what a fire does with the
holds it finds, are the pure core's (:func:`~workspace_lifecycle.writes.hold_turn`,
:func:`~workspace_lifecycle.writes.release_turn`, :func:`~workspace_lifecycle.writes.fire_deadline`).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import attrs

from . import leases
from ._heartbeat import Heartbeat
from .adapters.base import Store
from .clock import Clock
from .errors import CorruptStateError, HoldLostError, NotFoundError, StoreClosedError, StoreError
from .values import Chat

__all__ = ["HoldKeeper", "Turn"]

log = logging.getLogger("workspace_lifecycle.runtime")


@attrs.define(eq=False)
class Turn:
    """A turn in flight, as :meth:`~workspace_lifecycle.Lifecycle.turn` yields it.

    ``workspace_id`` is the workspace it holds (``None`` while the chat has none: the turn takes
    a hold at its next renewal after the chat got one); ``expires_at`` when its hold lapses
    unless renewed (this process's clock); ``lost`` is true once a renewal found the hold lapsed
    (the process was paused past its expiry, or the store was out of reach that long): the
    turn goes on, holding nothing.
    """

    chat_id: str
    token: str
    workspace_id: str | None = None
    expires_at: float | None = None
    lost: bool = False
    renewals: int = 0
    #: When its next renewal is due (the keeper's).
    due: float = attrs.field(default=math.inf, repr=False)

    @property
    def holding(self) -> bool:
        """Whether the turn holds a workspace now (as far as this process knows)."""
        return self.workspace_id is not None and not self.lost


class HoldKeeper:
    """Takes, renews and releases the holds of a runtime's turns, from one task (:meth:`run`)."""

    def __init__(self, store: Store, clock: Clock, *, hold_seconds: float) -> None:
        self.store = store
        self.clock = clock
        self.hold_seconds = hold_seconds
        self._held: dict[str, Turn] = {}  # token -> turn
        self._beat = Heartbeat[Turn](
            clock, kept=lambda turn: self._held.get(turn.token) is turn, renew=self._renew
        )
        #: Renewals that landed, over every turn.
        self.renewals = 0

    @property
    def held(self) -> int:
        """How many turns are in flight."""
        return len(self._held)

    @asynccontextmanager
    async def hold(self, chat: Chat) -> AsyncIterator[Turn]:
        """Hold ``chat``'s workspace while the block runs; release it after (the last hold to
        go starts the idle countdown). A store error at the start propagates: the caller learns
        its turn is not held."""
        turn = Turn(chat.chat_id, uuid.uuid4().hex)
        if chat.workspace_id is not None:
            await self._take(turn, chat.workspace_id)
        else:
            self._schedule(turn, self.clock() + self.hold_seconds * leases.RENEW_EVERY)
        self._held[turn.token] = turn
        try:
            yield turn
        finally:
            del self._held[turn.token]
            if turn.holding:
                # A cancelled turn still lets go at once; a store that cannot take the release
                # within a hold's length is left to let the hold lapse.
                with anyio.move_on_after(self.hold_seconds, shield=True):
                    await self._release(turn)

    async def _take(self, turn: Turn, workspace_id: str) -> None:
        sent = self.clock()
        until = await self.store.hold_turn(workspace_id, turn.token, hold_seconds=self.hold_seconds)
        if until is not None:
            turn.workspace_id = workspace_id
            self._landed(turn, sent)

    def _landed(self, turn: Turn, sent: float) -> None:
        turn.expires_at = sent + self.hold_seconds
        self._schedule(turn, leases.renewal_due(sent, self.hold_seconds, turn.expires_at))

    async def _release(self, turn: Turn) -> None:
        assert turn.workspace_id is not None
        try:
            await self.store.release_turn(turn.workspace_id, turn.token)
        except (StoreError, CorruptStateError, NotFoundError) as exc:
            log.warning("turn of %s: hold not released (%s); it lapses at its expiry", turn.chat_id, exc)

    def _schedule(self, turn: Turn, due: float) -> None:
        self._beat.schedule(turn, due)

    async def run(self) -> None:
        """Renew what comes due, until cancelled."""
        await self._beat.run()

    async def _renew(self, turn: Turn) -> None:
        sent = self.clock()
        try:
            if turn.workspace_id is None:
                chat = await self.store.get_chat(turn.chat_id)
                if chat is not None and chat.workspace_id is not None:
                    await self._take(turn, chat.workspace_id)
                if turn.workspace_id is None:
                    self._reschedule(turn, sent + self.hold_seconds * leases.RENEW_EVERY)
                return
            await self.store.hold_turn(
                turn.workspace_id, turn.token, renew=True, hold_seconds=self.hold_seconds
            )
        except (HoldLostError, NotFoundError) as exc:
            log.warning("turn of %s: hold lost (%s); the turn holds nothing now", turn.chat_id, exc)
            turn.lost = True
            return
        except StoreClosedError:
            return
        except (StoreError, CorruptStateError) as exc:
            now = self.clock()
            expires = turn.expires_at if turn.expires_at is not None and turn.expires_at > now else math.inf
            log.warning("turn of %s: hold not renewed: %s", turn.chat_id, exc)
            self._reschedule(turn, leases.retry_due(now, self.hold_seconds, expires))
            return
        turn.renewals += 1
        self.renewals += 1
        if self._held.get(turn.token) is turn:
            self._landed(turn, sent)

    def _reschedule(self, turn: Turn, due: float) -> None:
        if self._held.get(turn.token) is turn:
            self._schedule(turn, due)
