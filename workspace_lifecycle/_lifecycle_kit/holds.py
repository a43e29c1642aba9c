"""Turn holds in random histories: the rules and the invariant :class:`HoldRules` adds to
:class:`~workspace_lifecycle.testing.LifecycleMachine` when it runs on a virtual clock.

The machine plays the turns' holders with the store's own calls: it takes holds, renews the
live ones before time passes (a live holder renews in time), releases some, and lets others
lapse (their holder died: never renewed, never released). Time passes in ``tick`` steps of at
most half a hold; the runtime's deadline scheduler fires the idle stops that come due. The
invariant, after every step: **no idle stop fired while a hold was live, nor before
``idle_stop_after`` passed since it ended** (released, or lapsed at its expiry).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import attrs
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from ..adapters.base import Store
from ..clock import VirtualClock
from ..errors import HoldLostError
from ..runtime import Lifecycle
from ..values import EventKind, JobStatus, Reason, Transition

__all__ = ["HOLD", "IDLE", "HoldRules"]

#: The idle stop of the clocked histories' chats, and the holds they take (store seconds).
IDLE = 20.0
HOLD = 10.0
_TOKENS = ("turn-a", "turn-b")


@attrs.define
class _Held:
    """One hold as the machine took it: after which event (``after``: the log's head then) and
    until when (its expiry while live or lapsed; the release time once released)."""

    after: int
    until: float
    live: bool = True


def _clocked(machine: Any) -> bool:
    return machine.clock is not None


class HoldRules:
    """Hold, release, lapse and tick rules, and the invariant of holds (clocked machines only)."""

    # Provided by LifecycleMachine.
    store: Store
    lc: Lifecycle
    chats: tuple[str, ...]
    clock: VirtualClock | None
    call: Callable[..., Any]
    holds: dict[tuple[str, str], list[_Held]]
    deferred: dict[str, Transition]

    def _bound(self, chat: str) -> str | None:
        row = self.call(self.store.get_chat, chat)
        return None if row is None else row.workspace_id

    def _now(self) -> float:
        assert self.clock is not None
        return self.clock()

    def _start_succeeds(self, ws: str) -> None:
        """The workspace's start build in flight succeeds (the provisioner's side, in one step):
        a running workspace, with its idle deadline armed, for turns to hold."""
        if ws in self.deferred:
            return
        build = self.call(self.store.workspace_facts, ws).latest_build
        if build is None or build.transition is not Transition.START or build.status.finished:
            return
        while build.status is JobStatus.PENDING:
            claimed = self.call(self.store.claim_build, "holds")
            assert claimed is not None
            if claimed.build_id == build.build_id:
                build = claimed
        self.call(self.store.finish_build, build.build_id, JobStatus.SUCCEEDED, has_agent=False)

    @precondition(_clocked)
    @rule(data=st.data(), token=st.sampled_from(_TOKENS), started=st.booleans())
    def hold(self, data: st.DataObject, token: str, started: bool) -> None:
        """A turn takes a hold on the chat's workspace (one token per turn at a time); with
        ``started``, the workspace's start build in flight first succeeds."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        ws = self._bound(chat)
        history = self.holds.setdefault((ws or "", token), [])
        if ws is None or (history and history[-1].live):
            return
        if started:
            self._start_succeeds(ws)
        head = self.call(self.store.head)
        until = self.call(self.store.hold_turn, ws, token, hold_seconds=HOLD)
        if until is not None:
            history.append(_Held(head, until))

    @precondition(_clocked)
    @rule(data=st.data(), token=st.sampled_from(_TOKENS), died=st.booleans())
    def end(self, data: st.DataObject, token: str, died: bool) -> None:
        """A turn ends: its hold is released, or (``died``) its holder died and it lapses."""
        chat = data.draw(st.sampled_from(self.chats), label="chat")
        held = self._live(self._bound(chat), token)
        if held is None:
            return
        held.live = False
        if not died:
            ws = self._bound(chat)
            self.call(self.store.release_turn, ws, token)
            held.until = min(held.until, self._now())

    def _live(self, ws: str | None, token: str) -> _Held | None:
        history = self.holds.get((ws or "", token))
        return history[-1] if history and history[-1].live else None

    @precondition(_clocked)
    @rule(seconds=st.sampled_from([IDLE / 2, IDLE, 3 * IDLE]))
    def tick(self, seconds: float) -> None:
        """Time passes, half a hold at a time: live holds are renewed before each step (a live
        holder renews in time), and the runtime fires what comes due."""
        assert self.clock is not None
        left = seconds
        while left > 0:
            self._renew_live()
            self.call(self._pass, min(left, HOLD / 2))
            left -= HOLD / 2

    def _renew_live(self) -> None:
        for (ws, token), history in self.holds.items():
            held = history[-1] if history else None
            if held is None or not held.live:
                continue
            try:
                until = self.call(self.store.hold_turn, ws, token, renew=True, hold_seconds=HOLD)
            except HoldLostError:
                deleted = self.call(self.store.workspace_facts, ws).workspace.deleted
                assert deleted, f"a live hold renewed in time was lost: {ws} {token}"
                held.live = False
                continue
            held.until = until

    async def _pass(self, seconds: float) -> None:
        """Advance the clock (on the runtime's event loop: it wakes the sleepers there), then
        wait until the runtime fired everything due and its pump is caught up."""
        assert self.clock is not None
        await self.lc._pump.caught_up(await self.store.head())  # it knows every deadline armed
        self.clock.advance(seconds)
        while True:
            await anyio.lowlevel.checkpoint()
            due = self.lc.next_deadline()
            if due is None or due > self.clock():
                head = await self.store.head()
                await self.lc._pump.caught_up(head)
                if head == await self.store.head():
                    return

    @invariant()
    def no_idle_stop_while_held(self) -> None:
        """No idle stop fired while a hold was live, nor within idle_stop_after of its end."""
        if self.clock is None:
            return
        now = self.clock()
        events = self.call(self.store.read_events, 0, 1_000_000)
        for stop in events:
            if not (
                stop.kind is EventKind.BUILD_QUEUED
                and stop.transition is Transition.STOP
                and stop.reason is Reason.IDLE
            ):
                continue
            for (ws, token), history in self.holds.items():
                if ws != stop.workspace_id:
                    continue
                for held in history:
                    end = math.inf if held.live and held.until > now else held.until
                    assert not (stop.seq > held.after and stop.at < end + IDLE), (
                        f"idle stop of {ws} at {stop.at} (seq {stop.seq}) while {token} held it"
                        f" (from seq {held.after} until {held.until}, live={held.live})"
                    )
