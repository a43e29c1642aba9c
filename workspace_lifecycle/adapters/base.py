"""The store interface: what every storage adapter implements, and nothing more.

A store keeps chats, workspaces, builds, agents and an append-only event log whose sequence
numbers follow commit order. Every write appends its events in the same transaction. Stores
decide nothing about states: they execute compare-and-set writes (a build is appended only if
the latest build is still the one the caller's decision saw) and report what they did.

The runtime reads the log with :meth:`Store.read_events` from a cursor and sleeps in
:meth:`Store.wait_for_change` when it has read everything; each adapter wakes that sleep its own
way (an in-process event, ``PRAGMA data_version``, ``LISTEN/NOTIFY``). A store may narrow the
wake-ups it receives from other processes to what this process waits on: the runtime says so
with :meth:`Store.interest` (a no-op for stores that wake every sleeper anyway).

Adapters never import the runtime.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar

import anyio
import attrs

from ..buildlogs import BuildLog
from ..errors import CorruptStateError
from ..limits import Limits, Usage
from ..pools import Pool
from ..skew import ClockSkew
from ..values import (
    AgentLifecycle,
    Build,
    Chat,
    Deadline,
    JobStatus,
    Lease,
    Policy,
    StoreEvent,
    Transition,
    WorkspaceFacts,
)

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "ArmedDeadlines",
    "ChatRow",
    "Deferral",
    "Doorbell",
    "Outcome",
    "PoolClaim",
    "Store",
    "Topic",
    "TopicKind",
]

#: How long a claim's lease lasts unless renewed: a worker renews it every third of this
#: (:func:`workspace_lifecycle.provisioner.holding`), and a worker that stops renewing has its
#: build failed this long after its last renewal at the latest.
DEFAULT_LEASE_SECONDS = 30.0
#: How long a turn's hold lasts unless renewed (:meth:`Store.hold_turn`): its holder renews it
#: every third of this, and the hold of a holder that died lapses this long after its last renewal.
DEFAULT_HOLD_SECONDS = 30.0


@attrs.frozen
class Outcome:
    """The result of a compare-and-set request.

    ``fired`` says whether this call appended the build; ``build`` is the build it appended (or
    ``None``); ``facts`` are the workspace's facts right after the transaction, so a caller that
    lost the race sees what won.
    """

    fired: bool
    build: Build | None
    facts: WorkspaceFacts


@attrs.frozen
class Deferral:
    """The result of :meth:`Store.defer_request`: ``held`` when the build it was deferred behind
    was still in flight (the intent is stored, or already was); ``facts`` as the transaction
    left them (or as read, when it wrote nothing), so a caller whose build ended meanwhile
    decides again on them."""

    held: bool
    facts: WorkspaceFacts


@attrs.frozen
class PoolClaim:
    """The result of :meth:`Store.claim_pooled`.

    ``claimed``: the chat is now bound to a member of the pool, whose ``facts`` (as the claim
    left them) these are. Otherwise ``facts`` are those of the workspace the chat is bound to
    now if the compare-and-set lost to another create, and ``None`` when the pool had no ready
    member (the caller builds one the ordinary way).
    """

    claimed: bool
    facts: WorkspaceFacts | None


@attrs.frozen
class ArmedDeadlines:
    """Every armed deadline, by workspace id, read in one transaction with the log's ``head``
    then: a reader that applies the log's ``deadline_set`` events after ``head`` stays exact.

    ``unreadable`` names the workspaces whose stored deadline is corrupt (each with its error):
    one bad row must not hide every other deadline.
    """

    head: int
    deadlines: Mapping[str, Deadline]
    unreadable: Mapping[str, CorruptStateError] = attrs.field(factory=dict)

    @classmethod
    def read(cls, head: int, rows: Iterable[tuple[str, Callable[[], Deadline | None]]]) -> ArmedDeadlines:
        """From ``(workspace_id, parse)`` pairs: each row parsed, a corrupt one set aside."""
        deadlines: dict[str, Deadline] = {}
        unreadable: dict[str, CorruptStateError] = {}
        for workspace_id, parse in rows:
            try:
                deadline = parse()
            except CorruptStateError as exc:
                unreadable[workspace_id] = exc
                continue
            if deadline is not None:
                deadlines[workspace_id] = deadline
        return cls(head, deadlines, unreadable)


@attrs.frozen
class ChatRow:
    """A chat with its workspace's facts, for status listings.

    ``error`` is set (and ``facts`` is ``None``) when the workspace's rows are unreadable: one
    corrupt workspace must not hide every other chat from a listing.
    """

    chat: Chat
    facts: WorkspaceFacts | None
    error: CorruptStateError | None = None

    @classmethod
    def read(cls, chat: Chat, facts: Callable[[], WorkspaceFacts]) -> ChatRow:
        """The row of ``chat``, its facts read by ``facts()`` unless it has no workspace."""
        if chat.workspace_id is None:
            return cls(chat, None)
        try:
            return cls(chat, facts())
        except CorruptStateError as exc:
            return cls(chat, None, exc)


class TopicKind(enum.Enum):
    """What a :class:`Topic` names."""

    WORKSPACE = "workspace"  # the events of one workspace
    CHAT = "chat"  # a chat bound to a new workspace (what a watcher of the chat follows)
    EVERY_WORKSPACE = "every_workspace"  # every event
    BUILDS = "builds"  # a build queued in any workspace (what a provisioner claims)


@attrs.frozen
class Topic:
    """News a process waits for (see :meth:`Store.interest`).

    >>> Topic.workspace("w1"), Topic.BUILDS.kind.value
    (Topic(kind=<TopicKind.WORKSPACE: 'workspace'>, key='w1'), 'builds')
    """

    kind: TopicKind
    key: str = ""

    #: Every event of every workspace (a watcher of every chat).
    EVERY_WORKSPACE: ClassVar[Topic]
    #: A build queued in any workspace (a provisioner waiting for one to claim).
    BUILDS: ClassVar[Topic]

    @classmethod
    def workspace(cls, workspace_id: str) -> Topic:
        """The events of one workspace (somebody waits on it or watches its chat)."""
        return cls(TopicKind.WORKSPACE, workspace_id)

    @classmethod
    def chat(cls, chat_id: str) -> Topic:
        """The chat bound to a new workspace (its ``chat_bound`` event)."""
        return cls(TopicKind.CHAT, chat_id)


Topic.EVERY_WORKSPACE = Topic(TopicKind.EVERY_WORKSPACE)
Topic.BUILDS = Topic(TopicKind.BUILDS)


class Store(abc.ABC):
    """The storage interface. Every method may raise :class:`~workspace_lifecycle.errors.StoreError`.

    Use a store as an async context manager (``async with open_store(url) as store``); methods
    called after close raise :class:`~workspace_lifecycle.errors.StoreClosedError`.
    """

    #: The URL the store was opened from (with any password removed).
    url: str = ""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and migrate; called by ``async with``."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    # --- chats and workspaces --------------------------------------------------------------

    @abc.abstractmethod
    async def register_chat(
        self,
        chat_id: str,
        owner: str,
        *,
        policy: Policy | None = None,
        default_policy: Policy | None = None,
    ) -> Chat:
        """Create the chat if absent (idempotent); return it as stored.

        A new chat gets ``policy``, else ``default_policy``, else :class:`Policy()` (never);
        an existing chat's policy changes only when ``policy`` is given
        (:func:`~workspace_lifecycle.writes.register_chat` decides). Another owner raises
        ``OwnershipError``.
        """

    @abc.abstractmethod
    async def get_chat(self, chat_id: str) -> Chat | None:
        """The chat, or ``None``."""

    @abc.abstractmethod
    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        """The workspace, its latest build and agent, and the log head, in one read."""

    @abc.abstractmethod
    async def get_build(self, build_id: str) -> Build:
        """One build as stored (``NotFoundError`` if there is none): how a superseded build
        ended, for the request that waited for it."""

    @abc.abstractmethod
    async def create_workspace(
        self,
        chat_id: str,
        name: str,
        *,
        expected_workspace_id: str | None,
        parameters: Mapping[str, str] | None = None,
        limits: Limits | None = None,
    ) -> Outcome:
        """Create a workspace with its first (start) build and bind the chat to it.

        The owner's limits (those stored for it over ``limits``, the caller's default) are
        checked on its usage inside the same transaction: over one, nothing is written and
        :class:`~workspace_lifecycle.errors.QuotaExceededError` is raised.

        ``parameters`` (template parameters, checked by
        :func:`~workspace_lifecycle.values.check_parameters`) are kept with the build and handed
        to the provisioner by :meth:`claim_build`.

        Compare-and-set: only if the chat is still bound to ``expected_workspace_id``. On a lost
        race, ``facts`` are those of the workspace the chat is bound to now.
        """

    @abc.abstractmethod
    async def claim_pooled(
        self,
        chat_id: str,
        pool: str,
        name: str,
        *,
        expected_workspace_id: str | None,
        limits: Limits | None = None,
    ) -> PoolClaim:
        """Bind the chat to a ready workspace of warm pool ``pool`` named ``name`` (see
        :func:`~workspace_lifecycle.writes.claim_pooled`): a compare-and-set on the chat, as
        :meth:`create_workspace`, and on the member, so each member goes to exactly one chat.
        The claim gives the chat's owner a running workspace more: it must fit the owner's
        limits (``limits``, the caller's default, or those stored), counted in the same
        transaction; over them it raises QuotaExceededError and writes nothing."""

    @abc.abstractmethod
    async def fill_pool(self, pool: Pool) -> WorkspaceFacts | None:
        """Queue one more workspace of ``pool`` unless it has its size already (decided on the
        members read in the same transaction: replicas filling at once never overfill); the
        new workspace's facts, or ``None``."""

    @abc.abstractmethod
    async def pool_members(self, pool: str) -> Sequence[WorkspaceFacts]:
        """The facts of every workspace of warm pool ``pool`` that no chat claimed and that is
        not deleted, in one read."""

    @abc.abstractmethod
    async def request_build(
        self,
        workspace_id: str,
        transition: Transition,
        *,
        expected_build_number: int,
        parameters: Mapping[str, str] | None = None,
        limits: Limits | None = None,
    ) -> Outcome:
        """Append build ``expected_build_number + 1`` if the compare-and-set of
        :func:`~workspace_lifecycle.writes.request_build` holds (that build is still the latest
        and finished, the workspace is not deleted, and a start's chat is still bound to it);
        otherwise append nothing. A start checks the owner's limits as
        :meth:`create_workspace` does."""

    @abc.abstractmethod
    async def set_limits(self, owner: str, limits: Limits) -> None:
        """Store ``limits`` for ``owner`` (replacing any stored before): from the next create or
        start they are in force for the owner, over every runtime's default."""

    @abc.abstractmethod
    async def usage(self, owner: str) -> Usage:
        """The owner's usage (running workspaces, workspaces) and stored limits, in one read."""

    @abc.abstractmethod
    async def defer_request(
        self,
        workspace_id: str,
        transition: Transition | None,
        *,
        expected_build_number: int,
        requested_by: str,
        running_limit: int | None = None,
    ) -> Deferral:
        """Store the intent to fire a ``transition`` build once build ``expected_build_number``
        ends, replacing any stored before (``None``: withdraw it), if that build is still in
        flight (:func:`~workspace_lifecycle.writes.defer_request` decides). ``running_limit``:
        the caller's default limit of running workspaces, checked when a deferred start fires. The write that
        finishes that build acts on the intent, in its own transaction
        (:func:`~workspace_lifecycle.writes.finish_build`)."""

    @abc.abstractmethod
    async def touch(self, workspace_id: str) -> Deadline | None:
        """Activity on the workspace now: push its idle deadline by its chat's policy
        (:func:`~workspace_lifecycle.writes.touch` decides; nothing is written when it sets
        nothing new). Returns the deadline armed after the call."""

    @abc.abstractmethod
    async def fire_deadline(self, workspace_id: str, expected: Deadline) -> Outcome:
        """Fire the workspace's deadline if it is still exactly ``expected`` and due now
        (:func:`~workspace_lifecycle.writes.fire_deadline` decides). ``fired`` says whether a
        build was appended; ``facts`` (with the deadline armed after the call) are read in the
        same transaction."""

    @abc.abstractmethod
    async def warn_deadline(self, workspace_id: str, expected: Deadline) -> Outcome:
        """Write the ``deadline_approaching`` event of the workspace's deadline if it is still
        exactly ``expected`` and its warning is due now (:func:`~workspace_lifecycle.writes.warn_deadline`
        decides); the stored deadline is then marked warned. ``fired`` says whether this call
        warned; ``facts`` (with the deadline armed after the call) are read in the same
        transaction."""

    @abc.abstractmethod
    async def hold_turn(
        self,
        workspace_id: str,
        token: str,
        *,
        renew: bool = False,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
    ) -> float | None:
        """Take (or, with ``renew``, renew) the turn's hold ``token`` on the workspace
        (:func:`~workspace_lifecycle.writes.hold_turn` decides): no idle stop fires while it is
        live. Returns when it lapses unless renewed (store time), ``None`` for a deleted
        workspace; a renewal of a lapsed hold raises
        :class:`~workspace_lifecycle.errors.HoldLostError`."""

    @abc.abstractmethod
    async def release_turn(self, workspace_id: str, token: str) -> bool:
        """The turn holding the workspace with ``token`` ended: its hold goes, and the last one
        to go arms the idle deadline from now (:func:`~workspace_lifecycle.writes.release_turn`).
        Whether the hold was still there."""

    @abc.abstractmethod
    async def armed_deadlines(self) -> ArmedDeadlines:
        """Every workspace's armed deadline, with the log's head in the same read."""

    @abc.abstractmethod
    async def list_chats(self) -> Sequence[ChatRow]:
        """Every chat with its workspace's facts (for ``status``)."""

    # --- the provisioner side ---------------------------------------------------------------

    @abc.abstractmethod
    async def claim_build(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Build | None:
        """Hand the oldest pending build to ``worker`` (exactly one worker gets each), under a
        lease: the build's ``lease_token`` is the worker's fencing token, and the lease runs out
        at ``lease_expires_at`` (``lease_seconds`` from now, store time) unless renewed."""

    @abc.abstractmethod
    async def renew_lease(
        self, build_id: str, token: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> float:
        """Extend the lease ``token`` on a build in flight to ``lease_seconds`` from now; return
        when it runs out (store time). Raises
        :class:`~workspace_lifecycle.errors.LeaseLostError` (nothing changed) when the lease is
        not held any more: it expired, or the build finished. Appends no event."""

    @abc.abstractmethod
    async def next_lease_expiry(self, *, skip: Collection[str] = ()) -> Lease | None:
        """The lease of a build in flight that runs out first, or ``None``; builds whose id is
        in ``skip`` (rows a reaper set aside as unreadable) are passed over."""

    @abc.abstractmethod
    async def expire_lease(self, build_id: str, token: str) -> Build | None:
        """Fail the build whose lease ``token`` ran out (a compare-and-set: exactly once across
        replicas); ``None`` when there is nothing to do (renewed, not yet due by the store's
        clock, already expired or finished) — :func:`~workspace_lifecycle.writes.expire_lease`
        decides."""

    @abc.abstractmethod
    async def finish_build(
        self,
        build_id: str,
        status: JobStatus | str,
        error: str | None = None,
        *,
        has_agent: bool = True,
        details: Mapping[str, Any] | None = None,
        lease: str | None = None,
    ) -> Build:
        """Finish an in-progress build (``succeeded``, ``failed`` or ``canceled``, as the enum or
        its string value).

        A succeeded start build with ``has_agent`` creates its agent in ``created``; a succeeded
        delete build marks the workspace deleted (:func:`~workspace_lifecycle.writes.finish_build`
        decides both, for every store). ``details`` (a JSON object, checked by
        :func:`~workspace_lifecycle.values.check_details`) is kept with a build that did not
        succeed and merged into the answer of the request that waited for it. ``lease``, the
        worker's fencing token, makes the finish hold only while the worker holds the lease
        (:class:`~workspace_lifecycle.errors.LeaseLostError` otherwise, nothing changed).
        """

    @abc.abstractmethod
    async def report_agent(
        self,
        workspace_id: str,
        lifecycle: AgentLifecycle | str,
        *,
        lease: str | None = None,
        endpoints: Mapping[str, str] | None = None,
    ) -> None:
        """Record the agent's lifecycle state (the enum or its string value, ``"ready"``) for the
        agent of the latest build that has one. With ``lease`` (the token of the build that
        made the agent) the report holds only while that build is the workspace's latest.

        ``endpoints`` say where the agent can be reached (``{"http": "http://127.0.0.1:41237"}``,
        checked by :func:`~workspace_lifecycle.endpoints.check_endpoints`: ``ValueError`` for a
        bad one); they replace the agent's, are answered wherever the agent is, and are cleared
        when a stop or delete build is queued. Without them the agent keeps its own."""

    @abc.abstractmethod
    async def append_log(
        self, build_id: str, lines: Sequence[str], *, lease: str | None = None, dropped: int = 0
    ) -> None:
        """Append ``lines`` (strings) to the build's log, bounded per build in lines and bytes
        (:mod:`~workspace_lifecycle.buildlogs`: the oldest dropped first and counted, control
        characters escaped); ``dropped`` counts lines the caller dropped itself. ``lease``
        fences it like every write of the build's worker."""

    @abc.abstractmethod
    async def read_log(
        self, workspace_id: str, number: int | None = None
    ) -> tuple[Build, BuildLog | None] | None:
        """Build ``number`` of the workspace (``None``: the latest) with its log (``None``
        before its first line); ``None`` when there is no such build."""

    # --- the event log ------------------------------------------------------------------------

    @abc.abstractmethod
    async def head(self) -> int:
        """The sequence number of the newest committed event (0 for an empty log)."""

    @abc.abstractmethod
    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        """Committed events with ``seq > after``, in order; raises ``CursorExpiredError`` when
        events after ``after`` were pruned."""

    @abc.abstractmethod
    async def wait_for_change(self, after: int) -> None:
        """Return soon after an event newer than ``after`` may be readable (may return early)."""

    @abc.abstractmethod
    async def prune_events(self, older_than: float) -> int:
        """Delete events written before the wall-clock time ``older_than``; return how many."""

    # --- the store's clock ------------------------------------------------------------------

    async def measure_clock_skew(self) -> ClockSkew | None:
        """The store's clock against this process's (``clock``), in one round trip (see
        :mod:`workspace_lifecycle.skew`); ``None`` for a store with no clock of its own, whose
        time is the replicas' (SQLite: one machine's clock; memory: this process's)."""
        return None

    # --- interest ---------------------------------------------------------------------------

    def take_interest(self, topic: Topic) -> None:  # noqa: B027 - optional hook
        """This process now waits on news of ``topic`` (counted: every call is matched by one
        :meth:`drop_interest`). A store whose wake-ups from other processes can be narrowed
        (PostgreSQL with ``shards``) listens for it from now on; :meth:`wait_for_change` may
        otherwise learn of other topics' news only later (at the store's fallback poll, or
        the next wake-up for a topic of interest). It must not block: it is called from
        synchronous code. The default does nothing (every sleeper is woken by every change)."""

    def drop_interest(self, topic: Topic) -> None:  # noqa: B027 - optional hook
        """The end of one :meth:`take_interest` of ``topic``."""

    @contextlib.contextmanager
    def interest(self, topic: Topic) -> Iterator[None]:
        """:meth:`take_interest` of ``topic`` while the block runs."""
        self.take_interest(topic)
        try:
            yield
        finally:
            self.drop_interest(topic)


class Doorbell:
    """How a store's :meth:`Store.wait_for_change` sleeps and wakes: one per store.

    ``head`` is the newest log head this process knows of. Whoever learns of a newer one (a
    local commit, a read of the log, a cross-process watcher, a notification) calls
    :meth:`saw`, which rings the bell for every sleeper. A ring with nobody asleep is not kept:
    sleepers compare ``head`` with their cursor before they sleep. The event is made by the
    first sleeper and dropped with the last, so a store reused under another event loop (a
    second ``anyio.run``) never finds one that belongs to the first.
    """

    __slots__ = ("_event", "_sleepers", "head")

    def __init__(self, head: int = 0) -> None:
        self.head = head
        self._event: anyio.Event | None = None
        self._sleepers = 0

    def saw(self, head: int, *, force: bool = False) -> bool:
        """The log reached ``head``: ring if that is news (or if ``force``); say whether it rang."""
        if head > self.head:
            self.head = head
        elif not force:
            return False
        self.ring()
        return True

    def ring(self) -> None:
        """Wake every sleeper (they re-read from their cursors)."""
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def sleep(self, after: int, recheck: Callable[[], Awaitable[int]] | None = None) -> None:
        """Return once the head may have passed ``after`` (at once if it has; may return early).

        ``recheck`` reads the head afresh after the sleeper registered, for stores whose other
        processes' commits are learnt by a watcher that might not have looked yet.
        """
        if self.head > after:
            return
        if self._event is None:
            self._event = anyio.Event()
        event = self._event
        self._sleepers += 1
        try:
            if recheck is not None and await recheck() > after:
                return
            await event.wait()
        finally:
            self._sleepers -= 1
            if not self._sleepers and self._event is event:
                self._event = None

    @property
    def sleepers(self) -> int:
        """How many tasks sleep now."""
        return self._sleepers
