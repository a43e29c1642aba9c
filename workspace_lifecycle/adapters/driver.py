"""The driver protocol: what a storage backend implements so that :class:`DriverStore` can be
written once over it.

Theory of operation
-------------------
A store write is always the same three steps inside one transaction: read the rows the
decision needs, decide with :mod:`workspace_lifecycle.writes` (pure), persist the decided
:class:`~workspace_lifecycle.writes.Write`. :class:`~workspace_lifecycle.adapters.store.DriverStore`
holds the middle step for every write, once; a :class:`Driver` holds the other two and nothing
else. It is handed a :class:`Plan`: which rows to read (a :class:`Read`) and the decision to
call on them. It reads them in one snapshot, calls the decision, persists the write under a
guard that makes the read and the write one atomic step (a lock held since the read, or a
compare-and-set of the versions read), and returns the decision's answer. When the guard finds
that another writer changed the rows since the read, it writes nothing and returns
:data:`RETRY`; the store then reads and decides again. A driver decides nothing: it knows no
rule of :mod:`~workspace_lifecycle.writes`, only rows, SQL (or dictionaries) and its I/O.

Besides :meth:`Driver.transact`, a driver answers the store's plain reads, the event log, the
wake-ups (:meth:`Driver.wait_for_change`) and the interest in topics. Wrappers (the fault
injector, the provisioner kit's recorder, the bench's counter) wrap a driver's
:meth:`~Driver.transact` and reads once, whatever the write.

The driver test suite is :func:`workspace_lifecycle.testing.check_store`: a driver of one's
own passes it when ``DriverStore(MyDriver())`` does.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import ClassVar, Final, Generic, NamedTuple, TypeVar

import attrs

from ..buildlogs import BuildLog
from ..limits import Usage
from ..values import Build, Chat, Lease, StoreEvent, Workspace, WorkspaceFacts
from ..writes import Write
from .base import ArmedDeadlines, ChatRow, Topic

__all__ = ["RETRY", "Driver", "LogRead", "Plan", "Read", "ReadKind", "Retry", "Rows", "WrappedDriver"]

T = TypeVar("T")
R = TypeVar("R")

#: A build and its log (``None`` before its first line), as :meth:`Driver.read_log` reads them.
LogRead = tuple[Build, BuildLog | None]


class ReadKind(enum.Enum):
    """Which rows a write reads before it decides."""

    #: The chat ``key`` and, when it is bound to one, its workspace's facts.
    CHAT = "chat"
    #: The workspace ``key``'s facts (workspace, latest build, agent, head) and its chat.
    WORKSPACE = "workspace"
    #: The build ``key``, its workspace and its workspace's chat.
    BUILD = "build"
    #: The oldest pending build (claim order) and its workspace; ``key`` is unused.
    PENDING = "pending"
    #: As BUILD, and the build's log (``Rows.log``; ``None`` before its first line).
    LOG = "log"
    #: The owner ``key``'s usage and stored limits (``Rows.usage``), and nothing else.
    OWNER = "owner"
    #: A warm pool: the members (``Rows.members``: the facts of every workspace bound to the
    #: pool's holder ``key`` and not deleted) and, without a ``claimant``, the holder's row
    #: (``Rows.chat``); with one, the claimant's chat row and the facts of the workspace it is
    #: bound to (``Rows.chat``, ``Rows.facts``), as a CHAT read. A driver guards the members'
    #: rows too: a claim changes one of them.
    POOL = "pool"


class Read(NamedTuple):
    """The rows a :class:`Plan` decides on. (A named tuple: one is made per write, at half the
    cost of a frozen attrs class; ``read._replace(usage=True)`` makes a changed copy.)

    >>> Read.workspace("w1")
    Read(kind=<ReadKind.WORKSPACE: 'workspace'>, key='w1', related=True, latest=True, usage=False, limited=True, claimant='')
    """

    kind: ReadKind
    key: str = ""
    #: Whether the decision needs the related rows too: for a WORKSPACE read its chat's row
    #: (a driver that guards by versions then guards the chat's as well), for a CHAT read the
    #: facts of the workspace it is bound to, for a BUILD read its workspace's chat (a driver may
    #: still return the chat, but need not guard it: a lease's renewal never reads it).
    related: bool = True
    #: For a WORKSPACE read: whether the decision needs the workspace's latest build and the
    #: log's head. When it does not (an agent's report without a lease), a driver may skip them:
    #: ``Rows.facts`` then holds ``latest_build=None`` and ``seq=0``, which the plan never reads.
    #: A driver that reads them anyway stays correct; one that skips them saves a join per write.
    latest: bool = True
    #: Whether the decision needs its owner's usage too (``Rows.usage``: the workspaces of the
    #: chat's owner, or of the workspace's, counted in the same snapshot, with its stored
    #: limits): a write that may take one more slot. The read must then also serialise every
    #: other such write of the owner until it commits (a lock of the owner's row, or a
    #: compare-and-set of its version, bumped by each such write), so that no two can both
    #: pass the last slot.
    usage: bool = False
    #: With ``usage``: whether a limit applies whatever the owner's row says (the runtime's
    #: default limits). When it does not, only limits stored for the owner can refuse the
    #: write, and a driver may decide without counting (``Rows.usage`` ``None``) provided its
    #: write holds only while the owner has no stored limits (a condition of its guard); it
    #: counts as usual when the owner has some.
    limited: bool = True
    #: For a POOL read: the chat that claims a member (``""``: none, a fill or a listing).
    claimant: str = ""

    @classmethod
    def of_chat(
        cls, chat_id: str, *, related: bool = True, usage: bool = False, limited: bool = True
    ) -> Read:
        return cls(ReadKind.CHAT, chat_id, related, usage=usage, limited=limited)

    @classmethod
    def workspace(
        cls,
        workspace_id: str,
        *,
        related: bool = True,
        latest: bool = True,
        usage: bool = False,
        limited: bool = True,
    ) -> Read:
        return cls(ReadKind.WORKSPACE, workspace_id, related, latest, usage, limited)

    @classmethod
    def owner(cls, owner: str) -> Read:
        return cls(ReadKind.OWNER, owner, False, usage=True)

    @classmethod
    def build(cls, build_id: str, *, related: bool = True) -> Read:
        return cls(ReadKind.BUILD, build_id, related)

    @classmethod
    def pending(cls) -> Read:
        return cls(ReadKind.PENDING)

    @classmethod
    def log(cls, build_id: str) -> Read:
        return cls(ReadKind.LOG, build_id)

    @classmethod
    def pool(cls, holder: str, claimant: str = "") -> Read:
        return cls(ReadKind.POOL, holder, True, claimant=claimant)


@attrs.define(slots=True, eq=False)
class Rows:
    """What a driver read for a :class:`Read`, in one snapshot; absent rows are ``None``.
    (One per transaction and never kept: a plain slotted class costs a quarter of a frozen one.)

    * CHAT: ``chat``, and (when ``related``) ``facts`` of the workspace it is bound to.
    * WORKSPACE: ``facts`` (``workspace`` is ``facts.workspace``) and ``chat`` (``None`` when
      the read did not ask for it, or the chat is gone).
    * BUILD: ``build``, ``workspace`` and ``chat``; ``facts`` when the driver has them at no
      cost (a row cache), else ``None``.
    * PENDING: ``build`` and ``workspace``, or neither when nothing is pending.
    * LOG: as BUILD, and ``log`` (``None`` until the build's first line).
    * POOL: ``members``, and ``chat`` (the holder's, or the claimant's with ``facts`` of the
      workspace it is bound to).
    * OWNER: ``usage`` only.

    ``usage`` is read whenever the read asks for it (``Read.usage``): the owner's counts and
    stored limits; ``None`` when there is no owner to count (no such chat or workspace).
    """

    chat: Chat | None = None
    facts: WorkspaceFacts | None = None
    build: Build | None = None
    workspace: Workspace | None = None
    log: BuildLog | None = None
    usage: Usage | None = None
    members: tuple[WorkspaceFacts, ...] = ()

    @classmethod
    def of_facts(cls, facts: WorkspaceFacts | None, chat: Chat | None = None) -> Rows:
        return cls(chat, facts, None, None if facts is None else facts.workspace)


class Plan(abc.ABC, Generic[T]):
    """One store write as a driver runs it: read :attr:`read`, call :meth:`decide` on the rows
    (pure; it may raise, and then nothing is written), persist the write it returns (``None``:
    nothing to write) atomically with the read, and return :meth:`answer` of the log's head
    after the write (its last event's ``seq``; 0 when nothing was written)::

        write = plan.decide(rows)
        head = 0 if write is None else persist(write)
        return plan.answer(head)

    A plan is one small object per call, made by :class:`~.store.DriverStore`; it keeps what its
    answer needs between :meth:`decide` and :meth:`answer`, and a driver may call :meth:`decide`
    again (after :data:`RETRY`). :attr:`op` names the store method (``"request_build"``) and
    :attr:`lease` the fencing token the caller passed, for wrappers that count, record or
    inject faults by write.
    """

    __slots__ = ("lease", "read")

    #: The store method this plan serves.
    op: ClassVar[str] = ""

    def __init__(self, read: Read, lease: str | None = None) -> None:
        self.read = read
        self.lease = lease

    @abc.abstractmethod
    def decide(self, rows: Rows) -> Write | None:
        """The write to persist on ``rows`` (``None``: nothing), decided by
        :mod:`workspace_lifecycle.writes`. Pure."""

    @abc.abstractmethod
    def answer(self, head: int) -> T:
        """The caller's answer once the decided write committed with its last event at
        ``head`` (0 when nothing was written)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.read!r}>"


class Retry:
    """The marker :meth:`Driver.transact` returns when its guard found the rows changed."""

    _instance: Retry | None = None

    def __new__(cls) -> Retry:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "RETRY"


#: Returned by :meth:`Driver.transact` when another writer changed the rows it read: nothing
#: was written; read and decide again.
RETRY: Final = Retry()


class Driver(abc.ABC):
    """A storage backend: rows, SQL (or dictionaries) and I/O, no rule.

    Every method may raise :class:`~workspace_lifecycle.errors.StoreError` (mapped from the
    backend's own errors at this boundary); methods called after :meth:`aclose` raise
    :class:`~workspace_lifecycle.errors.StoreClosedError`.
    """

    #: The URL the driver was opened from (with any password removed).
    url: str = ""
    #: The store's wall clock: the time stamped on events and compared with deadlines and
    #: leases. Read inside :meth:`transact` (by the plan's decision).
    clock: Callable[[], float]

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect and migrate."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    #: Whether :meth:`transact_now` runs a plan: a driver whose transaction never waits (no I/O,
    #: no lock to wait for, as the memory driver's dictionaries) may say so, and the store then
    #: calls it without a coroutine. Every other driver (and every wrapper) leaves it ``False``.
    immediate: ClassVar[bool] = False

    @abc.abstractmethod
    async def transact(self, plan: Plan[T]) -> T | Retry:
        """Run ``plan``: read ``plan.read`` in one snapshot, call ``plan.decide`` on the rows,
        persist its write (if any) atomically with the read, and return ``plan.answer(head)``;
        or write nothing and return :data:`RETRY` when the guard found the rows changed."""

    def transact_now(self, plan: Plan[T]) -> T | Retry:
        """:meth:`transact` as a plain call, for a driver that is :attr:`immediate`."""
        raise NotImplementedError(f"{type(self).__name__} is not immediate: use transact")

    # --- plain reads ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def get_chat(self, chat_id: str) -> Chat | None: ...

    @abc.abstractmethod
    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        """The facts in one read; ``NotFoundError`` when there is no such workspace."""

    @abc.abstractmethod
    async def get_build(self, build_id: str) -> Build:
        """One build; ``NotFoundError`` when there is none."""

    @abc.abstractmethod
    async def armed_deadlines(self) -> ArmedDeadlines:
        """Every armed deadline with the log's head, in one read."""

    @abc.abstractmethod
    async def list_chats(self) -> Sequence[ChatRow]:
        """Every chat with its workspace's facts."""

    @abc.abstractmethod
    async def next_lease_expiry(self, *, skip: Collection[str] = ()) -> Lease | None: ...

    @abc.abstractmethod
    async def read_log(self, workspace_id: str, number: int | None = None) -> LogRead | None:
        """Build ``number`` of the workspace (``None``: its latest) and that build's log (``None``
        before its first line), in one read; ``None`` when there is no such build."""

    @abc.abstractmethod
    async def read_usage(self, owner: str) -> Usage:
        """The owner's usage and stored limits in one read (see :mod:`workspace_lifecycle.limits`
        for what counts); zeros and no limits for an owner with nothing stored."""

    # --- the event log -------------------------------------------------------------------------

    @abc.abstractmethod
    async def head(self) -> int: ...

    @abc.abstractmethod
    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]: ...

    @abc.abstractmethod
    async def wait_for_change(self, after: int) -> None: ...

    @abc.abstractmethod
    async def prune_events(self, older_than: float) -> int: ...

    async def server_time(self) -> float | None:
        """The server's own wall clock (seconds since the epoch), read in one round trip; ``None``
        for a store whose time is its replicas' (the default: SQLite, memory)."""
        return None

    def take_interest(self, topic: Topic) -> None:  # noqa: B027 - optional hook
        """See :meth:`~workspace_lifecycle.adapters.base.Store.take_interest`."""

    def drop_interest(self, topic: Topic) -> None:  # noqa: B027 - optional hook
        """See :meth:`~workspace_lifecycle.adapters.base.Store.drop_interest`."""


class WrappedDriver(Driver):
    """A driver that passes every call to ``inner``: the one place a wrapper (faults, a
    recorder, a counter) hooks in, by overriding :meth:`around_write` (every write, whatever
    it is: ``plan.op`` names it) and :meth:`around_read` (every plain read, by name).

    :meth:`aclose` does nothing: the wrapped driver belongs to whoever opened it.
    """

    def __init__(self, inner: Driver) -> None:
        self.inner = inner
        self.url = inner.url
        self.clock = inner.clock

    async def around_write(self, plan: Plan[T], call: Callable[[], Awaitable[T | Retry]]) -> T | Retry:
        """Runs every :meth:`transact` (``call`` runs it on the inner driver)."""
        return await call()

    async def around_read(self, name: str, call: Callable[[], Awaitable[R]]) -> R:
        """Runs every plain read and log read (``name`` is the method's)."""
        return await call()

    async def aclose(self) -> None:
        """Does nothing: the wrapped driver belongs to whoever opened it."""

    async def transact(self, plan: Plan[T]) -> T | Retry:
        return await self.around_write(plan, lambda: self.inner.transact(plan))

    async def get_chat(self, chat_id: str) -> Chat | None:
        return await self.around_read("get_chat", lambda: self.inner.get_chat(chat_id))

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        return await self.around_read("workspace_facts", lambda: self.inner.workspace_facts(workspace_id))

    async def get_build(self, build_id: str) -> Build:
        return await self.around_read("get_build", lambda: self.inner.get_build(build_id))

    async def armed_deadlines(self) -> ArmedDeadlines:
        return await self.around_read("armed_deadlines", self.inner.armed_deadlines)

    async def list_chats(self) -> Sequence[ChatRow]:
        return await self.around_read("list_chats", self.inner.list_chats)

    async def next_lease_expiry(self, *, skip: Collection[str] = ()) -> Lease | None:
        return await self.around_read("next_lease_expiry", lambda: self.inner.next_lease_expiry(skip=skip))

    async def read_log(self, workspace_id: str, number: int | None = None) -> LogRead | None:
        return await self.around_read("read_log", lambda: self.inner.read_log(workspace_id, number))

    async def read_usage(self, owner: str) -> Usage:
        return await self.around_read("read_usage", lambda: self.inner.read_usage(owner))

    async def head(self) -> int:
        return await self.around_read("head", self.inner.head)

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        return await self.around_read("read_events", lambda: self.inner.read_events(after, limit))

    async def wait_for_change(self, after: int) -> None:
        await self.around_read("wait_for_change", lambda: self.inner.wait_for_change(after))

    async def prune_events(self, older_than: float) -> int:
        return await self.around_read("prune_events", lambda: self.inner.prune_events(older_than))

    async def server_time(self) -> float | None:
        return await self.around_read("server_time", self.inner.server_time)

    def take_interest(self, topic: Topic) -> None:
        self.inner.take_interest(topic)

    def drop_interest(self, topic: Topic) -> None:
        self.inner.drop_interest(topic)
