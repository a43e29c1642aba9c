"""The registry of tracked workspaces: a machine only for a workspace somebody waits on or
watches, the events that wake them, and the watchers' streams.

A request holds a workspace with ``async with registry.track(workspace_id)``: the first holder
loads its :class:`~workspace_lifecycle.machine.Tracker` from the stored rows (events delivered
meanwhile are buffered and applied after), the last one to leave drops it unless its chat is
watched. The pump delivers events with :meth:`Registry.dispatch`; every delivery wakes the
workspace's sleepers once (:meth:`Registry.wait`). A workspace whose rows or events are corrupt
fails only the requests about it: its entry keeps the error and the others go on.

The store hears what the registry holds: each tracked workspace, each watched chat (every
workspace when every chat is watched) is a :meth:`~workspace_lifecycle.adapters.base.Store.interest`
while it lasts, so a store that can narrow its wake-ups (PostgreSQL with ``shards``) wakes this
process for them and not for the rest.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Protocol

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from .adapters.base import Store, Topic
from .errors import CorruptStateError, InvalidEventError, StoreClosedError, StoreError
from .machine import Tracker
from .pools import claimed_from
from .telemetry import log_change
from .values import EventKind, StateChange, StoreEvent, Workspace, WorkspaceState

__all__ = ["Condition", "Entry", "Registry"]

log = logging.getLogger("workspace_lifecycle.runtime")


class Condition(Protocol):
    """A wait condition of :mod:`~workspace_lifecycle.steps` (a value with a pure test)."""

    def holds(self, tracker: Tracker) -> bool: ...


@attrs.define(eq=False)
class Entry:
    """A tracked workspace: its machine, who holds it, and the event its sleepers wait on."""

    workspace_id: str
    tracker: Tracker | None = None
    workspace: Workspace | None = None
    refs: int = 0
    buffer: list[StoreEvent] = attrs.Factory(list)
    error: BaseException | None = None  # the load failed (its waiters raise it)
    corrupt: CorruptStateError | None = None  # its rows are unreadable: requests about it fail
    # The events are made only when somebody sleeps on them: a delivery nobody waits for, or a
    # load nobody else waits for, allocates nothing (10,000 waiting workspaces are the heap the
    # garbage collector walks).
    is_loaded: bool = False
    _loaded: anyio.Event | None = None
    _changed: anyio.Event | None = None

    def notify(self) -> None:
        """Wake everyone sleeping in :meth:`changed` (each delivery wakes them once)."""
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def changed(self) -> None:
        """Sleep until the next :meth:`notify`."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def set_loaded(self) -> None:
        self.is_loaded = True
        if self._loaded is not None:
            self._loaded.set()

    async def loaded(self) -> None:
        """Sleep until the tracker was loaded (or its load failed)."""
        if not self.is_loaded:
            if self._loaded is None:
                self._loaded = anyio.Event()
            await self._loaded.wait()

    def current(self) -> Tracker:
        """The tracker; raises the corruption that made it unusable."""
        if self.corrupt is not None:
            raise self.corrupt
        assert self.tracker is not None
        return self.tracker


class Registry:
    """Tracked workspaces and watchers, fed by the pump."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float],
        spawn: Callable[..., None],
        caught_up: Callable[[int], Awaitable[None]],
        raise_if_failed: Callable[[], None],
        resync_interval: float | None,
    ) -> None:
        self.store = store
        self._clock = clock
        self._spawn = spawn
        self._caught_up = caught_up
        self._raise_if_failed = raise_if_failed
        self.resync_interval = resync_interval
        self.entries: dict[str, Entry] = {}
        self.watchers: dict[str | None, set[MemoryObjectSendStream[StateChange]]] = {}
        self.events_applied = 0
        self.resyncs = 0  # re-derivations of a waited-on workspace after resync_interval of silence
        self._following: dict[str, int] = {}  # chat -> creates in flight (the pump follows them)
        # chat -> workspaces whose machine nobody held but was kept because the chat is watched
        # or being created; dropped when that ends (without scanning every machine).
        self._kept: dict[str, set[str]] = {}

    # --- delivery (called by the pump) -------------------------------------------------------

    def dispatch(self, event: StoreEvent) -> None:
        entry = self.entries.get(event.workspace_id)
        if entry is None:
            if event.kind is EventKind.CHAT_BOUND and self._is_watched(event.chat_id):
                entry = self._add(event.workspace_id)
                self._kept.setdefault(event.chat_id, set()).add(event.workspace_id)
                if claimed_from(event) is not None:
                    # It claimed a pooled workspace, built long before: load it from the rows
                    # (the events until then are buffered), and say that it arrived.
                    self._spawn(self._load_claimed, entry, event)
                    return
                # A watched chat got a new workspace: follow it from its first event.
                entry.tracker = Tracker(event.workspace_id, event.chat_id, seq=event.seq)
                entry.set_loaded()
            return
        if entry.tracker is None:
            entry.buffer.append(event)
            return
        tracker = entry.tracker
        arrived = (
            event.kind is EventKind.CHAT_BOUND
            and claimed_from(event) is not None
            and tracker.chat_id != event.chat_id
            and event.seq > tracker.seq
        )
        self._apply(entry, event)
        if arrived:  # a pooled workspace followed since it was built: now the chat's
            self.publish(_arrival(tracker, event))

    async def _load_claimed(self, entry: Entry, bound: StoreEvent) -> None:
        """Load the pooled workspace a watched chat claimed (see :meth:`dispatch`)."""
        try:
            facts = await self.store.workspace_facts(entry.workspace_id)
        except BaseException as exc:
            entry.error = exc
            entry.set_loaded()
            self._remove(entry)
            if isinstance(exc, StoreError | CorruptStateError):
                log.warning("loading claimed workspace %s failed: %s", entry.workspace_id, exc)
                return
            raise
        entry.workspace = facts.workspace
        entry.tracker = tracker = Tracker.from_facts(facts)
        for event in entry.buffer:
            self._apply(entry, event)
        entry.buffer.clear()
        entry.set_loaded()
        self.publish(_arrival(tracker, bound))
        entry.notify()

    def _apply(self, entry: Entry, event: StoreEvent) -> None:
        tracker = entry.tracker
        assert tracker is not None
        try:
            change = tracker.apply(event)
        except InvalidEventError as exc:
            log.warning("inconsistent event, resynchronising %s: %s", entry.workspace_id, exc)
            self._spawn(self._resync_quietly, entry)
            return
        self.events_applied += 1
        if change is not None:
            self.publish(change)
        entry.notify()

    def publish(self, change: StateChange) -> None:
        log_change(change, self._clock())
        for key in (change.chat_id, None):
            for stream in tuple(self.watchers.get(key, ())):
                try:
                    stream.send_nowait(change)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    self.watchers[key].discard(stream)

    async def resync(self, entry: Entry) -> None:
        """Replace a tracker's knowledge with the stored rows (the derived state).

        Corrupt rows mark the entry (its requests raise the error) instead of raising here:
        one unreadable workspace must not stop the pump that serves every other.
        """
        try:
            facts = await self.store.workspace_facts(entry.workspace_id)
        except CorruptStateError as exc:
            log.error("workspace %s is unreadable: %s", entry.workspace_id, exc)
            entry.corrupt = exc
            entry.notify()
            return
        entry.corrupt = None
        old = entry.tracker
        fresh = Tracker.from_facts(facts)
        if old is not None and fresh.seq < old.seq:
            return
        entry.tracker = fresh
        if old is not None and old.state is not fresh.state:
            self.publish(
                StateChange(
                    chat_id=fresh.chat_id,
                    workspace_id=fresh.workspace_id,
                    build_number=fresh.build_number,
                    from_state=old.state,
                    to_state=fresh.state,
                    event=None,
                    seq=fresh.seq,
                    at=self._clock(),
                    reason=fresh.reason,
                )
            )
        entry.notify()

    async def _resync_quietly(self, entry: Entry) -> None:
        try:
            await self.resync(entry)
        except StoreError as exc:
            log.warning("resync of %s failed: %s", entry.workspace_id, exc)

    async def resync_all(self) -> None:
        for entry in list(self.entries.values()):
            if entry.tracker is not None:
                await self.resync(entry)

    def fail(self) -> None:
        """The pump stopped (or the runtime closes): wake every sleeper, they raise."""
        for entry in self.entries.values():
            entry.notify()

    def close_watchers(self) -> None:
        for streams in self.watchers.values():
            for stream in streams:
                stream.close()

    # --- holding workspaces ------------------------------------------------------------------

    @asynccontextmanager
    async def track(self, workspace_id: str) -> AsyncIterator[Entry]:
        """Hold a machine for ``workspace_id`` while the block runs (loaded from the rows)."""
        self._raise_if_failed()
        entry = await self._acquire(workspace_id)
        try:
            yield entry
        finally:
            self._release(entry)

    async def _acquire(self, workspace_id: str) -> Entry:
        """Take a reference on the workspace's entry, loading it from the rows if needed."""
        while True:
            entry = self.entries.get(workspace_id)
            if entry is None and (any(self.watchers.values()) or self._following):
                # The pump follows a watched chat's new workspace from its CHAT_BOUND event;
                # loading a later snapshot first would skip (and never publish) the changes.
                await self._caught_up(await self.store.head())
                entry = self.entries.get(workspace_id)
            if entry is None:
                return await self._load(workspace_id)
            entry.refs += 1
            try:
                await entry.loaded()
            except BaseException:
                self._release(entry)  # cancelled while another caller loads: drop our reference
                raise
            if entry.error is None:
                return entry
            self._release(entry)
            if not isinstance(entry.error, anyio.get_cancelled_exc_class()):
                raise entry.error
            # Its loader was cancelled, not this caller: load it ourselves.

    async def _load(self, workspace_id: str) -> Entry:
        entry = self._add(workspace_id)
        entry.refs += 1
        try:
            facts = await self.store.workspace_facts(workspace_id)
            entry.workspace = facts.workspace
            entry.tracker = Tracker.from_facts(facts)
            for event in entry.buffer:
                self._apply(entry, event)
            entry.buffer.clear()
        except BaseException as exc:
            # Detach the failed entry at once, so the next caller loads afresh.
            entry.error = exc
            entry.set_loaded()
            self._remove(entry)
            self._release(entry)
            raise
        entry.set_loaded()
        return entry

    def _release(self, entry: Entry) -> None:
        entry.refs -= 1
        if entry.refs <= 0 and self.entries.get(entry.workspace_id) is entry:
            tracker = entry.tracker
            if tracker is None or not self._is_watched(tracker.chat_id):
                self._remove(entry)
            else:
                self._kept.setdefault(tracker.chat_id, set()).add(entry.workspace_id)

    def _add(self, workspace_id: str) -> Entry:
        """A new entry for ``workspace_id``; the store hears of the interest in it."""
        entry = self.entries[workspace_id] = Entry(workspace_id)
        self.store.take_interest(Topic.workspace(workspace_id))
        return entry

    def _remove(self, entry: Entry) -> None:
        """Drop ``entry`` (if it is still the workspace's) and the interest it held."""
        if self.entries.get(entry.workspace_id) is entry:
            del self.entries[entry.workspace_id]
            self.store.drop_interest(Topic.workspace(entry.workspace_id))

    def drop_kept(self, chat_id: str | None) -> None:
        """Drop the machines kept for ``chat_id`` (every chat if ``None``) that nobody holds,
        unless the chat is still watched or being created."""
        chats = list(self._kept) if chat_id is None else [chat_id]
        for chat in chats:
            for workspace_id in self._kept.pop(chat, ()):
                entry = self.entries.get(workspace_id)
                if entry is not None and entry.refs <= 0:
                    entry.refs += 1
                    self._release(entry)  # keeps it (and its _kept mark) if still watched

    def _is_watched(self, chat_id: str) -> bool:
        return bool(self.watchers.get(chat_id) or self.watchers.get(None) or self._following.get(chat_id))

    @asynccontextmanager
    async def following(self, chat_id: str) -> AsyncIterator[None]:
        """While a create runs, follow the chat from its new workspace's first event
        (``chat_bound``), so its ``no_workspace -> building`` change is published and logged."""
        self._following[chat_id] = self._following.get(chat_id, 0) + 1
        try:
            yield
        finally:
            left = self._following[chat_id] - 1
            if left:
                self._following[chat_id] = left
            else:
                del self._following[chat_id]
                self.drop_kept(chat_id)

    # --- waiting -----------------------------------------------------------------------------

    async def wait(self, entry: Entry, condition: Condition) -> None:
        """Sleep until ``condition`` holds for the entry's tracker; each delivery wakes us once."""
        while True:
            self._raise_if_failed()
            if condition.holds(entry.current()):
                return
            if self.resync_interval is None:
                await entry.changed()
                continue
            with anyio.move_on_after(self.resync_interval) as idle:
                await entry.changed()
            if idle.cancelled_caught:
                # Safety net: nothing arrived for a while; if an event was lost, the rows have it.
                self.resyncs += 1
                try:
                    await self.resync(entry)
                except StoreClosedError:
                    raise
                except StoreError as exc:
                    log.warning("waiting on %s: resync failed: %s", entry.workspace_id, exc)

    # --- watching -------------------------------------------------------------------------------

    async def watch(self, chat_id: str | None, *, owner: str | None) -> AsyncGenerator[StateChange, None]:
        """Every state change of ``chat_id``'s workspace (or of every chat, if ``None``).

        With ``owner``, only changes of that owner's chats are yielded: another owner's chat
        is watched exactly as an unknown one (nothing, ever). Watching every chat keeps one
        machine per workspace that changes while you watch.
        """
        owned: dict[str, bool] = {}  # a chat's owner never changes once it exists
        send, receive = anyio.create_memory_object_stream[StateChange](math.inf)
        self.watchers.setdefault(chat_id, set()).add(send)
        holds = AsyncExitStack()
        try:
            async with receive, holds:
                # Heard from now on: a new workspace of the chat (of any chat, for every chat).
                holds.enter_context(
                    self.store.interest(Topic.EVERY_WORKSPACE if chat_id is None else Topic.chat(chat_id))
                )
                if chat_id is not None:
                    chat = await self.store.get_chat(chat_id)
                    if chat is not None and chat.workspace_id is not None and owner in (None, chat.owner):
                        # Hold the machine of the current workspace; new ones follow CHAT_BOUND.
                        await holds.enter_async_context(self.track(chat.workspace_id))
                else:
                    for row in await self.store.list_chats():
                        if row.error is not None:
                            log.error("watch: skipping chat %s: %s", row.chat.chat_id, row.error)
                        if row.facts is not None and owner in (None, row.chat.owner):
                            await holds.enter_async_context(self.track(row.facts.workspace_id))
                async for change in receive:
                    if owner is not None and not await self._owned_by(change.chat_id, owner, owned):
                        continue
                    yield change
        finally:
            streams = self.watchers[chat_id]
            streams.discard(send)
            if not streams:
                del self.watchers[chat_id]
            send.close()
            await holds.aclose()
            self.drop_kept(chat_id)

    async def _owned_by(self, chat_id: str, owner: str, cache: dict[str, bool]) -> bool:
        if chat_id not in cache:
            chat = await self.store.get_chat(chat_id)
            if chat is None:
                return False
            cache[chat_id] = chat.owner == owner
        return cache[chat_id]


def _arrival(tracker: Tracker, bound: StoreEvent) -> StateChange:
    """The change a watcher of the chat sees when it claims a pooled workspace: from nothing
    to the workspace's state, at the claim."""
    return StateChange(
        chat_id=bound.chat_id,
        workspace_id=tracker.workspace_id,
        build_number=tracker.build_number,
        from_state=WorkspaceState.NO_WORKSPACE,
        to_state=tracker.state,
        event=EventKind.CHAT_BOUND,
        seq=bound.seq,
        at=bound.at,
        reason=tracker.reason,
        endpoints=tracker.endpoints,
    )
