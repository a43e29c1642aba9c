"""The runtime: one event pump per store, waiters that wake on events, and the four tools.

:class:`Lifecycle` reads the store's event log from a cursor in a single task (the pump) and
feeds each event to the :class:`~workspace_lifecycle.machine.Tracker` of its workspace, if
somebody is waiting on or watching that workspace; nobody else pays for it. A request reads the
machine's decision, executes it with the store's compare-and-set, and waits, on an
``anyio.Event`` set by the pump, for the outcome. Nothing sleeps in a loop; timeouts and
cancellation are anyio cancel scopes.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from . import answers
from ._service import BackgroundService
from .adapters.base import Outcome, Store
from .errors import (
    CorruptStateError,
    CursorExpiredError,
    InvalidEventError,
    NotFoundError,
    StoreClosedError,
    StoreError,
)
from .machine import REQUEST_TRANSITION, Decision, Request, Tracker, derive_state
from .telemetry import RequestSpan, log_change
from .values import EventKind, StateChange, StoreEvent, ToolResult, Workspace, WorkspaceState

__all__ = ["Lifecycle", "workspace_name"]

log = logging.getLogger("workspace_lifecycle.runtime")

#: How long a request waits for the pump to reach a sequence number it knows was committed
#: before it kicks the pump to read again (a lost wake-up; never happens in the normal path).
_KICK_AFTER = 5.0

_NAME_RE = re.compile(r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")


def workspace_name(name: str | None) -> str:
    """Coder's rule: a valid name is kept, anything else becomes ``<base>-<4 hex>``."""
    name = (name or "").strip()
    if name and len(name) <= 32 and _NAME_RE.match(name):
        return name
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:27].strip("-") or "workspace"
    return f"{base}-{secrets.token_hex(2)}"


@attrs.define(eq=False)
class _Entry:
    """A tracked workspace: its machine, who holds it, and the event waiters sleep on."""

    workspace_id: str
    tracker: Tracker | None = None
    workspace: Workspace | None = None
    refs: int = 0
    buffer: list[StoreEvent] = attrs.Factory(list)
    loaded: anyio.Event = attrs.Factory(anyio.Event)
    changed: anyio.Event = attrs.Factory(anyio.Event)
    error: BaseException | None = None

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class Lifecycle(BackgroundService):
    """Answers the workspace tools for the chats in ``store``.

    Use it as an async context manager; it runs its event pump in an anyio task group::

        async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lc:
            await lc.register_chat("chat-1", owner="alice")
            result = await lc.create_workspace("chat-1", owner="alice", name="dev")

    ``build_timeout`` bounds each wait for a build, ``agent_timeout`` the wait for the agent.
    ``write_retries`` is how often a request retries a store write that raised a
    :class:`~workspace_lifecycle.errors.StoreError` (re-reading the rows first: the write may
    have committed). ``resync_interval``, off by default, makes a *waiting* request re-derive
    its workspace from the rows after that many seconds without news: a safety net for a store
    that may lose events (the fault-injecting test store does). The stores shipped here never
    lose a committed event, and their wake-ups have their own fallbacks, so by default a waiting
    request costs nothing until its event arrives, however long the build takes.
    """

    def __init__(
        self,
        store: Store,
        *,
        build_timeout: float = 600.0,
        agent_timeout: float = 600.0,
        write_retries: int = 3,
        resync_interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if build_timeout <= 0 or agent_timeout <= 0 or (resync_interval is not None and resync_interval <= 0):
            raise ValueError("build_timeout, agent_timeout and resync_interval must be positive")
        if write_retries < 0:
            raise ValueError("write_retries must not be negative")
        self.write_retries = write_retries
        self.resync_interval = resync_interval
        self.store = store
        self.build_timeout = build_timeout
        self.agent_timeout = agent_timeout
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._watchers: dict[str | None, set[MemoryObjectSendStream[StateChange]]] = {}
        self._cursor = 0
        self._progress = anyio.Event()
        self._sleep: anyio.CancelScope | None = None  # the pump's wait for the store's next change
        self._failure: BaseException | None = None
        self.events_applied = 0
        self._creating: dict[str, int] = {}  # chat -> creates in flight (the pump follows them)
        # chat -> workspaces whose machine nobody held but was kept because the chat is watched
        # or being created; dropped when that ends (without scanning every machine).
        self._kept: dict[str, set[str]] = {}
        self._deferred = 0  # wait=False requests finishing in the background
        self._drained = anyio.Event()
        self.resyncs = 0  # re-derivations of a waited-on workspace after resync_interval of silence
        self.write_retried = 0  # store writes retried after a StoreError

    # --- lifecycle of the runtime ------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._cursor = await self.store.head()
        return await super().__aenter__()  # runs the pump

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        for streams in self._watchers.values():
            for stream in streams:
                stream.close()
        return await super().__aexit__(exc_type, exc, tb)

    async def drain(self) -> None:
        """Wait until every request answered with ``wait=False`` that had to wait for another
        build first (a start during a stop build) has fired its own build or given up.

        A short-lived process (a CLI) calls this before leaving the ``async with``, which would
        otherwise cancel those requests.
        """
        while self._deferred:
            self._raise_if_failed()
            await self._drained.wait()

    @property
    def tracked(self) -> int:
        """How many workspaces have a machine now (somebody waits on or watches them)."""
        return len(self._entries)

    # --- the pump --------------------------------------------------------------------------

    async def run(self) -> None:
        """The event pump: applies the store's events to the tracked workspaces until cancelled."""
        try:
            await self._pump_forever()
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            # A bug, not a storage fault: wake every waiter (they raise) instead of hanging them.
            log.exception("event pump failed")
            self._fail(exc)
            raise

    async def _pump_forever(self) -> None:
        delay = 0.05
        while True:
            try:
                events = await self.store.read_events(self._cursor)
                if not events:
                    with anyio.CancelScope() as self._sleep:
                        await self.store.wait_for_change(self._cursor)
                    continue
                for event in events:
                    await self._dispatch(event)
                    self._cursor = event.seq
                self._advance()
                delay = 0.05
            except CursorExpiredError:
                await self._resync_all()
            except CorruptStateError as exc:
                if exc.table != "events" or not isinstance(exc.key, int) or exc.key <= self._cursor:
                    raise
                # An unreadable log entry: say which, re-derive what we track from the rows,
                # and go on after it rather than stop answering everyone.
                log.error("event pump: skipping %s", exc)
                await self._resync_all(exc.key)
            except StoreClosedError as exc:
                self._fail(exc)
                return
            except StoreError as exc:
                # Transient (a restarted database, a dropped connection): retry with backoff;
                # the store's own reconnect and resync bring the log back.
                log.warning("event pump: %s; retrying in %.2fs", exc, delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _advance(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        for entry in self._entries.values():
            entry.notify()
        self._advance()

    async def _dispatch(self, event: StoreEvent) -> None:
        entry = self._entries.get(event.workspace_id)
        if entry is None:
            if event.kind is EventKind.CHAT_BOUND and self._is_watched(event.chat_id):
                # A watched chat got a new workspace: follow it from its first event.
                entry = self._entries[event.workspace_id] = _Entry(event.workspace_id)
                entry.tracker = Tracker(event.workspace_id, event.chat_id, seq=event.seq)
                entry.loaded.set()
                self._kept.setdefault(event.chat_id, set()).add(event.workspace_id)
            return
        if entry.tracker is None:
            entry.buffer.append(event)
            return
        self._apply(entry, event)

    def _apply(self, entry: _Entry, event: StoreEvent) -> None:
        tracker = entry.tracker
        assert tracker is not None
        try:
            change = tracker.apply(event)
        except InvalidEventError as exc:
            log.warning("inconsistent event, resynchronising %s: %s", entry.workspace_id, exc)
            assert self._tg is not None
            self._tg.start_soon(self._resync, entry)
            return
        self.events_applied += 1
        if change is not None:
            self._publish(change)
        entry.notify()

    def _publish(self, change: StateChange) -> None:
        log_change(change, self._clock())
        for key in (change.chat_id, None):
            for stream in tuple(self._watchers.get(key, ())):
                try:
                    stream.send_nowait(change)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    self._watchers[key].discard(stream)

    async def _resync(self, entry: _Entry) -> None:
        """Replace a tracker's knowledge with the stored rows (the derived state)."""
        facts = await self.store.workspace_facts(entry.workspace_id)
        old = entry.tracker
        fresh = Tracker.from_facts(facts)
        if old is not None and fresh.seq < old.seq:
            return
        entry.tracker = fresh
        if old is not None and old.state is not fresh.state:
            self._publish(
                StateChange(
                    chat_id=fresh.chat_id,
                    workspace_id=fresh.workspace_id,
                    build_number=fresh.build_number,
                    from_state=old.state,
                    to_state=fresh.state,
                    event=None,
                    seq=fresh.seq,
                    at=self._clock(),
                )
            )
        entry.notify()

    async def _resync_all(self, cursor: int | None = None) -> None:
        """Re-derive every tracked workspace from the rows; continue reading after ``cursor``
        (default: the head before the re-read, since the rows already hold everything up to it)."""
        resume = await self.store.head() if cursor is None else cursor
        for entry in list(self._entries.values()):
            if entry.tracker is not None:
                await self._resync(entry)
        self._cursor = max(self._cursor, resume)
        self._advance()

    async def _caught_up(self, seq: int) -> None:
        """Wait until the pump has applied every event up to ``seq``."""
        while self._cursor < seq:
            self._raise_if_failed()
            with anyio.move_on_after(self.resync_interval or _KICK_AFTER) as slow:
                await self._progress.wait()
            if slow.cancelled_caught:
                # The store's wake-up was lost (a hint, never a promise): make the pump read again.
                self.resyncs += 1
                if self._sleep is not None:
                    self._sleep.cancel()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise StoreClosedError(f"the event pump stopped: {self._failure}")
        if self._tg is None:
            raise RuntimeError("use the Lifecycle as an async context manager first")

    # --- tracked workspaces ------------------------------------------------------------------

    @asynccontextmanager
    async def _track(self, workspace_id: str) -> AsyncIterator[_Entry]:
        """Hold a machine for ``workspace_id`` while the block runs (loaded from the rows)."""
        self._raise_if_failed()
        entry = await self._acquire(workspace_id)
        try:
            yield entry
        finally:
            self._release(entry)

    async def _acquire(self, workspace_id: str) -> _Entry:
        """Take a reference on the workspace's entry, loading it from the rows if needed."""
        while True:
            entry = self._entries.get(workspace_id)
            if entry is None and (any(self._watchers.values()) or self._creating):
                # The pump follows a watched chat's new workspace from its CHAT_BOUND event; loading
                # a later snapshot first would skip (and never publish) the changes in between.
                await self._caught_up(await self.store.head())
                entry = self._entries.get(workspace_id)
            if entry is None:
                entry = self._entries[workspace_id] = _Entry(workspace_id)
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
                    entry.loaded.set()
                    if self._entries.get(workspace_id) is entry:
                        del self._entries[workspace_id]
                    self._release(entry)
                    raise
                entry.loaded.set()
                return entry
            entry.refs += 1
            try:
                await entry.loaded.wait()
            except BaseException:
                self._release(entry)  # cancelled while another caller loads: drop our reference
                raise
            if entry.error is None:
                return entry
            self._release(entry)
            if not isinstance(entry.error, anyio.get_cancelled_exc_class()):
                raise entry.error
            # Its loader was cancelled, not this caller: load it ourselves.

    def _release(self, entry: _Entry) -> None:
        entry.refs -= 1
        if entry.refs <= 0 and self._entries.get(entry.workspace_id) is entry:
            tracker = entry.tracker
            if tracker is None or not self._is_watched(tracker.chat_id):
                del self._entries[entry.workspace_id]
            else:
                self._kept.setdefault(tracker.chat_id, set()).add(entry.workspace_id)

    def _drop_kept(self, chat_id: str | None) -> None:
        """Drop the machines kept for ``chat_id`` (every chat if ``None``) that nobody holds,
        unless the chat is still watched or being created."""
        chats = list(self._kept) if chat_id is None else [chat_id]
        for chat in chats:
            for workspace_id in self._kept.pop(chat, ()):
                entry = self._entries.get(workspace_id)
                if entry is not None and entry.refs <= 0:
                    entry.refs += 1
                    self._release(entry)  # keeps it (and its _kept mark) if still watched

    def _is_watched(self, chat_id: str) -> bool:
        return bool(self._watchers.get(chat_id) or self._watchers.get(None) or self._creating.get(chat_id))

    async def _wait(self, entry: _Entry, done: Callable[[Tracker], bool]) -> Tracker:
        """Sleep until ``done(tracker)`` holds; each pump delivery wakes us once."""
        while True:
            self._raise_if_failed()
            tracker = entry.tracker
            assert tracker is not None
            if done(tracker):
                return tracker
            if self.resync_interval is None:
                await entry.changed.wait()
                continue
            with anyio.move_on_after(self.resync_interval) as idle:
                await entry.changed.wait()
            if idle.cancelled_caught:
                # Safety net: nothing arrived for a while; if an event was lost, the rows have it.
                self.resyncs += 1
                try:
                    await self._resync(entry)
                except StoreClosedError:
                    raise
                except StoreError as exc:
                    log.warning("waiting on %s: resync failed: %s", entry.workspace_id, exc)

    # --- reading -----------------------------------------------------------------------------

    async def register_chat(self, chat_id: str, *, owner: str) -> None:
        """Record that ``chat_id`` belongs to ``owner`` (idempotent)."""
        _check_id("chat_id", chat_id)
        _check_id("owner", owner)
        await self.store.register_chat(chat_id, owner)

    async def state(self, chat_id: str, *, owner: str | None = None) -> WorkspaceState:
        """The chat's workspace state, derived from the stored rows.

        With ``owner``, another owner's chat reads as an unknown one (``no_workspace``).
        """
        chat = await self.store.get_chat(chat_id)
        if chat is None or chat.workspace_id is None or (owner is not None and chat.owner != owner):
            return WorkspaceState.NO_WORKSPACE
        return derive_state(await self.store.workspace_facts(chat.workspace_id))

    async def watch(
        self, chat_id: str | None = None, *, owner: str | None = None
    ) -> AsyncGenerator[StateChange, None]:
        """Every state change of ``chat_id``'s workspace (or of every chat, if ``None``).

        With ``owner``, only changes of that owner's chats are yielded: another owner's chat
        is watched exactly as an unknown one (nothing, ever). Watching every chat keeps one
        machine per workspace that changes while you watch.
        """
        owned: dict[str, bool] = {}  # a chat's owner never changes once it exists
        send, receive = anyio.create_memory_object_stream[StateChange](math.inf)
        self._watchers.setdefault(chat_id, set()).add(send)
        holds: list[Any] = []
        try:
            async with receive:
                if chat_id is not None:
                    chat = await self.store.get_chat(chat_id)
                    if chat is not None and chat.workspace_id is not None and owner in (None, chat.owner):
                        # Hold the machine of the current workspace; new ones follow CHAT_BOUND.
                        cm = self._track(chat.workspace_id)
                        await cm.__aenter__()
                        holds.append(cm)
                else:
                    for row in await self.store.list_chats():
                        if row.facts is not None and owner in (None, row.chat.owner):
                            cm = self._track(row.facts.workspace_id)
                            await cm.__aenter__()
                            holds.append(cm)
                async for change in receive:
                    if owner is not None and not await self._owned_by(change.chat_id, owner, owned):
                        continue
                    yield change
        finally:
            streams = self._watchers[chat_id]
            streams.discard(send)
            if not streams:
                del self._watchers[chat_id]
            send.close()
            for cm in reversed(holds):
                await cm.__aexit__(None, None, None)
            self._drop_kept(chat_id)

    async def _owned_by(self, chat_id: str, owner: str, cache: dict[str, bool]) -> bool:
        if chat_id not in cache:
            chat = await self.store.get_chat(chat_id)
            if chat is None:
                return False
            cache[chat_id] = chat.owner == owner
        return cache[chat_id]

    # --- the tools ---------------------------------------------------------------------------

    async def create_workspace(
        self, chat_id: str, *, owner: str, name: str | None = None, wait: bool = True
    ) -> ToolResult:
        """Create the chat's workspace (Coder's ``create_workspace``); idempotent while one lives."""
        return await self._run(Request.CREATE, chat_id, owner, wait, name=name)

    async def start_workspace(self, chat_id: str, *, owner: str, wait: bool = True) -> ToolResult:
        """Start the chat's workspace; exactly one start build however many callers race."""
        return await self._run(Request.START, chat_id, owner, wait)

    async def stop_workspace(self, chat_id: str, *, owner: str, wait: bool = True) -> ToolResult:
        """Stop the chat's workspace; waits for a build in flight first."""
        return await self._run(Request.STOP, chat_id, owner, wait)

    async def delete_workspace(self, chat_id: str, *, owner: str, wait: bool = True) -> ToolResult:
        """Delete the chat's workspace with one delete build."""
        return await self._run(Request.DELETE, chat_id, owner, wait)

    async def _run(
        self, request: Request, chat_id: str, owner: str, wait: bool, *, name: str | None = None
    ) -> ToolResult:
        _check_id("chat_id", chat_id)
        _check_id("owner", owner)
        with RequestSpan(request.value, chat_id) as span:
            result = await self._request(request, chat_id, owner, wait, name, span)
            span.result(result)
            return result

    async def _request(
        self,
        request: Request,
        chat_id: str,
        owner: str,
        wait: bool,
        name: str | None,
        span: RequestSpan,
    ) -> ToolResult:
        self._raise_if_failed()
        chat = await self.store.get_chat(chat_id)
        if chat is None or chat.owner != owner:
            # Another owner's chat is answered exactly as an unknown one: existence is not leaked.
            return ToolResult.error(
                answers.CHAT_NOT_FOUND if request is Request.CREATE else answers.NO_WORKSPACE
            )
        if chat.workspace_id is None:
            if request is Request.CREATE:
                return await self._create(chat_id, None, name, wait, span)
            return ToolResult.error(answers.NO_WORKSPACE)
        async with self._track(chat.workspace_id) as entry:
            await self._caught_up(await self.store.head())
            return await self._drive(request, entry, chat_id, name, wait, span)

    async def _drive(
        self,
        request: Request,
        entry: _Entry,
        chat_id: str,
        name: str | None,
        wait: bool,
        span: RequestSpan,
    ) -> ToolResult:
        """Decide, fire or wait, and decide again until the request has its answer."""
        facts_ws = entry.workspace
        if facts_ws is None:  # followed from its first event, never read: read it once
            facts_ws = entry.workspace = (await self.store.workspace_facts(entry.workspace_id)).workspace
        verb = request.value
        raced = False  # this call tried to fire and lost to another caller's identical build
        while True:
            tracker = entry.tracker
            assert tracker is not None
            if tracker.deleted and request is not Request.CREATE:
                return ToolResult.error(answers.WORKSPACE_DELETED)
            decision = tracker.decide(request)
            span.decision(decision.value, tracker.state.value)
            if decision is Decision.REFUSE:
                return ToolResult.error(answers.NO_WORKSPACE)
            if decision is Decision.FIRE and request is Request.CREATE:
                return await self._create(chat_id, entry.workspace_id, name, wait, span)
            if decision is Decision.ALREADY:
                return await self._already(request, entry, facts_ws, wait)
            if decision is Decision.FIRE:
                expected = tracker.build_number
                outcome = await self._request_build(entry.workspace_id, request, expected)
                if not outcome.fired:
                    raced = True
                    await self._caught_up(outcome.facts.seq)
                    won = outcome.facts.latest_build
                    if (
                        won is not None
                        and won.number == expected + 1
                        and won.transition is REQUEST_TRANSITION[request]
                    ):
                        # Another caller fired the very build this one decided to fire: it is
                        # this call's build too, even if it already finished (same build_id).
                        if not wait:
                            state = entry.tracker.state if entry.tracker else WorkspaceState.BUILDING
                            return answers.not_waiting(facts_ws, state, build_id=won.build_id, request=verb)
                        return await self._finish(
                            request, entry, facts_ws, won.number, own=True, build_id=won.build_id
                        )
                    continue
                assert outcome.build is not None
                span.fired(outcome.build.build_id)
                if not wait:
                    return answers.not_waiting(
                        facts_ws, WorkspaceState.BUILDING, build_id=outcome.build.build_id, request=verb
                    )
                return await self._finish(
                    request, entry, facts_ws, outcome.build.number, own=True, build_id=outcome.build.build_id
                )
            # A build is in flight.
            if not wait:
                if decision is Decision.WAIT_THEN_RETRY:
                    assert self._tg is not None
                    self._tg.start_soon(
                        self._continue_later, request, chat_id, entry.workspace_id, facts_ws.owner
                    )
                return answers.not_waiting(facts_ws, tracker.state, build_id=tracker.build_id, request=verb)
            if decision is Decision.WAIT:
                return await self._finish(request, entry, facts_ws, tracker.build_number, own=raced)
            # WAIT_THEN_RETRY: wait for the other build to end, whatever its outcome.
            number = tracker.build_number
            prefix = "waiting for in-progress build"
            if not await self._wait_build(entry, number):
                return answers.build_failed(prefix, "timed out waiting for workspace build", tracker.build_id)

    async def _retry_write(self, write: Callable[[], Any], reread: Callable[[], Any]) -> Any:
        """Run ``write``; on a StoreError, ``reread()`` the rows and retry (``write_retries``).

        A failed write may have committed (an error after COMMIT). Every write is a
        compare-and-set, so ``reread`` decides: it returns a not-fired :class:`Outcome` when the
        rows moved on (this call's write or another caller's: the caller treats both as a lost
        race and answers about the build that exists), or ``None`` to retry the same write,
        which the compare-and-set makes safe.
        """
        delay = 0.01
        for attempt in range(self.write_retries + 1):
            try:
                return await write()
            except (StoreClosedError, NotFoundError):
                raise
            except StoreError as exc:
                if attempt == self.write_retries:
                    raise
                log.warning("store write failed (%s); re-reading and retrying in %.2fs", exc, delay)
                self.write_retried += 1
                await anyio.sleep(delay)
                delay = min(delay * 4, 0.5)
                try:
                    moved = await reread()
                except (StoreClosedError, NotFoundError):
                    raise
                except StoreError:
                    continue
                if moved is not None:
                    return moved
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request_build(self, workspace_id: str, request: Request, expected: int) -> Outcome:
        async def write() -> Outcome:
            return await self.store.request_build(
                workspace_id, REQUEST_TRANSITION[request], expected_build_number=expected
            )

        async def reread() -> Outcome | None:
            facts = await self.store.workspace_facts(workspace_id)
            latest = facts.latest_build
            if facts.workspace.deleted or (latest is not None and latest.number != expected):
                return Outcome(fired=False, build=None, facts=facts)
            return None

        outcome: Outcome = await self._retry_write(write, reread)
        return outcome

    async def _create_workspace(self, chat_id: str, name: str, expected: str | None) -> Outcome:
        async def write() -> Outcome:
            return await self.store.create_workspace(chat_id, name, expected_workspace_id=expected)

        async def reread() -> Outcome | None:
            chat = await self.store.get_chat(chat_id)
            if chat is None or chat.workspace_id is None or chat.workspace_id == expected:
                return None
            facts = await self.store.workspace_facts(chat.workspace_id)
            first = facts.latest_build
            if facts.workspace.name == name and first is not None and first.number == 1:
                # The very workspace this call asked for (its write committed before the error,
                # or an identical create won): answer as its creator, about its first build.
                return Outcome(fired=True, build=first, facts=facts)
            return Outcome(fired=False, build=None, facts=facts)

        outcome: Outcome = await self._retry_write(write, reread)
        return outcome

    async def _continue_later(self, request: Request, chat_id: str, workspace_id: str, owner: str) -> None:
        """``wait=False`` during another kind of build: finish the request in the background."""
        self._deferred += 1
        try:
            async with self._track(workspace_id) as entry:
                number = entry.tracker.build_number if entry.tracker else 0
                if not await self._wait_build(entry, number):
                    log.warning(
                        "deferred %s of %s: build %d did not finish within %ss; giving up",
                        request.value,
                        chat_id,
                        number,
                        self.build_timeout,
                    )
                    return
                # Decide again for this workspace, not whatever the chat is bound to by now: a
                # deferred stop must not stop the new workspace created after a delete.
                await self._caught_up(await self.store.head())
                await self._drive(request, entry, chat_id, None, False, RequestSpan.none())
        except StoreError as exc:
            log.warning("deferred %s of %s failed: %s", request.value, chat_id, exc)
        finally:
            self._deferred -= 1
            if not self._deferred:
                self._drained.set()
                self._drained = anyio.Event()

    async def _wait_build(self, entry: _Entry, number: int) -> bool:
        """Wait for build ``number`` to finish; False on ``build_timeout``."""
        with anyio.move_on_after(self.build_timeout):
            await self._wait(
                entry,
                lambda t: (
                    t.build_number > number
                    or (t.build_number == number and t.status is not None and t.status.finished)
                ),
            )
            return True
        return False

    async def _finish(
        self,
        request: Request,
        entry: _Entry,
        ws: Workspace,
        number: int,
        *,
        own: bool,
        build_id: str | None = None,
    ) -> ToolResult:
        """Wait for build ``number`` and answer for it.

        ``build_id`` is the build's id when the caller knows it (it fired the build, whose
        ``build_queued`` event the tracker may not have seen yet).
        """
        tracker = entry.tracker
        assert tracker is not None
        if build_id is None and tracker.build_number == number:
            build_id = tracker.build_id
        if request is Request.CREATE:
            prefix = "workspace build failed" if own else "existing workspace build failed"
        else:
            prefix = f"workspace {request.value} build failed" if own else "waiting for in-progress build"
        if not await self._wait_build(entry, number):
            return answers.build_failed(prefix, "timed out waiting for workspace build", build_id)
        tracker = entry.tracker
        assert tracker is not None
        if tracker.build_number != number:
            return answers.build_failed(prefix, "superseded by a newer build", build_id)
        build_id = tracker.build_id
        if tracker.state is WorkspaceState.FAILED:
            reason = answers.build_failure_reason(tracker.status, tracker.error)
            return answers.build_failed(prefix, reason, build_id)
        if request is Request.CREATE and not own:
            agent = await self._agent(entry)
            return answers.create_existing(ws, tracker.state, build_id=build_id, agent=agent)
        if request in (Request.START, Request.CREATE):
            if tracker.state not in (WorkspaceState.RUNNING, WorkspaceState.AGENT_READY):
                return answers.build_failed(prefix, f"workspace is {tracker.state.value}", build_id)
            return answers.done(request.value, ws, build_id=build_id, agent=await self._agent(entry))
        return answers.done(request.value, ws, build_id=build_id)

    async def _already(self, request: Request, entry: _Entry, ws: Workspace, wait: bool) -> ToolResult:
        tracker = entry.tracker
        assert tracker is not None
        if not wait:
            return answers.not_waiting(ws, tracker.state, build_id=None, request=request.value)
        if request is Request.CREATE:
            agent = {} if tracker.state is WorkspaceState.STOPPED else await self._agent(entry)
            return answers.create_existing(ws, tracker.state, build_id=None, agent=agent)
        fields = await self._agent(entry) if request is Request.START else None
        return answers.done(request.value, ws, build_id=None, agent=fields)

    async def _agent(self, entry: _Entry) -> dict[str, Any]:
        """Wait for the agent to leave ``created``/``starting`` (up to ``agent_timeout``)."""
        tracker = entry.tracker
        assert tracker is not None
        number = tracker.build_number
        timed_out = True
        with anyio.move_on_after(self.agent_timeout):
            tracker = await self._wait(
                entry,
                lambda t: (
                    t.build_number != number or not t.has_agent or t.agent is None or not t.agent.pending
                ),
            )
            timed_out = False
        tracker = entry.tracker
        assert tracker is not None
        return answers.agent_fields(has_agent=tracker.has_agent, lifecycle=tracker.agent, timed_out=timed_out)

    async def _create(
        self, chat_id: str, expected: str | None, name: str | None, wait: bool, span: RequestSpan
    ) -> ToolResult:
        # While the create is in flight the pump follows the chat from the new workspace's first
        # event (CHAT_BOUND), so its no_workspace -> building change is published and logged.
        self._creating[chat_id] = self._creating.get(chat_id, 0) + 1
        following = True
        try:
            outcome = await self._create_workspace(chat_id, workspace_name(name), expected)
            await self._caught_up(outcome.facts.seq)
            ws = outcome.facts.workspace
            if not outcome.fired:
                # Another caller bound a workspace first: answer about that one.
                self._stop_following(chat_id)
                following = False
                async with self._track(ws.workspace_id) as entry:
                    return await self._drive(Request.CREATE, entry, chat_id, name, wait, span)
            assert outcome.build is not None
            span.fired(outcome.build.build_id)
            if not wait:
                return answers.not_waiting(
                    ws,
                    WorkspaceState.BUILDING,
                    build_id=outcome.build.build_id,
                    request="create",
                    created=True,
                )
            async with self._track(ws.workspace_id) as entry:
                self._stop_following(chat_id)
                following = False
                return await self._finish(
                    Request.CREATE, entry, ws, outcome.build.number, own=True, build_id=outcome.build.build_id
                )
        finally:
            if following:
                self._stop_following(chat_id)

    def _stop_following(self, chat_id: str) -> None:
        """End one create's claim on the chat; drop machines nobody holds or watches any more."""
        left = self._creating[chat_id] - 1
        if left:
            self._creating[chat_id] = left
            return
        del self._creating[chat_id]
        self._drop_kept(chat_id)


def _check_id(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, not {value!r}")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL bytes")
