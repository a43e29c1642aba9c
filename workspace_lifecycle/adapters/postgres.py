"""The PostgreSQL store: several runtime replicas on one database (psycopg 3, asyncio only).

Design, in the order a write meets it:

* **Opening.** One direct connection first, with a bounded ``connect_timeout``: a refused or
  unreachable server, a missing database or a bad parameter fails at open within seconds with
  one sentence naming the cause. That connection migrates the schema and becomes the
  ``LISTEN`` connection; only then is the pool opened. (With a ``listen_url`` of its own, or
  none, a connection of the store's URL migrates first, and closes.) Opening and closing are shielded from
  cancellation, so a cancelled ``open_store`` leaves no server connection behind.
* **Connections.** A psycopg-pool ``AsyncConnectionPool`` of autocommit connections, each with
  ``search_path`` set to the store's schema (``?schema=name``, default ``public``) and an
  optional ``statement_timeout``. A statement that fails because its connection died (a
  restarted server, ``pg_terminate_backend``) is retried on a fresh connection, unless the
  failure came while committing (then the outcome is unknown and the caller gets a
  :class:`~workspace_lifecycle.errors.TransientStoreError` that says so).
* **Decisions.** The adapter decides nothing: each write reads its rows, calls one function
  of :mod:`workspace_lifecycle.writes` and persists the
  :class:`~workspace_lifecycle.writes.Write` it returns, generically
  (:meth:`PostgresStore._statement`).
* **Exactly once, in one statement.** The hot writes (``request_build``, ``claim_build``,
  ``finish_build``, ``report_agent``) run in autocommit: one read, the pure decision, then one
  statement whose only condition is that the rows are still as read (the workspace's and, for
  a request, its chat's ``version``, bumped by every write of them), re-checked under the row
  locks; when it fails another writer committed first, and the write reads and decides again
  (:meth:`PostgresStore._decide`). A write may decide on the rows this process last wrote
  instead of reading them, since its guard proves them current. Concurrent writes of one
  process are group-committed: pipelined on one connection in one transaction
  (:meth:`PostgresStore._commit`). ``create_workspace`` stays a transaction that locks the
  workspace it replaces and the chat row, then persists the same way.
* **A commit-ordered log.** ``bigserial`` ids are handed out in call order, not commit order, so
  a reader following ``seq > cursor`` could pass an id whose transaction commits later. Every
  writing transaction therefore takes a transaction-scoped advisory lock on the log right before
  it inserts its events (after every row lock it needs) and holds it until its commit is
  visible: ids are drawn in commit order (``nextval`` runs after the lock is granted, never
  from the statement's snapshot), and a reader that sees ``seq = n`` has every committed
  event below ``n`` in view. The lock serialises the commits of a schema, each with its
  fsync: group commit is what amortises it.
* **Wake-ups.** Each write statement also calls ``pg_notify`` with the new head (delivered at
  commit; a group commit takes the server's notification lock once for all its writes). ``notify_after_commit=True`` sends it
  instead after the commits, from a batched notifier (DBOS's design: a NOTIFY in a
  transaction holds the server's global notification lock through its commit); measured
  here, it gains nothing once writes are group-committed, so it is off by default. One
  dedicated ``LISTEN`` connection per store reads the notifications; local writes ring the store's :class:`~workspace_lifecycle.adapters.base.Doorbell` at once. A notification
  is only a hint, never the head: its payload must look like one we send and name a head newer
  than the known one, and then the head is read from the log before anyone is woken (anything
  else is ignored and counted in :attr:`PostgresStore.stray_notifications`). The listener reads
  the head itself every ``poll_interval`` within a timeout, which also proves that its backend
  still answers (TCP keepalives catch a dead peer); one that does not is replaced. The
  fallback poll does not depend on that connection: while someone waits and the listener has
  not read the head for a ``poll_interval``, the pool reads it. Idle cost: one cheap query per
  ``poll_interval`` per store, whatever the number of waiters.
* **Notification shards** (``shards=N``, off by default). Above, every replica's listener reads
  every notification: R replicas x E events. With shards, a write notifies the channel of its
  workspace's shard (CRC-32 of the id mod N, computed here and passed as a parameter, so every
  process agrees), and also the chat's shard when it binds a chat to a new workspace (what a
  watcher of the chat follows) and a builds channel when it queues a build (provisioners claim
  every workspace's builds). The runtime says what it waits on (:meth:`PostgresStore.take_interest`:
  tracked workspaces, watched chats, every workspace for a watcher of all, builds for
  ``claims``); the listener task alone LISTENs and UNLISTENs to match, counted per channel. A
  new interest interrupts its wait: it LISTENs, then reads the head, so a commit that landed
  before the LISTEN took effect still wakes (no lost wake-up); a channel no longer needed is
  UNLISTENed when it next wakes. Other shards' events are read when the log is next read (a
  wake-up for this replica's shards, or the listener's head read every ``poll_interval``):
  that is when the deadline scheduler learns of a deadline armed elsewhere, so such a deadline
  may fire up to a ``poll_interval`` late, never early or twice (deadlines are minutes away; a
  global deadline channel would wake every replica for most builds again); a lease reaper
  learns of another process's new claim the same way (leases last 30 s). Cost: a LISTEN (and
  a head read) per new shard of interest, an UNLISTEN when it ends. Every replica of a schema
  must use the same ``shards`` (a mismatch costs latency, not events).
* **Behind PgBouncer.** Transaction pooling keeps no session between transactions: no
  ``LISTEN``, no session settings, no server-side prepared statements (PgBouncer 1.18).
  ``pool_mode="transaction"`` turns prepared statements off and sets no session state: the
  server's ``search_path`` and ``statement_timeout`` (PgBouncer's ``connect_query``) are
  checked at open instead. ``listen_url`` says where the ``LISTEN`` connection goes: a direct
  URL of the database, or ``"none"``, when only the fallback poll wakes waiters of other
  processes (every ``poll_interval`` while someone waits). A store that meets a pooler it was
  not told of (the server's pid is not the connection's) refuses to open before it sets
  anything. Everything else is already transaction-scoped: autocommit statements, the group
  commit's one transaction, ``pg_advisory_xact_lock``, the migration's ``search_path``.
* **Schema.** Versioned forward migrations run under ``pg_advisory_xact_lock`` so replicas that
  start together do not race; a schema newer than this code is refused with a clear error.

Driver errors never leak: :meth:`PostgresStore._boundary` maps them to
:mod:`workspace_lifecycle.errors` (or ``ValueError`` for a value PostgreSQL cannot store), the
one place that does, as httpcore's ``map_exceptions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import select
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio
import attrs
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from .. import writes
from ..errors import (
    CorruptStateError,
    CursorExpiredError,
    NotFoundError,
    StoreBusyError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
    TransientStoreError,
    UnsupportedBackendError,
    WorkspaceLifecycleError,
)
from ..values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    Deadline,
    EventKind,
    JobStatus,
    Lease,
    Policy,
    Reason,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
    parse_deadline,
    parse_enum,
    parse_lease,
    parse_policy,
)
from .base import DEFAULT_LEASE_SECONDS, ArmedDeadlines, ChatRow, Doorbell, Outcome, Store, Topic, TopicKind

__all__ = [
    "DRIVERS",
    "PostgresStore",
    "SCHEMA_VERSION",
    "UnsupportedBackendError",
]  # the error re-exported for old imports

log = logging.getLogger("workspace_lifecycle.postgres")

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

#: Driver suffixes accepted after the scheme, as SQLAlchemy users write them
#: (``postgresql+psycopg://``); each names a psycopg driver, and psycopg 3 serves them all.
DRIVERS = ("psycopg", "psycopg2")

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PAYLOAD_RE = re.compile(r"[1-9][0-9]{0,18}")  # what _append sends: the new head, a positive bigint

# Advisory lock classes (the first int4 key); the second key is a hash of the schema name, so
# deployments in other schemas of one database never wait for each other.
_MIGRATE_LOCK = 0x574C0001
_LOG_LOCK = 0x574C0002

#: The most notification shards (each is a channel; interest in every workspace LISTENs to all).
_MAX_SHARDS = 4096

#: Seconds the first connection of ``open`` may take unless the URL sets ``connect_timeout``.
_CONNECT_TIMEOUT = 5
#: TCP keepalives of the LISTEN connection unless the URL sets them: a dead peer is noticed in
#: about 10 + 3 * 5 seconds even while no query is running on it.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}

#: What the error boundary translates; everything else passes through untouched.
_DRIVER_ERRORS = (psycopg.Error, PoolClosed, PoolTimeout, UnicodeEncodeError, ConnectionError)
#: Words of a connection refusal that a retry may get past (the server is starting, full, ...).
_TRANSIENT_REFUSALS = ("starting up", "shutting down", "recovery mode", "too many clients", "slots")

#: Forward migrations; version N is ``MIGRATIONS[N - 1]``. Never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE chats (
        chat_id text PRIMARY KEY,
        owner text NOT NULL,
        workspace_id text
    );
    CREATE TABLE workspaces (
        workspace_id text PRIMARY KEY,
        chat_id text NOT NULL,
        owner text NOT NULL,
        name text NOT NULL,
        deleted boolean NOT NULL DEFAULT false,
        latest_build integer NOT NULL DEFAULT 0
    );
    CREATE TABLE builds (
        id bigserial UNIQUE,
        build_id text PRIMARY KEY,
        workspace_id text NOT NULL REFERENCES workspaces,
        number integer NOT NULL,
        transition text NOT NULL,
        status text NOT NULL,
        error text,
        has_agent boolean,
        worker text,
        UNIQUE (workspace_id, number)
    );
    CREATE INDEX builds_pending ON builds (id) WHERE status = 'pending';
    CREATE TABLE agents (
        workspace_id text PRIMARY KEY REFERENCES workspaces,
        build_number integer NOT NULL,
        lifecycle text NOT NULL
    );
    CREATE TABLE events (
        seq bigserial PRIMARY KEY,
        kind text NOT NULL,
        workspace_id text NOT NULL,
        chat_id text NOT NULL,
        build_number integer NOT NULL,
        payload jsonb NOT NULL,
        at double precision NOT NULL
    );
    CREATE INDEX events_at ON events (at);
    CREATE TABLE log_state (
        id integer PRIMARY KEY CHECK (id = 1),
        pruned_through bigint NOT NULL
    );
    INSERT INTO log_state VALUES (1, 0);
    """,
    # 2: build parameters (template parameters) and a failed build's details, JSON objects.
    """
    ALTER TABLE builds ADD COLUMN parameters jsonb NOT NULL DEFAULT '{}'::jsonb,
        ADD COLUMN details jsonb;
    """,
    # 3: row versions, bumped by every write that changes a workspace's facts (its row, builds,
    # agent) or a chat row: the guard of single-statement writes ("the rows are as I read them").
    """
    ALTER TABLE workspaces ADD COLUMN version bigint NOT NULL DEFAULT 0;
    ALTER TABLE chats ADD COLUMN version bigint NOT NULL DEFAULT 0;
    """,
    # 4: between turns: a chat's policy, a workspace's armed deadline, why a build was fired.
    """
    ALTER TABLE chats ADD COLUMN idle_stop_after double precision,
        ADD COLUMN delete_after_stopped double precision;
    ALTER TABLE workspaces ADD COLUMN deadline_at double precision, ADD COLUMN deadline_reason text;
    ALTER TABLE builds ADD COLUMN reason text NOT NULL DEFAULT 'request';
    CREATE INDEX workspaces_deadline ON workspaces (deadline_at) WHERE deadline_at IS NOT NULL;
    """,
    # 5: leases: a claimed build's fencing token and when its lease runs out (only in flight).
    # A build in flight now was claimed without one: it gets a lease of the old reaper's
    # stale_after (900 s, wall clock), so a reaper fails it if its worker never finishes it.
    """
    ALTER TABLE builds ADD COLUMN lease_token text, ADD COLUMN lease_expires_at double precision;
    CREATE INDEX builds_lease ON builds (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
    UPDATE builds SET lease_token = md5(build_id || random()::text || clock_timestamp()::text),
        lease_expires_at = extract(epoch FROM clock_timestamp()) + 900
        WHERE status IN ('running', 'canceling');
    """,
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(MIGRATIONS)

#: The finished statuses as an SQL list: a finished build holds no lease, whatever its row says
#: (one finished by code from before leases keeps the expiry migration 5 gave it).
_FINISHED = "(" + ", ".join(f"'{status.value}'" for status in JobStatus if status.finished) + ")"

_HEAD = "coalesce(greatest((SELECT max(seq) FROM events), (SELECT pruned_through FROM log_state)), 0)"

#: A workspace row as :func:`_parse_workspace` reads it.
_WS_COLUMNS = "w.workspace_id, w.chat_id, w.owner, w.name, w.deleted, w.deadline_at, w.deadline_reason"
#: A chat row as :func:`_parse_chat` reads it.
_CHAT_COLUMNS = "c.chat_id, c.owner, c.workspace_id, c.idle_stop_after, c.delete_after_stopped"
_CHAT_WIDTH = 5

_FACTS_COLUMNS = f"""
    {_WS_COLUMNS},
    b.build_id, b.number, b.transition, b.status, b.error, b.has_agent, b.worker,
    b.parameters, b.details, b.reason, b.lease_token, b.lease_expires_at,
    a.build_number, a.lifecycle
"""
_FACTS_JOINS = """
    LEFT JOIN builds b ON b.workspace_id = w.workspace_id AND b.number = w.latest_build
    LEFT JOIN agents a ON a.workspace_id = w.workspace_id
"""
_FACTS_SQL = f"SELECT {_FACTS_COLUMNS}, {_HEAD} FROM workspaces w {_FACTS_JOINS} WHERE w.workspace_id = %s"

#: What a request reads: the workspace's facts (then its version) and its chat's row (then its version).
_REQUEST_SQL = (
    f"SELECT {_FACTS_COLUMNS}, {_HEAD}, w.version, {_CHAT_COLUMNS}, c.version"
    f" FROM workspaces w {_FACTS_JOINS} JOIN chats c ON c.chat_id = w.chat_id WHERE w.workspace_id = %s"
)
#: A workspace row as :func:`_parse_workspace` reads it, then its version.
_WORKSPACE_COLUMNS = f"{_WS_COLUMNS}, w.version"
#: Columns of a workspace row as :func:`_parse_workspace` reads it (its version follows them).
_WORKSPACE_WIDTH = 7
#: Columns of a build as :func:`_parse_build` reads it.
_BUILD_WIDTH = 13
#: Columns of ``_FACTS_COLUMNS`` and the head (``_REQUEST_SQL``'s versions and chat follow).
_FACTS_WIDTH = _WORKSPACE_WIDTH + (_BUILD_WIDTH - 1) + 2 + 1

_BUILD_COLUMNS = (
    "b.build_id, b.workspace_id, b.number, b.transition, b.status, b.error, b.has_agent, b.worker,"
    " b.parameters, b.details, b.reason, b.lease_token, b.lease_expires_at"
)


def _channel_name(schema: str, suffix: str = "") -> str:
    """The NOTIFY channel of ``schema`` (with ``suffix``), within PostgreSQL's 63 bytes."""
    return f"workspace_lifecycle_{schema}"[: 63 - len(suffix)] + suffix


def shard_of(key: str, shards: int) -> int:
    """The notification shard of a workspace or chat id: the same in every process (CRC-32,
    not Python's salted ``hash``).

    >>> shard_of("w1", 8), shard_of("w1", 8) == shard_of("w1", 8)
    (4, True)
    """
    return zlib.crc32(key.encode(errors="surrogatepass")) % shards


def _check_shards(value: object) -> int:
    """``shards`` as an int in ``[0, _MAX_SHARDS]`` (a numeric string too, as a URL gives it)."""
    number = value
    if isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= _MAX_SHARDS:
        raise ValueError(f"shards must be an integer from 0 (off) to {_MAX_SHARDS}, not {value!r}")
    return number


def _lock_key(schema: str) -> int:
    """A stable signed 32-bit key for ``schema`` (the second key of the advisory locks)."""
    value = zlib.crc32(schema.encode())
    return value - (1 << 32) if value >= (1 << 31) else value


def _parse_build(row: Sequence[Any]) -> Build:
    """A build from ``build_id, workspace_id, number, transition, status, error, has_agent, worker,
    parameters, details, reason, lease_token, lease_expires_at``."""
    build_id = row[0]
    token, expires_at = parse_lease(row[11], row[12], key=build_id)
    parameters, details = row[8], row[9]
    if not isinstance(parameters, dict):
        raise CorruptStateError("builds", build_id, "parameters", parameters)
    if details is not None and not isinstance(details, dict):
        raise CorruptStateError("builds", build_id, "details", details)
    return Build(
        build_id=build_id,
        workspace_id=row[1],
        number=row[2],
        transition=parse_enum(Transition, row[3], table="builds", key=build_id, column="transition"),
        status=parse_enum(JobStatus, row[4], table="builds", key=build_id, column="status"),
        error=row[5],
        has_agent=row[6],
        worker=row[7],
        parameters=parameters,
        details=details,
        reason=parse_enum(Reason, row[10], table="builds", key=build_id, column="reason"),
        lease_token=token,
        lease_expires_at=expires_at,
    )


def _parse_facts(row: Sequence[Any]) -> WorkspaceFacts:
    """Facts from a row of ``_FACTS_COLUMNS`` followed by the head."""
    ws = _parse_workspace(row)
    b = _WORKSPACE_WIDTH
    build = None
    if row[b] is not None:
        build = _parse_build((row[b], ws.workspace_id, *row[b + 1 : b + _BUILD_WIDTH - 1]))
    a = b + _BUILD_WIDTH - 1
    agent = None
    if row[a] is not None:
        lifecycle = parse_enum(
            AgentLifecycle, row[a + 1], table="agents", key=ws.workspace_id, column="lifecycle"
        )
        agent = Agent(ws.workspace_id, row[a], lifecycle)
    return WorkspaceFacts(workspace=ws, latest_build=build, agent=agent, seq=int(row[a + 2]))


def _parse_workspace(row: Sequence[Any]) -> Workspace:
    """A workspace from ``_WS_COLUMNS``."""
    deadline = parse_deadline(row[5], row[6], key=row[0])
    return Workspace(row[0], row[1], row[2], row[3], deleted=row[4], deadline=deadline)


def _parse_chat(row: Sequence[Any]) -> Chat:
    """A chat from ``_CHAT_COLUMNS``."""
    return Chat(row[0], row[1], row[2], policy=parse_policy(row[3], row[4], key=row[0]))


def _after(facts: WorkspaceFacts, write: writes.Write, head: int) -> WorkspaceFacts:
    """The facts ``facts`` become once ``write`` (a request or a fired deadline) committed."""
    return WorkspaceFacts(
        write.workspace or facts.workspace, write.build or facts.latest_build, facts.agent, head
    )


def _cause(exc: BaseException) -> str:
    """libpq's message as one line, without the prefixes that repeat what the caller knows."""
    text = str(exc)
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.removeprefix(prefix)
    text = re.sub(r'connection to server (at|on) "[^"]*"(, port \d+)? failed: ', "", text)
    text = re.sub(r"(FATAL|ERROR):\s+", "", text)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def _connection_lost(exc: BaseException) -> bool:
    """A connection that died under a statement (not a timeout, not a refusal): worth a retry."""
    return isinstance(exc, (psycopg.OperationalError, ConnectionError)) and not isinstance(
        exc, (pg_errors.QueryCanceled, pg_errors.LockNotAvailable, pg_errors.ProgramLimitExceeded)
    )


@attrs.frozen
class _Seen:
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


@attrs.frozen
class _Known:
    """A workspace's rows as this process last read or wrote them, at ``version`` (the chat's
    row at ``chat_version``): what the next write of this process on it may decide on
    without reading, its guard checking that they are still current."""

    version: int
    facts: WorkspaceFacts
    chat: Chat
    chat_version: int

    def seen(self) -> _Seen:
        return _Seen(self.facts.workspace_id, self.version, self.chat.chat_id, self.chat_version)

    def after(self, write: writes.Write, head: int) -> _Known:
        """The rows once ``write`` (decided on these) is persisted: what :meth:`PostgresStore._statement`
        writes, applied to the values instead of the tables."""
        facts = self.facts
        latest, build = facts.latest_build, write.build
        if build is not None and (write.queued or (latest is not None and latest.build_id == build.build_id)):
            latest = build
        return _Known(
            self.version + 1,
            WorkspaceFacts(
                write.workspace or facts.workspace,
                latest,
                write.agent if write.agent is not None else facts.agent,
                head,
            ),
            write.chat or self.chat,
            self.chat_version + (write.chat is not None),
        )


#: The fields of a Write that :meth:`_Known.after` applies. A Write with any other field (one
#: added later) turns the cache of known rows off: it could not say what that field changed.
_APPLIED_FIELDS = frozenset({"events", "build", "queued", "workspace", "chat", "agent"})
_CACHE_KNOWN_ROWS = {f.name for f in attrs.fields(writes.Write)} <= _APPLIED_FIELDS
#: Workspaces whose rows a store remembers (the most recently written).
_KNOWN_MAX = 4096


@attrs.frozen
class _Decided(Generic[T]):
    """A decision made on rows read outside any transaction: the ``write`` to persist under the
    guard ``seen`` (``None``: nothing to write), and the caller's answer given the new head.
    ``known``: the workspace's rows it was decided on, when the read returned all of them."""

    write: writes.Write | None
    seen: _Seen | None
    answer: Callable[[int], T]
    known: _Known | None = None


class _Marker:
    """A marker outcome of a queued write."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_PENDING = _Marker("pending")  # not committed yet
_ALONE = _Marker("alone")  # to run alone: its guard missed in a batch, or the batch failed


@attrs.define
class _Queued:
    """A decided write waiting for its batch, and then what became of it: the new head,
    ``None`` (its guard found the rows changed), ``_ALONE``, or the exception it raised."""

    write: writes.Write
    seen: _Seen
    outcome: int | _Marker | BaseException | None = _PENDING


class _Changed:
    """The guard found the rows changed since they were read: read and decide again."""


_CHANGED = _Changed()
#: Batches of one process in flight at once. Two would put the next batch on the server while
#: one waits for its commit, but measured slower (16 writers: 1,425 against 1,753 events/s,
#: same run): smaller batches, the same one commit at a time under the log lock.
_BATCHES_IN_FLIGHT = 1
#: Reads and decisions a write may take while other writers keep changing its rows.
_MAX_DECISIONS = 200


@attrs.define
class _Attempt:
    """How far one try of :meth:`PostgresStore._run` got, for the error boundary."""

    connected: bool = False  # it holds a pooled connection
    committing: bool = False  # the body is done: a failure now leaves the outcome unknown
    retry: bool = False  # set by the boundary: the connection died before the commit


def _idle_and_alive(conn: Conn) -> bool:
    """Whether an idle pooled connection still looks alive, without a round trip: a server
    that terminates a backend, or shuts down, sends a last message and closes the socket, so an
    idle connection with anything to read is suspect."""
    if conn.closed:
        return False
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable


def _current_async_library() -> str:
    """``"asyncio"`` when running on an asyncio loop, else the library's name if known."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    try:
        import sniffio

        return sniffio.current_async_library()
    except Exception:
        return "another async library"


def _seconds(name: str, value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must not be negative, not {value!r}")
    return number


def _with_defaults(conninfo: str, defaults: dict[str, Any]) -> str:
    """``conninfo`` with each of ``defaults`` added unless it sets that parameter itself."""
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"malformed PostgreSQL URL or connection string: {_cause(exc)}") from None
    return make_conninfo(conninfo, **{k: v for k, v in defaults.items() if k not in given})


#: The store's own query parameters of a URL; every other one goes to libpq.
_URL_OPTIONS = (
    "schema",
    "statement_timeout",
    "poll_interval",
    "pool_max_size",
    "pool_timeout",
    "pool_mode",
    "listen_url",
    "shards",
)
#: ``pool_mode`` values: how the URL reaches PostgreSQL (``None``: directly).
_POOL_MODES = ("session", "transaction")
#: ``listen_url`` value for a store that never LISTENs and polls instead.
_NO_LISTEN = "none"


def _split_url(url: str, names: Sequence[str]) -> tuple[dict[str, Any], str]:
    """Check a PostgreSQL ``url``; return its query parameters among ``names``, and a libpq URL
    of everything else."""
    parts = urlsplit(url)
    scheme, _, driver = parts.scheme.lower().partition("+")
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url!r}")
    if driver and driver not in DRIVERS:
        suffixes = ", ".join(f"+{d}" for d in DRIVERS)
        raise ValueError(
            f"unsupported PostgreSQL driver {driver!r} in {url!r}; accepted suffixes: {suffixes} (or none)"
        )
    if "," not in parts.netloc:  # libpq's multi-host form has a port per host
        try:
            parts.port  # noqa: B018 - urllib checks the port when it is read
        except ValueError:
            raise ValueError(f"malformed PostgreSQL URL {url!r}: the port must be a number") from None
    ours: dict[str, Any] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in names:
            ours[key] = value
        else:
            theirs.append((key, value))
    # Not urlunsplit: it drops the "//" of an empty host (postgresql:///db?host=/socket).
    query = urlencode(theirs)
    return ours, f"postgresql://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")


def _display_url(url: str, query: Sequence[tuple[str, str]] = ()) -> str:
    """``url`` without its password and libpq parameters, with ``query`` instead."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}@{hostport}"
    shown = urlencode(query)
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{shown}" if shown else "")


def _listen_conninfo(listen_url: str) -> str:
    """The libpq URL of a ``listen_url``: a PostgreSQL URL with libpq parameters only."""
    ours, conninfo = _split_url(listen_url, _URL_OPTIONS)
    if ours:
        raise ValueError(
            f"listen_url takes libpq parameters only, not the store's option {next(iter(ours))!r}"
        )
    return conninfo


class PostgresStore(Store):
    """The store on PostgreSQL; open it with ``open_store("postgresql://user@host:port/db")``.

    URLs as libpq and SQLAlchemy users write them: ``postgresql://`` or ``postgres://``, with an
    optional driver suffix naming psycopg (``postgresql+psycopg://``, ``postgresql+psycopg2://``),
    and libpq's Unix-socket forms (``postgresql:///db?host=/var/run/postgresql`` or
    ``postgresql://user@%2Fvar%2Frun%2Fpostgresql/db``).

    Options (keyword arguments, or query parameters of the URL):

    * ``schema``: the schema that holds the tables (created if absent; default ``public``);
    * ``statement_timeout``: seconds a statement may run (or wait for a lock) before it fails
      with :class:`~workspace_lifecycle.errors.StoreBusyError` (default 30; 0 disables it);
    * ``poll_interval``: seconds between the fallback reads of the log head (default 2);
    * ``pool_max_size``: the most pooled connections (default 10), plus one listener;
    * ``pool_timeout``: seconds a call may wait for a connection, e.g. while the server
      restarts, before it fails with :class:`~workspace_lifecycle.errors.StoreUnavailableError`
      (default 30);
    * ``batch_writes`` (keyword only): group-commit concurrent writes of this process (default
      on); ``notify_after_commit`` (keyword only): NOTIFY from a batched notifier after the
      commits instead of inside each write (default off);
    * ``shards``: notify by workspace shard, so that a replica is woken only for the workspaces
      it waits on (default 0: one channel, every replica hears every write; see the module
      docstring). Every replica of a schema should use the same value.
    * ``pool_mode``: ``"transaction"`` or ``"session"`` when the URL reaches PostgreSQL through
      PgBouncer (or another pooler) in that pooling mode (default: directly; a pooler is then
      refused at open); ``"transaction"`` needs ``listen_url``;
    * ``listen_url``: where the ``LISTEN`` connection goes (default: the URL itself): a direct
      PostgreSQL URL of the same database (libpq parameters only), or ``"none"`` to listen
      nowhere and wake waiters of other processes by the poll alone (see docs/stores.md,
      "Behind PgBouncer").

    Every other query parameter goes to libpq unchanged (``sslmode``, ``application_name``,
    ``connect_timeout`` — 5 seconds unless given, …); one libpq does not know is a ``ValueError``.

    >>> store = PostgresStore.from_url("postgresql+psycopg://me:secret@db.example:5432/app?schema=chat_a")
    >>> store.url, store.schema
    ('postgresql+psycopg://me@db.example:5432/app?schema=chat_a', 'chat_a')
    >>> PostgresStore.from_url("postgresql://db.example/app?schema=bad-name")
    Traceback (most recent call last):
    ...
    ValueError: invalid schema name 'bad-name': use letters, digits and underscores (at most 63, not starting with a digit)
    >>> PostgresStore.from_url("postgresql+asyncpg://db.example/app")
    Traceback (most recent call last):
    ...
    ValueError: unsupported PostgreSQL driver 'asyncpg' in 'postgresql+asyncpg://db.example/app'; accepted suffixes: +psycopg, +psycopg2 (or none)
    """

    #: How many notifications were ignored: a payload that is not a head we send, or a head
    #: the log did not confirm. Notifications are hints; anyone may send one.
    stray_notifications: int = 0
    _notifications_received: int = 0

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        statement_timeout: float | None = 30.0,
        poll_interval: float = 2.0,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        pool_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        display_url: str | None = None,
        batch_writes: bool = True,
        notify_after_commit: bool = False,
        shards: int = 0,
        pool_mode: str | None = None,
        listen_url: str | None = None,
    ) -> None:
        if not isinstance(schema, str) or not _SCHEMA_RE.match(schema):
            raise ValueError(
                f"invalid schema name {schema!r}: use letters, digits and underscores "
                "(at most 63, not starting with a digit)"
            )
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {poll_interval!r}")
        if pool_max_size < 1 or pool_min_size < 0 or pool_min_size > pool_max_size:
            raise ValueError("need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1")
        shards = _check_shards(shards)
        if shards and notify_after_commit:
            raise ValueError("shards and notify_after_commit cannot be combined: choose one")
        if pool_mode == "":
            pool_mode = None
        if pool_mode == "statement":
            raise ValueError(
                "pool_mode='statement' cannot work: the store's writes need transactions of several "
                "statements; give the store a PgBouncer database in transaction pooling mode"
            )
        if pool_mode is not None and pool_mode not in _POOL_MODES:
            raise ValueError(
                f"pool_mode must be 'session' or 'transaction' (PgBouncer's pool_mode), not {pool_mode!r}"
            )
        if listen_url == "":
            listen_url = None
        if pool_mode == "transaction" and listen_url is None:
            raise ValueError(
                "pool_mode='transaction' needs listen_url: a URL that reaches PostgreSQL directly, "
                "for LISTEN (which PgBouncer's transaction pooling cannot carry), or "
                f"listen_url={_NO_LISTEN!r} to poll every poll_interval instead"
            )
        self.url = display_url if display_url is not None else conninfo
        #: How the URL reaches PostgreSQL: ``None`` (directly), ``"session"`` or ``"transaction"``
        #: (through PgBouncer, or another pooler, in that pooling mode).
        self.pool_mode = pool_mode
        #: Whether a LISTEN connection wakes waiters (else only the poll does, see ``listen_url``).
        self.listens = listen_url != _NO_LISTEN
        self._listen_elsewhere = listen_url not in (None, _NO_LISTEN)  # a listen_url of its own
        self._database: str | None = None  # the store's database, once read (by _migrate_alone)
        self.schema = schema
        self.statement_timeout = statement_timeout or None
        self.poll_interval = poll_interval
        self._conninfo = conninfo
        self._pool_conninfo = _with_defaults(conninfo, {"connect_timeout": _CONNECT_TIMEOUT})
        listen_conninfo = conninfo if listen_url in (None, _NO_LISTEN) else _listen_conninfo(listen_url)
        self._listen_conninfo = _with_defaults(
            listen_conninfo, {"connect_timeout": _CONNECT_TIMEOUT, **_KEEPALIVES}
        )
        self._pool_min = pool_min_size
        self._pool_max = pool_max_size
        self._pool_timeout = pool_timeout
        self._clock = clock
        self._lock_key = _lock_key(schema)
        self._channel = _channel_name(schema)
        #: Notification shards (0: every write notifies the one channel ``_channel``).
        self.shards = shards
        self._shard_channels = tuple(_channel_name(schema, f"_s{i}") for i in range(shards))
        self._builds_channel = _channel_name(schema, "_builds")
        # Interest, by channel (shard mode): how many topics of this process need each one.
        # The listener task alone LISTENs and UNLISTENs (_follow_interest), to match it.
        self._wanted: dict[str, int] = {}
        self._listening: set[str] = set()  # the channels the listener connection LISTENs to
        self._interest_changed = False  # _wanted moved since the listener last matched it
        self._hearing: anyio.CancelScope | None = None  # the listener's wait for notifications
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._listener: Conn | None = None  # the LISTEN connection, kept by the watcher
        self._closed = False
        self._opened = False
        self._doorbell = Doorbell()
        self._listener_read_at = 0.0  # time.monotonic() of the listener's last head read
        #: Wake-ups caused by the watcher (confirmed notifications, polls, reconnects), for tests.
        self.listener_wakeups = 0
        self.listener_connects = 0
        #: Reads of the head by the fallback poll (only while someone waits), for tests.
        self.polls = 0
        #: The server process of the LISTEN connection (``pg_stat_activity.pid``).
        self.listener_pid: int | None = None
        # Test hook: awaited inside every writing transaction after its events are inserted
        # (holding the log lock), to interleave transactions in the commit-order test.
        self._before_commit: Callable[[], Awaitable[None]] | None = None
        self._known: OrderedDict[str, _Known] = OrderedDict()
        #: Builds this process claimed -> their workspace (a renewal may decide on known rows).
        self._claimed: OrderedDict[str, str] = OrderedDict()
        #: Send NOTIFY after the commits, batched (:meth:`_notifier`), not inside each write
        #: (off by default: with group commit it measured slower, see ``bench/RESULTS.md``).
        self.notify_after_commit = notify_after_commit
        self._announce = anyio.Event()
        self._announce_head = 0  # the newest head this process committed
        self._notified = 0  # the newest head the notifier announced
        #: Group commit of the guarded writes (see :meth:`_commit`).
        self.batch_writes = batch_writes
        self._queue: list[_Queued] = []
        self._leading = 0  # batches in flight
        self._led = anyio.Event()  # set (and replaced) whenever one of them is done
        #: Batches of more than one write committed, and the writes they held (for benchmarks).
        self.batches = 0
        self.batched_writes = 0
        self._round_trips = 0

    @property
    def round_trips(self) -> int:
        """Statements or transactions this store ran on its pool, each attempt counted (for
        benchmarks; a guarded write's read and its statement count one, the listener's reads none)."""
        return self._round_trips

    @property
    def notifications_received(self) -> int:
        """Every notification the listener read, before any was found stray or stale: what the
        wake-ups of other processes' writes cost this one (with ``shards``, only the channels
        of its interest)."""
        return self._notifications_received

    @property
    def channels(self) -> frozenset[str]:
        """The channels the listener connection LISTENs to now (it catches up with a change of
        interest within a moment: see :meth:`take_interest`)."""
        return frozenset(self._listening)

    @property
    def listen_timeout(self) -> float:
        """Seconds the listener's head read may take before its connection counts as hung."""
        return min(max(2 * self.poll_interval, 1.0), 10.0)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        """A store for a ``postgresql://`` (or ``postgres://``) ``url``; options as in the class."""
        ours, conninfo = _split_url(url, _URL_OPTIONS)
        ours.update(options)
        for key in ("statement_timeout", "poll_interval", "pool_timeout"):
            if key in ours and isinstance(ours[key], str):
                ours[key] = _seconds(key, ours[key])
        if isinstance(ours.get("pool_max_size"), str):
            try:
                ours["pool_max_size"] = int(ours["pool_max_size"])
            except ValueError:
                raise ValueError(f"pool_max_size must be an integer, not {ours['pool_max_size']!r}") from None
        shown = [(key, str(ours[key])) for key in ("schema", "pool_mode") if ours.get(key) is not None]
        listen_url = ours.get("listen_url")
        if isinstance(listen_url, str) and listen_url:
            shown.append(("listen_url", listen_url if listen_url == _NO_LISTEN else _display_url(listen_url)))
        return cls(conninfo, display_url=_display_url(url, shown), **ours)

    # --- opening and closing -------------------------------------------------------------

    async def open(self) -> None:
        library = _current_async_library()
        if library != "asyncio":
            raise UnsupportedBackendError(
                f"the PostgreSQL store needs the asyncio backend (psycopg's AsyncConnection is "
                f"asyncio-only), but it is running under {library}; run it with asyncio"
            )
        if self._closed:
            raise StoreClosedError("the PostgreSQL store is closed")
        if self._opened:
            return
        self._opened = True
        listener: Conn | None = None
        try:
            # One direct connection first: it fails fast and clearly (the pool would retry in
            # the background until pool_timeout), migrates, and then listens. A listen_url of
            # its own may reach another database (_configure refuses it): the store's URL migrates.
            listen_here = self.listens and not self._listen_elsewhere
            if not listen_here:
                await self._migrate_alone()
            if self.listens:
                listener = await self._connect_listener(migrate=listen_here)
            self._pool = AsyncConnectionPool(
                self._pool_conninfo,
                min_size=self._pool_min,
                max_size=self._pool_max,
                open=False,
                kwargs=self._pool_kwargs(),
                # Behind transaction pooling a session setting would stay on whichever server
                # connection ran it: the settings are the server's, checked once below.
                configure=None if self.pool_mode == "transaction" else self._configure,
                timeout=self._pool_timeout,
                name=f"workspace-lifecycle:{self.schema}",
            )
            with self._boundary(connecting=True):
                await self._pool.open(wait=True, timeout=self._pool_timeout)
            if self.pool_mode == "transaction":
                await self._check_server_settings(self._pool)
        except BaseException:
            # Also on cancellation: whatever was opened is closed before the error propagates.
            self._closed = True
            with anyio.CancelScope(shield=True):
                if listener is not None:
                    await listener.close()
                await self._shutdown()
            raise
        self._listener = listener
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._doorbell.ring()
        with anyio.CancelScope(shield=True):  # a cancelled caller still closes everything
            await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop the watcher and close the pool (callers shield this)."""
        if self._pool is not None and self._announce_head > self._notified:
            # The last commits' NOTIFY, before the notifier stops (bounded; a hint at best).
            with anyio.move_on_after(1), contextlib.suppress(*_DRIVER_ERRORS):
                async with self._pool.connection(timeout=1) as conn:
                    await self._notify(conn, head=self._announce_head)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait({watcher})
            if not watcher.cancelled() and watcher.exception() is not None:
                log.error("PostgreSQL watcher failed", exc_info=watcher.exception())
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _check(self) -> AsyncConnectionPool[Conn]:
        if self._closed:
            raise StoreClosedError("the PostgreSQL store is closed")
        if self._pool is None:
            raise StoreError("the PostgreSQL store is not open; use it as `async with open_store(url)`")
        return self._pool

    def _pool_kwargs(self) -> dict[str, Any]:
        """Connection arguments of the pool (and of the connection that migrates without a
        listener): behind transaction pooling no server-side prepared statement either, since
        the next statement may run on another server connection (PgBouncer < 1.21)."""
        if self.pool_mode == "transaction":
            return {"autocommit": True, "prepare_threshold": None}
        return {"autocommit": True}

    async def _configure(self, conn: Conn) -> None:
        """A new connection's session settings; one that reaches the server through a pooler
        (its backend pid is not the one the connection was told) is refused unless
        ``pool_mode`` says the pooler keeps sessions, and so is a listener in another database
        than the store's."""
        timeout_ms = int(self.statement_timeout * 1000) if self.statement_timeout else 0
        # One round trip, and nothing set on a server connection that a pooler would share.
        cur = await conn.execute(
            "SELECT set_config('search_path', %s, false), set_config('statement_timeout', %s, false),"
            " current_database() WHERE pg_backend_pid() = %s OR %s",
            (f'"{self.schema}"', str(timeout_ms), conn.info.backend_pid, self.pool_mode == "session"),
        )
        row = await cur.fetchone()
        if row is not None and self._database is not None and row[2] != self._database:
            # Only a listen_url of its own can: a NOTIFY never crosses databases.
            raise StoreError(
                f"listen_url reaches database {row[2]!r}, but the store's URL reaches "
                f"{self._database!r}: notifications reach only listeners of the same database"
            )
        if row is None:
            if self.pool_mode == "transaction":
                raise StoreError(
                    f"listen_url must reach PostgreSQL directly, not through a connection pooler "
                    f"such as PgBouncer: its transaction pooling cannot carry LISTEN (or use "
                    f"listen_url={_NO_LISTEN!r} to poll)"
                )
            raise StoreError(
                f"{self.url} reaches PostgreSQL through a connection pooler such as PgBouncer (the "
                "server's process id is not the one the connection was given); say how it pools: "
                "pool_mode=transaction with listen_url=<a direct URL, or none> for transaction "
                "pooling, pool_mode=session for session pooling"
            )

    async def _migrate_alone(self) -> None:
        """Open without a listener on the store's URL: one connection of the pool's URL
        migrates, and closes."""
        with self._boundary(connecting=True):
            conn = await psycopg.AsyncConnection.connect(self._pool_conninfo, **self._pool_kwargs())
        try:
            with self._boundary():
                if self.pool_mode != "transaction":
                    await self._configure(conn)
                await self._migrate(conn)
                cur = await conn.execute("SELECT current_database()")
                row = await cur.fetchone()
                self._database = None if row is None else str(row[0])
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _check_server_settings(self, pool: AsyncConnectionPool[Conn]) -> None:
        """Behind transaction pooling the store sets no session state: check that the server's
        (PgBouncer's ``connect_query``, the role's or the database's settings) are the store's."""
        with self._boundary():
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT current_schema(),"
                    " (SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout')"
                )
                row = await cur.fetchone()
        assert row is not None
        where = (
            "for every server connection PgBouncer opens: connect_query in its [databases] entry, "
            "or ALTER ROLE ... SET"
        )
        if row[0] != self.schema:
            raise StoreError(
                f"behind PgBouncer's transaction pooling (pool_mode=transaction) the store cannot "
                f"set search_path, and the server's does not lead to schema {self.schema!r} "
                f"(current_schema() is {row[0]!r}): set search_path to {self.schema} {where}"
            )
        timeout_ms = int(self.statement_timeout * 1000) if self.statement_timeout else None
        if timeout_ms is not None and int(row[1]) != timeout_ms:
            raise StoreError(
                f"behind PgBouncer's transaction pooling (pool_mode=transaction) the store cannot "
                f"set statement_timeout={self.statement_timeout}s, and the server's is {row[1]} ms: "
                f"set statement_timeout to {timeout_ms} {where}, or pass statement_timeout=0 to "
                "keep the server's"
            )

    # --- the error boundary ----------------------------------------------------------------

    @contextlib.contextmanager
    def _boundary(self, attempt: _Attempt | None = None, *, connecting: bool = False) -> Iterator[None]:
        """The one place where driver exceptions become the library's (httpcore's
        ``map_exceptions``). ``attempt`` learns whether a retry is safe; ``connecting`` says the
        error came while connecting, when the cause is all the caller needs."""
        try:
            yield
        except WorkspaceLifecycleError:
            raise  # already ours (some are OSErrors, which the driver tuple would catch)
        except _DRIVER_ERRORS as exc:
            committing = attempt is not None and attempt.committing
            if attempt is not None:
                attempt.retry = attempt.connected and not committing and _connection_lost(exc)
            mapped = self._error(exc, connecting=connecting, committing=committing)
            if isinstance(mapped, WorkspaceLifecycleError):
                raise mapped from exc
            raise mapped from None  # bad input: the driver's exception adds nothing

    def _error(self, exc: BaseException, *, connecting: bool, committing: bool) -> Exception:
        """The library's error (or a ``ValueError`` for a value PostgreSQL cannot store)."""
        if isinstance(exc, UnicodeEncodeError):
            return ValueError(
                f"PostgreSQL cannot store this text: it is not valid UTF-8 ({exc.reason}, "
                f"e.g. a lone surrogate, at position {exc.start})"
            )
        if isinstance(exc, (psycopg.DataError, pg_errors.ProgramLimitExceeded)):
            # A NUL byte, a value too large to index, ...: bad input, not a storage fault.
            return ValueError(f"PostgreSQL cannot store this value: {_cause(exc)}")
        if isinstance(exc, PoolClosed) or self._closed:
            return StoreClosedError("the PostgreSQL store is closed")
        if isinstance(exc, pg_errors.QueryCanceled):
            limit = f"={self.statement_timeout}s" if self.statement_timeout else " (the server's)"
            return StoreBusyError(
                f"a PostgreSQL statement ran past statement_timeout{limit} "
                f"(waiting for a lock held by another writer, or an overloaded server): {_cause(exc)}"
            )
        if isinstance(exc, pg_errors.LockNotAvailable):
            return StoreBusyError(f"a PostgreSQL lock was not available: {_cause(exc)}")
        if connecting:
            cause = _cause(exc)
            text = f"cannot connect to PostgreSQL at {self.url}: {cause}"
            refused_for_good = (
                "FATAL:" in str(exc) or str(exc).startswith("connection is bad: invalid")
            ) and not any(word in cause for word in _TRANSIENT_REFUSALS)
            if isinstance(exc, psycopg.OperationalError) and refused_for_good:
                return StoreError(text)  # no such database or role, bad password, bad parameter
            if isinstance(exc, (psycopg.OperationalError, PoolTimeout, ConnectionError)):
                return StoreUnavailableError(text)
            return StoreError(text)
        if isinstance(exc, PoolTimeout):
            return StoreUnavailableError(
                f"no connection to PostgreSQL at {self.url} within pool_timeout={self._pool_timeout}s "
                f"(is the server up?): {_cause(exc)}"
            )
        if isinstance(exc, (psycopg.OperationalError, ConnectionError)):
            if committing:
                return TransientStoreError(
                    f"the connection to PostgreSQL failed while committing; the write may or may "
                    f"not have been applied: {_cause(exc)}"
                )
            return StoreUnavailableError(f"the connection to PostgreSQL at {self.url} failed: {_cause(exc)}")
        if isinstance(exc, pg_errors.UndefinedTable):
            why = (
                "was it dropped, or does every server connection of PgBouncer get its search_path?"
                if self.pool_mode == "transaction"
                else "was it dropped?"
            )
            return StoreError(f"the schema {self.schema!r} lacks a table ({why}): {_cause(exc)}")
        return StoreError(f"PostgreSQL error ({type(exc).__name__}): {_cause(exc)}")

    async def _run(self, body: Callable[[Conn], Awaitable[T]], *, write: bool = False) -> T:
        """Run ``body`` on a pooled connection, inside a transaction if ``write``.

        The body runs shielded from cancellation: a cancelled caller lets its transaction
        finish (bounded by ``statement_timeout``) instead of leaving a half-used connection.
        A connection that died before the commit was sent is replaced and the body retried.
        """
        return await self._try(lambda conn, attempt: body(conn), transaction=write)

    async def _try(self, body: Callable[[Conn, _Attempt], Awaitable[T]], *, transaction: bool = False) -> T:
        """:meth:`_run` for a body that says itself when its commit begins: an autocommit body
        sets ``attempt.committing`` before the statement that commits."""
        pool = self._check()
        tries = 0
        while True:
            tries += 1
            attempt = _Attempt()
            self._round_trips += 1
            try:
                with self._boundary(attempt):
                    conn = await pool.getconn()
                    attempt.connected = True
                    with anyio.CancelScope(shield=True):
                        try:
                            if not transaction:
                                return await body(conn, attempt)
                            async with conn.transaction():
                                result = await body(conn, attempt)
                                attempt.committing = True
                            return result
                        finally:
                            await pool.putconn(conn)
            except StoreUnavailableError as exc:
                if not attempt.retry or self._closed or tries >= 3:
                    raise
                log.info("%s; retrying on a fresh connection", exc)
            with self._boundary():
                await pool.check()

    async def _decide(
        self,
        body: Callable[[Conn], Awaitable[_Decided[T]]],
        *,
        workspace_id: str | None = None,
        on_known: Callable[[_Known], _Decided[T]] | None = None,
    ) -> T:
        """A hot write in autocommit: ``body`` reads the rows (one round trip, which also proves
        the connection alive) and decides with :mod:`workspace_lifecycle.writes`; the decided
        write is then persisted by one guarded statement (:meth:`_commit`). If the guard finds
        the rows changed meanwhile (another writer committed), read and decide again.

        ``on_known`` decides the same write on the rows this process last read or wrote for
        ``workspace_id`` (:class:`_Known`), saving the read. Only a decision to write is taken
        from them, since the guard proves them current; one to write nothing (or an error) is
        made again on rows read now. It is skipped on a connection that may be dead (the read is
        also the probe that lets a write be retried on a fresh connection).
        """

        async def once(conn: Conn, attempt: _Attempt) -> T | _Changed:
            decided = None
            known = self._known.get(workspace_id) if workspace_id is not None else None
            if known is not None and on_known is not None and _idle_and_alive(conn):
                with contextlib.suppress(Exception):
                    decided = on_known(known)
                if decided is not None and decided.write is None:
                    decided = None
            if decided is None:
                decided = await body(conn)
            else:
                decided = attrs.evolve(decided, known=known)
            if decided.write is None:
                return decided.answer(0)
            attempt.committing = True  # from here a lost connection leaves the outcome unknown
            try:
                head = await self._commit(conn, decided.write, decided.seen)
            except BaseException:
                self._forget(decided.seen)
                raise
            self._remember(decided, head)
            return _CHANGED if head is None else decided.answer(head)

        for _ in range(_MAX_DECISIONS):
            result = await self._try(once)
            if not isinstance(result, _Changed):
                return result
        raise StoreBusyError(
            f"a PostgreSQL write found its rows changed by other writers {_MAX_DECISIONS} times in a row"
        )

    async def _migrate(self, conn: Conn) -> None:
        """Apply the missing migrations, one replica at a time."""
        async with conn.transaction():
            # search_path for this transaction only: also right behind transaction pooling.
            await conn.execute(
                "SELECT set_config('search_path', %s, true), pg_advisory_xact_lock(%s, %s)",
                (f'"{self.schema}"', _MIGRATE_LOCK, self._lock_key),
            )
            cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
            if await cur.fetchone() is None:
                await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
            row = await cur.fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the PostgreSQL schema {self.schema!r} is at version {current}, newer than "
                    f"this workspace-lifecycle understands ({SCHEMA_VERSION}); upgrade the library"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                await conn.execute(MIGRATIONS[version - 1])
                await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                log.info("migrated schema %s to version %d", self.schema, version)

    # --- persisting decided writes ---------------------------------------------------------

    def _forget(self, seen: _Seen | None) -> None:
        if seen is not None:
            self._known.pop(seen.workspace_id, None)

    def _remember(self, decided: _Decided[Any], head: int | None) -> None:
        """Keep the rows of a workspace this process just wrote (see :class:`_Known`)."""
        seen, write = decided.seen, decided.write
        if seen is None or write is None:
            return
        base = decided.known or self._known.get(seen.workspace_id)
        if head is None or base is None or base.version != seen.version or not _CACHE_KNOWN_ROWS:
            self._forget(seen)  # changed by another writer, or rows it does not know
            return
        self._known[seen.workspace_id] = base.after(write, head if write.events else base.facts.seq)
        self._known.move_to_end(seen.workspace_id)
        if len(self._known) > _KNOWN_MAX:
            self._known.popitem(last=False)

    async def _commit(self, conn: Conn, write: writes.Write, seen: _Seen | None) -> int | None:
        """Group commit: persist ``write`` (as :meth:`_execute`), batched with the guarded
        writes other tasks of this process decided meanwhile.

        A write that finds no batch in flight leads: it takes everything queued (often just
        itself) and commits it; writes that arrive while a batch is in flight queue for the
        next one. One write alone is its own statement in autocommit; several are pipelined on
        the leader's connection in one transaction (one round trip, one commit, one hold of the
        log lock for all of them). In a batch the guards skip rows locked by other transactions
        (a batch that holds the log lock must never wait for a row: the writer holding that row
        may be waiting for the log lock); a write whose guard missed in a batch, or whose batch
        failed on anything but a lost connection, runs alone, so a write that fails fails only
        itself. A connection lost under a batch leaves every write of it unknown.
        """
        if seen is None or not self.batch_writes or self._before_commit is not None:
            return await self._execute(conn, write, seen)
        mine = _Queued(write, seen)
        self._queue.append(mine)
        while mine.outcome is _PENDING:
            if self._leading >= _BATCHES_IN_FLIGHT or not self._queue:
                await self._led.wait()
                continue
            batch, self._queue = self._queue, []
            self._leading += 1
            try:
                await self._run_batch(conn, batch)
            finally:
                for item in batch:
                    if item.outcome is _PENDING:  # interrupted: let each one run alone
                        item.outcome = _ALONE
                self._leading -= 1
                led, self._led = self._led, anyio.Event()
                led.set()
        if mine.outcome is _ALONE:
            return await self._execute(conn, write, seen)
        if isinstance(mine.outcome, BaseException):
            raise mine.outcome
        assert isinstance(mine.outcome, int) or mine.outcome is None
        return mine.outcome

    async def _run_batch(self, conn: Conn, batch: list[_Queued]) -> None:
        """Commit ``batch`` on ``conn`` and set each write's outcome (see :meth:`_commit`)."""
        if len(batch) == 1:  # alone, in autocommit; it too may not wait for a row while leading
            (only,) = batch
            try:
                head = await self._execute(conn, only.write, only.seen, skip_locked=True)
            except Exception as exc:
                only.outcome = exc
            else:
                only.outcome = _ALONE if head is None else head
            return
        statements = [self._statement(item.write, item.seen, skip_locked=True) for item in batch]
        try:
            async with conn.pipeline(), conn.transaction():
                cursors = [await conn.execute(query, params) for query, params in statements]
            rows = [await cur.fetchone() for cur in cursors]
        except Exception as exc:
            lost = _connection_lost(exc) or conn.closed
            for item in batch:
                item.outcome = exc if lost else _ALONE
            return
        self.batches += 1
        self.batched_writes += len(batch)
        for item, row in zip(batch, rows, strict=True):
            item.outcome = _ALONE if row is None else int(row[0])

    async def _persist(self, conn: Conn, write: writes.Write) -> int:
        """Persist one decided write inside the caller's transaction, whose row locks already
        make it exact (no guard); return the new head."""
        head = await self._execute(conn, write, None)
        assert head is not None, "an unguarded write always persists"
        return head

    async def _execute(
        self, conn: Conn, write: writes.Write, seen: _Seen | None, *, skip_locked: bool = False
    ) -> int | None:
        """Persist ``write`` as one statement (:meth:`_statement`); return the new head, or
        ``None`` if the guard ``seen`` found the rows changed (then nothing was written)."""
        query, params = self._statement(write, seen, skip_locked=skip_locked)
        if self._before_commit is None:
            cur = await conn.execute(query, params)
            row = await cur.fetchone()
        else:  # test hook: the same statement in a transaction held open after it
            async with conn.transaction():
                cur = await conn.execute(query, params)
                row = await cur.fetchone()
                if row is not None:
                    await self._before_commit()
        return None if row is None else int(row[0])

    def _statement(
        self, write: writes.Write, seen: _Seen | None, *, skip_locked: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """One statement that persists ``write`` generically: a CTE of the guard, the row
        changes, the log append and the NOTIFY. It returns one row (the new head) or, when the
        guard fails, none and changes nothing.

        * **The guard** (``seen``): the workspace row ``FOR UPDATE`` and the chat row ``FOR
          SHARE``, each only if its ``version`` is still the one read. Under READ COMMITTED a
          locking read waits for a concurrent writer of the row and then re-checks its
          condition against the row's newest committed version, not the statement's snapshot:
          a row changed after the snapshot fails the guard (the caller reads again), and an
          unchanged one passes however old the snapshot, so it never refuses spuriously. A
          guarded row is only ever changed by a writer holding its lock, so the unlocked reads
          of this statement's snapshot (the other rows of the workspace) are current too.
        * **The rows**, each change gated on the guard: the workspace row (its ``version``
          bumped, and ``deleted`` / ``latest_build`` when the write changes them), the chat,
          the build (inserted when queued, else updated), the agent (upserted).
        * **The log**: only once every row change has run (their row locks are taken before the
          log lock, as in every writer, so no two writers wait on each other in a circle), take
          the transaction-scoped advisory lock of the log, then draw the events' ``seq``:
          ``nextval`` runs per row of ``lock CROSS JOIN VALUES``, so after the lock is granted, never
          from the snapshot. The lock is held until the commit is visible, so seqs follow
          commit order. ``pg_notify`` carries the new head and is delivered at commit, on each
          channel of :meth:`_channels_of` (one, unless ``shards``).

        ``skip_locked`` (in a batch, see :meth:`_commit`): a guard row locked by another
        transaction fails the guard instead of being waited for; the write then runs alone.
        """
        ctes: list[str] = []
        params: dict[str, Any] = {"l1": _LOG_LOCK, "l2": self._lock_key}
        skip = " SKIP LOCKED" if skip_locked else ""
        if seen is None:
            ctes.append("ok AS MATERIALIZED (SELECT 1)")
        else:
            ctes.append(
                "g_w AS MATERIALIZED (SELECT 1 FROM workspaces"
                f" WHERE workspace_id = %(g_w)s AND version = %(g_wv)s FOR UPDATE{skip})"
            )
            params.update(g_w=seen.workspace_id, g_wv=seen.version)
            if seen.chat_id is None:
                ctes.append("ok AS MATERIALIZED (SELECT 1 FROM g_w)")
            else:
                # The workspace first, then the chat: create_workspace takes them in that order.
                ctes.append(
                    "g_c AS MATERIALIZED (SELECT 1 FROM chats WHERE chat_id = %(g_c)s"
                    f" AND version = %(g_cv)s AND EXISTS (SELECT FROM g_w) FOR SHARE{skip})"
                )
                ctes.append("ok AS MATERIALIZED (SELECT 1 FROM g_w WHERE EXISTS (SELECT FROM g_c))")
                params.update(g_c=seen.chat_id, g_cv=seen.chat_version)
        gate = "EXISTS (SELECT FROM ok)"
        changes: list[str] = []
        ws, build = write.workspace, write.build
        queued = write.queued and build is not None
        if ws is not None and seen is None:
            # A new workspace (with its first build: one statement cannot update a row it inserts).
            changes.append(
                "INSERT INTO workspaces (workspace_id, chat_id, owner, name, deleted, latest_build,"
                " deadline_at, deadline_reason) VALUES (%(w_id)s, %(w_chat)s, %(w_owner)s, %(w_name)s,"
                " %(w_deleted)s, %(w_latest)s, %(w_deadline)s, %(w_reason)s)"
                " ON CONFLICT (workspace_id) DO UPDATE SET deleted = excluded.deleted,"
                " latest_build = greatest(workspaces.latest_build, excluded.latest_build),"
                " deadline_at = excluded.deadline_at, deadline_reason = excluded.deadline_reason,"
                " version = workspaces.version + 1 RETURNING 1"
            )
            params.update(
                w_id=ws.workspace_id,
                w_chat=ws.chat_id,
                w_owner=ws.owner,
                w_name=ws.name,
                w_deleted=ws.deleted,
                w_latest=build.number if queued and build is not None else 0,
                w_deadline=ws.deadline.at if ws.deadline else None,
                w_reason=ws.deadline.reason.value if ws.deadline else None,
            )
        else:
            target = (
                seen.workspace_id if seen is not None else (build.workspace_id if queued and build else None)
            )
            if target is not None:
                sets = ["version = version + 1"]
                if ws is not None:
                    assert ws.workspace_id == target, "a write changes the workspace it read"
                    sets += [
                        "deleted = %(w_deleted)s",
                        "deadline_at = %(w_deadline)s",
                        "deadline_reason = %(w_reason)s",
                    ]
                    params.update(
                        w_deleted=ws.deleted,
                        w_deadline=ws.deadline.at if ws.deadline else None,
                        w_reason=ws.deadline.reason.value if ws.deadline else None,
                    )
                if queued and build is not None:
                    assert build.workspace_id == target, "a write queues builds of the workspace it read"
                    sets.append("latest_build = %(b_n)s")
                changes.append(
                    f"UPDATE workspaces SET {', '.join(sets)} WHERE workspace_id = %(w_target)s AND {gate}"
                    " RETURNING 1"
                )
                params["w_target"] = target
        if write.chat is not None:
            changes.append(
                "UPDATE chats SET workspace_id = %(c_ws)s, idle_stop_after = %(c_idle)s,"
                " delete_after_stopped = %(c_retain)s, version = version + 1"
                f" WHERE chat_id = %(c_id)s AND {gate} RETURNING 1"
            )
            params.update(
                c_ws=write.chat.workspace_id,
                c_id=write.chat.chat_id,
                c_idle=write.chat.policy.idle_stop_after,
                c_retain=write.chat.policy.delete_after_stopped,
            )
        if build is not None and write.queued:
            changes.append(
                "INSERT INTO builds (build_id, workspace_id, number, transition, status, error,"
                " has_agent, worker, parameters, details, reason) SELECT %(b_id)s::text, %(b_ws)s::text,"
                " %(b_n)s::integer, %(b_transition)s::text, %(b_status)s::text, %(b_error)s::text,"
                " %(b_has_agent)s::boolean, %(b_worker)s::text, %(b_parameters)s::jsonb,"
                f" %(b_details)s::jsonb, %(b_reason)s::text WHERE {gate} RETURNING 1"
            )
        elif build is not None:
            changes.append(
                "UPDATE builds SET status = %(b_status)s, error = %(b_error)s,"
                " has_agent = %(b_has_agent)s, worker = %(b_worker)s, details = %(b_details)s,"
                " lease_token = %(b_lease)s, lease_expires_at = %(b_lease_until)s"
                f" WHERE build_id = %(b_id)s AND {gate} RETURNING 1"
            )
        if build is not None:
            params.update(
                b_id=build.build_id,
                b_ws=build.workspace_id,
                b_n=build.number,
                b_transition=build.transition.value,
                b_status=build.status.value,
                b_error=build.error,
                b_has_agent=build.has_agent,
                b_worker=build.worker,
                b_parameters=Jsonb(dict(build.parameters)),
                b_details=None if build.details is None else Jsonb(dict(build.details)),
                b_reason=build.reason.value,
                b_lease=build.lease_token,
                b_lease_until=build.lease_expires_at,
            )
        if write.agent is not None:
            changes.append(
                "INSERT INTO agents (workspace_id, build_number, lifecycle)"
                f" SELECT %(a_ws)s::text, %(a_n)s::integer, %(a_lifecycle)s::text WHERE {gate}"
                " ON CONFLICT (workspace_id) DO UPDATE"
                " SET build_number = excluded.build_number, lifecycle = excluded.lifecycle RETURNING 1"
            )
            params.update(
                a_ws=write.agent.workspace_id,
                a_n=write.agent.build_number,
                a_lifecycle=write.agent.lifecycle.value,
            )
        ctes += [f"p{i} AS ({change})" for i, change in enumerate(changes)]
        # Reading the changes runs them before the log lock (an unread one would run last).
        done = " UNION ALL ".join(f"SELECT 1 FROM p{i}" for i in range(len(changes))) or "SELECT 1"
        ctes.append(f"done AS MATERIALIZED (SELECT count(*) FROM ({done}) d)")
        if not write.events:  # a lease renewal: rows only, no log lock, no NOTIFY; head 0
            return f"WITH {', '.join(ctes)} SELECT 0 FROM ok, done", params
        ctes.append("lock AS MATERIALIZED (SELECT pg_advisory_xact_lock(%(l1)s, %(l2)s) FROM ok, done)")
        rows = []
        for i, event in enumerate(write.events):
            rows.append(
                f"(%(e{i}k)s, %(e{i}w)s, %(e{i}c)s, %(e{i}n)s::integer, %(e{i}p)s::jsonb,"
                f" %(e{i}at)s::double precision)"
            )
            params.update(
                {
                    f"e{i}k": event.kind.value,
                    f"e{i}w": event.workspace_id,
                    f"e{i}c": event.chat_id,
                    f"e{i}n": event.build_number,
                    f"e{i}p": Jsonb(event.payload()),
                    f"e{i}at": event.at,
                }
            )
        ctes.append(
            "ins AS (INSERT INTO events (kind, workspace_id, chat_id, build_number, payload, at)"
            f" SELECT v.* FROM lock, (VALUES {', '.join(rows)}) AS v RETURNING seq)"
        )
        notify = ""
        if not self.notify_after_commit:
            channels = self._channels_of(write)
            notify = "".join(f", pg_notify(%(chan{i})s, m::text)" for i in range(len(channels)))
            params.update({f"chan{i}": channel for i, channel in enumerate(channels)})
        query = f"WITH {', '.join(ctes)} SELECT m{notify} FROM (SELECT max(seq) AS m FROM ins) s WHERE m IS NOT NULL"
        return query, params

    def _channels_of(self, write: writes.Write) -> list[str]:
        """The channels ``write``'s NOTIFY goes to: the store's one channel, or with ``shards``
        the shard of each workspace it writes, the shard of the chat it binds to a new
        workspace (a watcher of that chat follows the workspace from that event) and, when it
        queues a build, the builds channel (provisioners claim the builds of every workspace)."""
        if not self.shards:
            return [self._channel]
        channels: dict[str, None] = {}  # ordered, without repeats
        for event in write.events:
            channels[self._shard_channel(event.workspace_id)] = None
            if event.kind is EventKind.CHAT_BOUND:
                channels[self._shard_channel(event.chat_id)] = None
            elif event.kind is EventKind.BUILD_QUEUED:
                channels[self._builds_channel] = None
        return list(channels)

    def _shard_channel(self, key: str) -> str:
        return self._shard_channels[shard_of(key, self.shards)]

    def _topic_channels(self, topic: Topic) -> tuple[str, ...]:
        if topic.kind is TopicKind.WORKSPACE or topic.kind is TopicKind.CHAT:
            return (self._shard_channel(topic.key),)
        if topic.kind is TopicKind.BUILDS:
            return (self._builds_channel,)
        return self._shard_channels  # every workspace: each of them is in one shard

    def take_interest(self, topic: Topic) -> None:
        """With ``shards``, LISTEN to ``topic``'s channel from now on (counted per channel). The
        listener task applies it: it stops waiting, LISTENs, and then reads the head, so a
        notification sent before the LISTEN took effect is not missed (its commit is in that
        head). Without ``shards`` the one channel carries everything: nothing to do."""
        if not self.shards:
            return
        for channel in self._topic_channels(topic):
            self._wanted[channel] = self._wanted.get(channel, 0) + 1
            if channel not in self._listening:
                self._interest_changed = True
                if self._hearing is not None:
                    self._hearing.cancel()  # the listener LISTENs to it now, not after its wait

    def drop_interest(self, topic: Topic) -> None:
        """The end of one :meth:`take_interest`: a channel nobody needs any more is UNLISTENed
        by the listener when it next wakes (meanwhile its notifications are merely extra)."""
        if not self.shards:
            return
        for channel in self._topic_channels(topic):
            left = self._wanted.get(channel, 0) - 1
            if left > 0:
                self._wanted[channel] = left
            else:
                self._wanted.pop(channel, None)
                self._interest_changed = True

    def _committed(self, outcome: Outcome) -> Outcome:
        if outcome.fired:
            self._wrote(outcome.facts.seq)
        else:
            self._read_head(outcome.facts.seq)
        return outcome

    def _read_head(self, head: int) -> None:
        """A read returned the log's ``head`` with its rows. By shard, it may be ahead of every
        notification this replica will get (other shards' commits): a caller that then waits
        for the pump to reach it (a lost compare-and-set catching up) must not be left to the
        poll, so the doorbell hears of it. On one channel a notification follows every commit
        anyway, and nothing changes."""
        if self.shards:
            self._doorbell.saw(head)

    def _wrote(self, head: int) -> None:
        """A write of this process committed up to ``head``: wake local waiters now, and other
        processes through the notifier (when the NOTIFY is not sent in the write itself)."""
        if not head:
            return
        self._doorbell.saw(head)
        if self.notify_after_commit and head > self._announce_head:
            self._announce_head = head
            self._announce.set()

    async def _notify(self, conn: Conn, *, head: int) -> None:
        # Its own transaction, committed without waiting for the disk: a notification is not
        # durable anyway, and its commit must not cost an fsync per write.
        await conn.execute(
            "SELECT set_config('synchronous_commit', 'off', true), pg_notify(%s, %s)",
            (self._channel, str(head)),
        )
        self._notified = max(self._notified, head)

    async def _notifier(self) -> None:
        """Send one ``NOTIFY`` with the newest head this process committed, after the commits
        (DBOS's batched notifier): a ``NOTIFY`` inside a write costs every commit a turn on the
        server's global notification lock. Commits that land while one is being sent are
        announced together by the next. A notification is only a hint: one lost here (a crash
        between the commit and its NOTIFY, a failed send) costs other processes at most a
        ``poll_interval`` of latency, never an event."""
        while True:
            await self._announce.wait()
            self._announce = anyio.Event()
            head = self._announce_head
            if head <= self._notified:
                continue
            try:
                await self._run(functools.partial(self._notify, head=head))
            except StoreError as exc:
                log.info("PostgreSQL notifier: %s (the poll covers it)", exc)

    # --- the log head and wake-ups ---------------------------------------------------------

    @staticmethod
    async def _head(conn: Conn) -> int:
        cur = await conn.execute(f"SELECT {_HEAD}")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _connect_listener(self, *, migrate: bool = False) -> Conn:
        """A new LISTEN connection (migrating first when opening), its head read after LISTEN."""
        with self._boundary(connecting=True):
            conn = await psycopg.AsyncConnection.connect(self._listen_conninfo, autocommit=True)
        try:
            with self._boundary():
                await self._configure(conn)
                if migrate:
                    await self._migrate(conn)
                self._listening = set()
                await self._follow_interest(conn)
                head = await self._head(conn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self.listener_connects += 1
        self.listener_pid = conn.info.backend_pid
        self._listener_read_at = time.monotonic()
        # After a reconnect, anything may have been missed: wake everyone to re-read.
        if self._doorbell.saw(head, force=self.listener_connects > 1) and self.listener_connects > 1:
            self.listener_wakeups += 1
        return conn

    async def _watch(self) -> None:
        """The store's one background task: the listener, and the fallback poll beside it."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._poll)
            if self.notify_after_commit:
                tg.start_soon(self._notifier)
            if self.listens:
                await self._listen()

    async def _listen(self) -> None:
        """Keep a LISTEN connection: read hints, prove it answers, replace it when it does not."""
        delay = 0.05
        while True:
            try:
                if self._listener is None:
                    self._listener = await self._connect_listener()
                    delay = 0.05
                await self._listen_once(self._listener)
            except (StoreError, TimeoutError) as exc:  # TimeoutError: the head read hung
                log.warning("PostgreSQL listener: %s; reconnecting in %.2fs", exc or "no answer", delay)
                if self._listener is not None:
                    await self._listener.close()
                    self._listener = None
                await anyio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _listen_once(self, conn: Conn) -> None:
        """Wait up to ``poll_interval`` for a notification that hints at news, then read the head
        on the listener within ``listen_timeout``: that confirms the hint, is the poll while the
        listener is healthy, and proves its backend still answers (a hung one raises).

        With ``shards``, a new interest interrupts the wait: its channel is LISTENed to, and
        the head read at once (what committed before the LISTEN took effect is in it)."""
        hinted = 0
        deadline = time.monotonic() + self.poll_interval
        with self._boundary():
            listened = await self._follow_interest(conn)
            while (
                not listened
                and hinted <= self._doorbell.head
                and (remaining := deadline - time.monotonic()) > 0
            ):
                # One packet at a time (all of it: a break would drop the rest of the packet;
                # an interrupted wait has read nothing yet: libpq keeps what it has not read).
                payloads: list[str] = []
                with anyio.CancelScope() as self._hearing:
                    if not self._interest_changed:
                        notes = conn.notifies(timeout=remaining, stop_after=1)
                        async with contextlib.aclosing(notes):
                            async for note in notes:
                                payloads.append(note.payload)
                self._hearing = None
                self._notifications_received += len(payloads)
                if payloads:
                    hinted = max(hinted, *map(self._hinted_head, payloads))
                elif self._interest_changed:
                    listened = await self._follow_interest(conn)
                else:
                    break  # the poll_interval passed in silence
            with anyio.fail_after(self.listen_timeout):
                head = await self._head(conn)
        self._listener_read_at = time.monotonic()
        if self._doorbell.saw(head):
            self.listener_wakeups += 1
        if hinted > head:  # a NOTIFY is delivered after its commit is visible: this one lied
            self.stray_notifications += 1

    async def _follow_interest(self, conn: Conn) -> bool:
        """LISTEN and UNLISTEN on the listener connection ``conn`` until it listens to the
        channels of this process's interest (the one channel, unless ``shards``); say whether
        it LISTENed to a new one. Only the listener task runs this: one statement at a time."""
        listened = False
        while True:
            self._interest_changed = False
            wanted = set(self._wanted) if self.shards else {self._channel}
            new, old = sorted(wanted - self._listening), sorted(self._listening - wanted)
            if not new and not old:
                return listened
            await conn.execute(
                sql.SQL("; ").join(
                    [sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in new]
                    + [sql.SQL("UNLISTEN {}").format(sql.Identifier(c)) for c in old]
                )
            )
            self._listening = wanted
            listened = listened or bool(new)

    def _hinted_head(self, payload: str) -> int:
        """The head a notification claims if its payload looks like one we send, else 0 (counted)."""
        if _PAYLOAD_RE.fullmatch(payload):
            return int(payload)
        self.stray_notifications += 1
        return 0

    async def _poll(self) -> None:
        """The fallback poll, on the pool so that it never depends on the connection it backs
        up: while someone waits and the listener has not read the head for a ``poll_interval``."""
        while True:
            await anyio.sleep(self.poll_interval)
            if not self._doorbell.sleepers or time.monotonic() - self._listener_read_at < self.poll_interval:
                continue
            self.polls += 1
            try:
                head = await self._run(self._head)
            except StoreError as exc:
                log.info("PostgreSQL fallback poll: %s", exc)
                continue
            if self._doorbell.saw(head):
                self.listener_wakeups += 1

    # --- chats and workspaces --------------------------------------------------------------

    async def register_chat(
        self,
        chat_id: str,
        owner: str,
        *,
        policy: Policy | None = None,
        default_policy: Policy | None = None,
    ) -> Chat:
        async def body(conn: Conn) -> Chat:
            while True:
                cur = await conn.execute(
                    f"SELECT {_CHAT_COLUMNS} FROM chats c WHERE c.chat_id = %s FOR UPDATE", (chat_id,)
                )
                row = await cur.fetchone()
                existing = None if row is None else _parse_chat(row)
                chat = writes.register_chat(
                    existing, chat_id, owner, policy=policy, default=default_policy or Policy()
                )
                if chat is None:
                    assert existing is not None
                    return existing
                idle, retain = chat.policy.idle_stop_after, chat.policy.delete_after_stopped
                if existing is not None:  # a new policy: the chat's version moves with it
                    await conn.execute(
                        "UPDATE chats SET idle_stop_after = %s, delete_after_stopped = %s,"
                        " version = version + 1 WHERE chat_id = %s",
                        (idle, retain, chat_id),
                    )
                    return chat
                cur = await conn.execute(
                    "INSERT INTO chats (chat_id, owner, idle_stop_after, delete_after_stopped)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (chat_id) DO NOTHING RETURNING 1",
                    (chat_id, owner, idle, retain),
                )
                if await cur.fetchone() is not None:
                    return chat
                # Another replica inserted it since our read: decide again on its row.

        return await self._run(body, write=True)

    async def get_chat(self, chat_id: str) -> Chat | None:
        async def body(conn: Conn) -> Chat | None:
            cur = await conn.execute(f"SELECT {_CHAT_COLUMNS} FROM chats c WHERE c.chat_id = %s", (chat_id,))
            row = await cur.fetchone()
            return None if row is None else _parse_chat(row)

        return await self._run(body)

    @staticmethod
    async def _facts(conn: Conn, workspace_id: str) -> WorkspaceFacts:
        cur = await conn.execute(_FACTS_SQL, (workspace_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no workspace {workspace_id!r}")
        return _parse_facts(row)

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        facts = await self._run(lambda conn: self._facts(conn, workspace_id))
        self._read_head(facts.seq)
        return facts

    async def get_build(self, build_id: str) -> Build:
        async def body(conn: Conn) -> Build:
            cur = await conn.execute(
                f"SELECT {_BUILD_COLUMNS} FROM builds b WHERE b.build_id = %s", (build_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(f"no build {build_id!r}")
            return _parse_build(row)

        return await self._run(body)

    async def create_workspace(
        self,
        chat_id: str,
        name: str,
        *,
        expected_workspace_id: str | None,
        parameters: Mapping[str, str] | None = None,
    ) -> Outcome:
        async def body(conn: Conn) -> Outcome:
            # Lock the workspace to be replaced first, then the chat: request_build takes them
            # in that order too, so the two never wait on each other in a circle. The chat
            # row's lock serialises every create and start decision on this chat.
            replaced = None
            if expected_workspace_id is not None:
                await conn.execute(
                    "SELECT 1 FROM workspaces WHERE workspace_id = %s FOR UPDATE", (expected_workspace_id,)
                )
            cur = await conn.execute(
                f"SELECT {_CHAT_COLUMNS} FROM chats c WHERE c.chat_id = %s FOR UPDATE", (chat_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(f"no chat {chat_id!r}")
            chat = _parse_chat(row)
            if expected_workspace_id is not None and chat.workspace_id == expected_workspace_id:
                replaced = await self._facts(conn, expected_workspace_id)
            write = writes.create_workspace(
                chat,
                expected_workspace_id=expected_workspace_id,
                workspace_id=str(uuid.uuid4()),
                build_id=str(uuid.uuid4()),
                name=name,
                at=self._clock(),
                replaced=replaced,
                parameters=parameters,
            )
            if write is None:
                if chat.workspace_id is None:
                    raise NotFoundError(f"chat {chat_id!r} has no workspace")
                return Outcome(fired=False, build=None, facts=await self._facts(conn, chat.workspace_id))
            head = await self._persist(conn, write)
            assert write.workspace is not None
            return Outcome(
                fired=True, build=write.build, facts=WorkspaceFacts(write.workspace, write.build, None, head)
            )

        return self._committed(await self._run(body, write=True))

    async def request_build(
        self,
        workspace_id: str,
        transition: Transition,
        *,
        expected_build_number: int,
        parameters: Mapping[str, str] | None = None,
    ) -> Outcome:
        def decide(known: _Known) -> _Decided[Outcome]:
            facts = known.facts
            write = writes.request_build(
                facts,
                chat=known.chat,
                transition=transition,
                expected_build_number=expected_build_number,
                build_id=str(uuid.uuid4()),
                at=self._clock(),
                parameters=parameters,
            )
            if write is None:
                return _Decided(None, None, lambda _: Outcome(fired=False, build=None, facts=facts))
            return _Decided(
                write,
                known.seen(),  # the workspace's rows and its chat's: the decision read both
                lambda head: Outcome(fired=True, build=write.build, facts=_after(facts, write, head)),
                known,
            )

        async def body(conn: Conn) -> _Decided[Outcome]:
            return decide(await self._read_known(conn, workspace_id, f"no workspace {workspace_id!r}"))

        return self._committed(await self._decide(body, workspace_id=workspace_id, on_known=decide))

    @staticmethod
    async def _read_known(conn: Conn, workspace_id: str, missing: str) -> _Known:
        """The workspace's facts and its chat's row, in one snapshot, with their versions."""
        cur = await conn.execute(_REQUEST_SQL, (workspace_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFoundError(missing)
        f = _FACTS_WIDTH
        chat = _parse_chat(row[f + 1 : f + 1 + _CHAT_WIDTH])
        return _Known(int(row[f]), _parse_facts(row), chat, int(row[f + 1 + _CHAT_WIDTH]))

    async def touch(self, workspace_id: str) -> Deadline | None:
        def decide(known: _Known) -> _Decided[tuple[Deadline | None, int]]:
            write = writes.touch(known.facts, known.chat.policy, at=self._clock())
            if write is None:
                return _Decided(None, None, lambda _: (known.facts.workspace.deadline, 0))
            armed = write.workspace.deadline if write.workspace is not None else None
            return _Decided(write, known.seen(), lambda head: (armed, head), known)

        async def body(conn: Conn) -> _Decided[tuple[Deadline | None, int]]:
            return decide(await self._read_known(conn, workspace_id, f"no workspace {workspace_id!r}"))

        deadline, head = await self._decide(body, workspace_id=workspace_id, on_known=decide)
        self._wrote(head)
        return deadline

    async def fire_deadline(self, workspace_id: str, expected: Deadline) -> Outcome:
        def decide(known: _Known) -> _Decided[tuple[Outcome, int]]:
            facts = known.facts
            write = writes.fire_deadline(
                facts, chat=known.chat, expected=expected, build_id=str(uuid.uuid4()), at=self._clock()
            )
            if write is None:
                return _Decided(None, None, lambda _: (Outcome(fired=False, build=None, facts=facts), 0))
            return _Decided(
                write,
                known.seen(),
                lambda head: (
                    Outcome(
                        fired=write.build is not None, build=write.build, facts=_after(facts, write, head)
                    ),
                    head,
                ),
                known,
            )

        async def body(conn: Conn) -> _Decided[tuple[Outcome, int]]:
            return decide(await self._read_known(conn, workspace_id, f"no workspace {workspace_id!r}"))

        outcome, head = await self._decide(body, workspace_id=workspace_id, on_known=decide)
        self._wrote(head)
        return outcome

    async def armed_deadlines(self) -> ArmedDeadlines:
        async def body(conn: Conn) -> ArmedDeadlines:
            # One statement: one snapshot for the deadlines and the head.
            cur = await conn.execute(
                f"SELECT {_HEAD}, coalesce(array_agg(workspace_id), '{{}}'),"
                " coalesce(array_agg(deadline_at), '{}'), coalesce(array_agg(deadline_reason), '{}')"
                " FROM workspaces WHERE deadline_at IS NOT NULL"
            )
            row = await cur.fetchone()
            assert row is not None
            return ArmedDeadlines.read(
                int(row[0]),
                [
                    (w, functools.partial(parse_deadline, at, r, key=w))
                    for w, at, r in zip(row[1], row[2], row[3], strict=True)
                ],
            )

        return await self._run(body)

    async def list_chats(self) -> Sequence[ChatRow]:
        async def body(conn: Conn) -> list[ChatRow]:
            cur = await conn.execute(
                f"SELECT {_CHAT_COLUMNS}, {_FACTS_COLUMNS}, {_HEAD}"
                f" FROM chats c LEFT JOIN workspaces w ON w.workspace_id = c.workspace_id {_FACTS_JOINS}"
                " ORDER BY c.chat_id"
            )
            rows: list[ChatRow] = []
            for row in await cur.fetchall():
                chat = _parse_chat(row)
                rows.append(ChatRow.read(chat, functools.partial(_parse_facts, row[_CHAT_WIDTH:])))
            return rows

        return await self._run(body)

    # --- the provisioner side ---------------------------------------------------------------

    async def claim_build(self, worker: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Build | None:
        writes.check_lease_seconds(lease_seconds)

        async def body(conn: Conn) -> _Decided[tuple[Build | None, int]]:
            # The oldest pending build; a worker that loses it to another reads the next one.
            cur = await conn.execute(
                f"SELECT {_BUILD_COLUMNS}, {_WORKSPACE_COLUMNS}"
                " FROM builds b JOIN workspaces w ON w.workspace_id = b.workspace_id"
                " WHERE b.status = 'pending' ORDER BY b.id LIMIT 1"
            )
            row = await cur.fetchone()
            if row is None:
                return _Decided(None, None, lambda _: (None, 0))
            b, w = _BUILD_WIDTH, _BUILD_WIDTH + _WORKSPACE_WIDTH
            ws = _parse_workspace(row[b:w])
            write = writes.claim_build(
                _parse_build(row[:b]),
                ws,
                worker=worker,
                at=self._clock(),
                token=uuid.uuid4().hex,
                lease_seconds=lease_seconds,
            )
            return _Decided(write, _Seen(ws.workspace_id, int(row[w])), lambda head: (write.build, head))

        build, head = await self._decide(body)
        self._wrote(head)
        if build is not None:
            self._claimed[build.build_id] = build.workspace_id
            if len(self._claimed) > _KNOWN_MAX:
                self._claimed.popitem(last=False)
        return build

    async def _read_build(self, conn: Conn, build_id: str) -> tuple[Build, Workspace, Chat, _Seen] | None:
        """A build with its workspace and chat rows (the chat's policy arms the next deadline
        when it finishes) and the guard of a write decided on them; ``None`` if no such build."""
        cur = await conn.execute(
            f"SELECT {_BUILD_COLUMNS}, {_WORKSPACE_COLUMNS}, {_CHAT_COLUMNS}, c.version"
            " FROM builds b JOIN workspaces w ON w.workspace_id = b.workspace_id"
            " JOIN chats c ON c.chat_id = w.chat_id WHERE b.build_id = %s",
            (build_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        b, w = _BUILD_WIDTH, _BUILD_WIDTH + _WORKSPACE_WIDTH
        ws = _parse_workspace(row[b:w])
        chat = _parse_chat(row[w + 1 : w + 1 + _CHAT_WIDTH])
        seen = _Seen(ws.workspace_id, int(row[w]), chat.chat_id, int(row[w + 1 + _CHAT_WIDTH]))
        return _parse_build(row[:b]), ws, chat, seen

    async def renew_lease(
        self, build_id: str, token: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> float:
        # The workspace of a build this process claimed: its rows may be known (a heartbeat
        # is then one guarded statement, no read), and are read with their chat otherwise.
        workspace_id = self._claimed.get(build_id)

        def decide(known: _Known) -> _Decided[tuple[float, int]]:
            build = known.facts.latest_build
            if build is None or build.build_id != build_id:
                raise NotFoundError(f"build {build_id!r} is not its workspace's latest")
            write = writes.renew_lease(
                build, known.facts.workspace, token, at=self._clock(), lease_seconds=lease_seconds
            )
            assert write.build is not None and write.build.lease_expires_at is not None
            until = write.build.lease_expires_at
            # The workspace's version guards it (a renewal bumps it too: an expiry decided on
            # the lease as it was read must not pass once it was renewed).
            seen = _Seen(known.facts.workspace_id, known.version)
            return _Decided(write, seen, lambda head: (until, head), known)

        async def body(conn: Conn) -> _Decided[tuple[float, int]]:
            if workspace_id is not None:
                known = await self._read_known(conn, workspace_id, f"no build {build_id!r}")
                latest = known.facts.latest_build
                if latest is not None and latest.build_id == build_id:
                    return decide(known)
            read = await self._read_build(conn, build_id)
            if read is None:
                raise NotFoundError(f"no build {build_id!r}")
            build, ws, _, seen = read
            write = writes.renew_lease(build, ws, token, at=self._clock(), lease_seconds=lease_seconds)
            assert write.build is not None and write.build.lease_expires_at is not None
            until = write.build.lease_expires_at
            return _Decided(write, _Seen(seen.workspace_id, seen.version), lambda head: (until, head))

        until, _ = await self._decide(body, workspace_id=workspace_id, on_known=decide)
        return until

    async def next_lease_expiry(self, *, skip: Collection[str] = ()) -> Lease | None:
        passed = list(skip)

        async def body(conn: Conn) -> Lease | None:
            cur = await conn.execute(
                "SELECT build_id, workspace_id, worker, lease_token, lease_expires_at FROM builds"
                f" WHERE lease_expires_at IS NOT NULL AND status NOT IN {_FINISHED}"
                " AND build_id <> ALL(%s::text[])"
                " ORDER BY lease_expires_at LIMIT 1",
                (passed,),
            )
            row = await cur.fetchone()
            return None if row is None else Lease.read(*row)

        return await self._run(body)

    async def expire_lease(self, build_id: str, token: str) -> Build | None:
        async def body(conn: Conn) -> _Decided[tuple[Build | None, int]]:
            read = await self._read_build(conn, build_id)
            if read is None:
                return _Decided(None, None, lambda _: (None, 0))
            build, ws, chat, seen = read
            write = writes.expire_lease(build, ws, token, at=self._clock(), policy=chat.policy)
            if write is None:
                return _Decided(None, None, lambda _: (None, 0))
            return _Decided(write, seen, lambda head: (write.build, head))

        expired, head = await self._decide(body)
        self._wrote(head)
        return expired

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
        status = writes.parse_status(status)

        async def body(conn: Conn) -> _Decided[tuple[Build, int]]:
            read = await self._read_build(conn, build_id)
            if read is None:
                raise NotFoundError(f"no build {build_id!r}")
            build, ws, chat, seen = read
            write = writes.finish_build(
                build,
                ws,
                status,
                error,
                has_agent=has_agent,
                at=self._clock(),
                details=details,
                policy=chat.policy,
                lease=lease,
            )
            done = write.build
            assert done is not None
            return _Decided(write, seen, lambda head: (done, head))

        done, head = await self._decide(body)
        self._wrote(head)
        return done

    async def report_agent(
        self, workspace_id: str, lifecycle: AgentLifecycle | str, *, lease: str | None = None
    ) -> None:
        lifecycle = writes.parse_lifecycle(lifecycle)

        def decide(known: _Known) -> _Decided[int]:
            facts = known.facts
            write = writes.report_agent(
                facts.agent,
                facts.workspace,
                lifecycle,
                at=self._clock(),
                latest=facts.latest_build,
                lease=lease,
            )
            return _Decided(write, _Seen(workspace_id, known.version), lambda head: head, known)

        async def body(conn: Conn) -> _Decided[int]:
            return decide(
                await self._read_known(conn, workspace_id, f"workspace {workspace_id!r} has no agent")
            )

        self._wrote(await self._decide(body, workspace_id=workspace_id, on_known=decide))

    # --- the event log ----------------------------------------------------------------------

    async def head(self) -> int:
        head = await self._run(self._head)
        self._doorbell.saw(head)
        return head

    async def read_events(self, after: int, limit: int = 1000) -> Sequence[StoreEvent]:
        async def body(conn: Conn) -> list[StoreEvent]:
            # One statement, one snapshot: the pruning mark and the events agree.
            cur = await conn.execute(
                "SELECT l.pruned_through, e.seq, e.kind, e.workspace_id, e.chat_id, e.build_number,"
                " e.payload, e.at FROM log_state l LEFT JOIN LATERAL ("
                "   SELECT * FROM events WHERE seq > %s ORDER BY seq LIMIT %s) e ON true",
                (after, limit),
            )
            rows = await cur.fetchall()
            pruned = int(rows[0][0]) if rows else 0
            if after < pruned:
                raise CursorExpiredError(after, pruned + 1)
            return [
                StoreEvent.from_row(
                    seq=int(r[1]),
                    kind=r[2],
                    workspace_id=r[3],
                    chat_id=r[4],
                    build_number=r[5],
                    payload=r[6],
                    at=r[7],
                )
                for r in rows
                if r[1] is not None
            ]

        events = await self._run(body)
        if events:
            self._doorbell.saw(events[-1].seq)
        return events

    async def wait_for_change(self, after: int) -> None:
        self._check()
        await self._doorbell.sleep(after)
        self._check()

    async def prune_events(self, older_than: float) -> int:
        async def body(conn: Conn) -> int:
            # Only a prefix of the log is dropped: everything up to the first event that is
            # not older than ``older_than``.
            cur = await conn.execute(
                "WITH cut AS (SELECT coalesce("
                "   (SELECT min(seq) FROM events WHERE at >= %s) - 1,"
                "   (SELECT max(seq) FROM events)) AS s),"
                " del AS (DELETE FROM events WHERE seq <= (SELECT s FROM cut) RETURNING seq),"
                " mark AS (UPDATE log_state SET pruned_through ="
                "   greatest(pruned_through, (SELECT max(seq) FROM del)) RETURNING 1)"
                " SELECT count(*) FROM del",
                (older_than,),
            )
            row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._run(body, write=True)
