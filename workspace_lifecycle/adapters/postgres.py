"""The PostgreSQL store: several runtime replicas on one database (psycopg 3, asyncio only).

Design, in the order a write meets it:

* **Connections.** A psycopg-pool ``AsyncConnectionPool`` of autocommit connections, each with
  ``search_path`` set to the store's schema (``?schema=name``, default ``public``) and an
  optional ``statement_timeout``. A statement that fails because its connection died (a
  restarted server, ``pg_terminate_backend``) is retried on a fresh connection, unless the
  failure came while committing (then the outcome is unknown and the caller gets a
  :class:`~workspace_lifecycle.errors.StoreError`).
* **Exactly once.** ``create_workspace`` locks the chat row and ``request_build`` the workspace
  row (``SELECT ... FOR UPDATE``) before comparing, so concurrent requests from any number of
  replicas queue on the row and only the first one that still sees the expected build appends.
  ``claim_build`` takes the oldest pending build with ``FOR UPDATE SKIP LOCKED``.
* **A commit-ordered log.** ``bigserial`` ids are handed out in call order, not commit order, so
  a reader following ``seq > cursor`` could pass an id whose transaction commits later. Every
  writing transaction therefore takes a transaction-scoped advisory lock on the log right before
  it inserts its events and holds it until its commit is visible: ids are drawn in commit
  order, and a reader that sees ``seq = n`` has every committed event below ``n`` in view.
* **Wake-ups.** The event insert also calls ``pg_notify`` with the new head (delivered at
  commit). One dedicated ``LISTEN`` connection per store reads the notifications and wakes every
  local waiter through one in-process event; local writes wake them at once. NOTIFY is only a
  hint: the same connection polls the head every ``poll_interval`` seconds, and after it
  reconnects it wakes everyone so the runtime re-reads from its cursor. Idle cost is one cheap
  query per ``poll_interval`` per store, whatever the number of waiters.
* **Schema.** Versioned forward migrations run under ``pg_advisory_xact_lock`` so replicas that
  start together do not race; a schema newer than this code is refused with a clear error.

Driver errors never leak: they are mapped to :mod:`workspace_lifecycle.errors` at the boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from .. import writes
from ..errors import (
    CursorExpiredError,
    NotFoundError,
    OwnershipError,
    StoreBusyError,
    StoreClosedError,
    StoreError,
    UnsupportedBackendError,
)
from ..values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    EventKind,
    JobStatus,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
    parse_enum,
)
from .base import ChatRow, Outcome, Store

__all__ = [
    "PostgresStore",
    "SCHEMA_VERSION",
    "UnsupportedBackendError",
]  # the error re-exported for old imports

log = logging.getLogger("workspace_lifecycle.postgres")

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# Advisory lock classes (the first int4 key); the second key is a hash of the schema name, so
# deployments in other schemas of one database never wait for each other.
_MIGRATE_LOCK = 0x574C0001
_LOG_LOCK = 0x574C0002

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
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(MIGRATIONS)

_HEAD = "coalesce(greatest((SELECT max(seq) FROM events), (SELECT pruned_through FROM log_state)), 0)"

_FACTS_COLUMNS = """
    w.workspace_id, w.chat_id, w.owner, w.name, w.deleted,
    b.build_id, b.number, b.transition, b.status, b.error, b.has_agent, b.worker,
    a.build_number, a.lifecycle
"""
_FACTS_JOINS = """
    LEFT JOIN builds b ON b.workspace_id = w.workspace_id AND b.number = w.latest_build
    LEFT JOIN agents a ON a.workspace_id = w.workspace_id
"""
_FACTS_SQL = f"SELECT {_FACTS_COLUMNS}, {_HEAD} FROM workspaces w {_FACTS_JOINS} WHERE w.workspace_id = %s"

_BUILD_COLUMNS = (
    "b.build_id, b.workspace_id, b.number, b.transition, b.status, b.error, b.has_agent, b.worker"
)


def _lock_key(schema: str) -> int:
    """A stable signed 32-bit key for ``schema`` (the second key of the advisory locks)."""
    value = zlib.crc32(schema.encode())
    return value - (1 << 32) if value >= (1 << 31) else value


def _parse_build(row: Sequence[Any]) -> Build:
    """A build from ``build_id, workspace_id, number, transition, status, error, has_agent, worker``."""
    build_id = row[0]
    return Build(
        build_id=build_id,
        workspace_id=row[1],
        number=row[2],
        transition=parse_enum(Transition, row[3], table="builds", key=build_id, column="transition"),
        status=parse_enum(JobStatus, row[4], table="builds", key=build_id, column="status"),
        error=row[5],
        has_agent=row[6],
        worker=row[7],
    )


def _parse_facts(row: Sequence[Any]) -> WorkspaceFacts:
    """Facts from a row of ``_FACTS_COLUMNS`` followed by the head."""
    ws = Workspace(row[0], row[1], row[2], row[3], deleted=row[4])
    build = None
    if row[5] is not None:
        build = _parse_build((row[5], ws.workspace_id, *row[6:12]))
    agent = None
    if row[12] is not None:
        lifecycle = parse_enum(
            AgentLifecycle, row[13], table="agents", key=ws.workspace_id, column="lifecycle"
        )
        agent = Agent(ws.workspace_id, row[12], lifecycle)
    return WorkspaceFacts(workspace=ws, latest_build=build, agent=agent, seq=int(row[14]))


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


class PostgresStore(Store):
    """The store on PostgreSQL; open it with ``open_store("postgresql://user@host:port/db")``.

    Options (keyword arguments, or query parameters of the URL):

    * ``schema``: the schema that holds the tables (created if absent; default ``public``);
    * ``statement_timeout``: seconds a statement may run (or wait for a lock) before it fails
      with :class:`~workspace_lifecycle.errors.StoreBusyError` (default 30; 0 disables it);
    * ``poll_interval``: seconds between the fallback polls of the log head (default 2);
    * ``pool_max_size``: the most pooled connections (default 10), plus one listener;
    * ``pool_timeout``: seconds a call may wait for a connection, e.g. while the server
      restarts, before it fails with :class:`~workspace_lifecycle.errors.StoreError` (default 30).

    Every other query parameter goes to libpq unchanged (``sslmode``, ``application_name``, …).

    >>> store = PostgresStore.from_url("postgresql://me:secret@db.example:5432/app?schema=chat_a")
    >>> store.url, store.schema
    ('postgresql://me@db.example:5432/app?schema=chat_a', 'chat_a')
    >>> PostgresStore.from_url("postgresql://db.example/app?schema=bad-name")
    Traceback (most recent call last):
    ...
    ValueError: invalid schema name 'bad-name': use letters, digits and underscores (at most 63, not starting with a digit)
    """

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
        self.url = display_url if display_url is not None else conninfo
        self.schema = schema
        self.statement_timeout = statement_timeout or None
        self.poll_interval = poll_interval
        self._conninfo = conninfo
        self._pool_min = pool_min_size
        self._pool_max = pool_max_size
        self._pool_timeout = pool_timeout
        self._clock = clock
        self._lock_key = _lock_key(schema)
        self._channel = f"workspace_lifecycle_{schema}"[:63]
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening: anyio.Event | None = None
        self._closed = False
        self._opened = False
        self._known_head = 0
        self._changed: anyio.Event | None = None
        #: Wake-ups caused by the listener (notifications, polls, reconnects), for tests.
        self.listener_wakeups = 0
        self.listener_connects = 0
        # Test hook: awaited inside every writing transaction after its events are inserted
        # (holding the log lock), to interleave transactions in the commit-order test.
        self._before_commit: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        """A store for ``postgresql://`` (or ``postgres://``) ``url``; options as in the class."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("postgresql", "postgres"):
            raise ValueError(f"not a PostgreSQL URL: {url!r}")
        ours: dict[str, Any] = {}
        theirs: list[tuple[str, str]] = []
        names = ("schema", "statement_timeout", "poll_interval", "pool_max_size", "pool_timeout")
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in names:
                ours[key] = value
            else:
                theirs.append((key, value))
        ours.update(options)
        for key in ("statement_timeout", "poll_interval", "pool_timeout"):
            if key in ours and isinstance(ours[key], str):
                ours[key] = _seconds(key, ours[key])
        if isinstance(ours.get("pool_max_size"), str):
            try:
                ours["pool_max_size"] = int(ours["pool_max_size"])
            except ValueError:
                raise ValueError(f"pool_max_size must be an integer, not {ours['pool_max_size']!r}") from None
        conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(theirs), parts.fragment))
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            netloc = f"{userinfo.partition(':')[0]}@{hostport}"
        shown = [("schema", str(ours["schema"]))] if "schema" in ours else []
        display = urlunsplit((parts.scheme, netloc, parts.path, urlencode(shown), ""))
        return cls(conninfo, display_url=display, **ours)

    # --- opening, closing and the error boundary -----------------------------------------

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
        self._pool = AsyncConnectionPool(
            self._conninfo,
            min_size=self._pool_min,
            max_size=self._pool_max,
            open=False,
            kwargs={"autocommit": True},
            configure=self._configure,
            timeout=self._pool_timeout,
            name=f"workspace-lifecycle:{self.schema}",
        )
        try:
            try:
                await self._pool.open(wait=True, timeout=self._pool_timeout)
            except PoolTimeout as exc:
                raise StoreError(f"cannot connect to PostgreSQL at {self.url}: {exc}") from None
            await self._run(self._migrate)
            self._known_head = await self._run(self._head)
        except BaseException:
            await self._pool.close()
            self._closed = True
            raise
        self._opened = True
        self._listening = anyio.Event()
        self._listener = asyncio.get_running_loop().create_task(self._listen())
        # Let the listener subscribe before the first wait, so a cross-replica commit made just
        # after open is announced (it would be found by the fallback poll otherwise).
        with anyio.move_on_after(5):
            await self._listening.wait()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        if self._pool is not None:
            with anyio.CancelScope(shield=True):
                await self._pool.close()

    def _check(self) -> AsyncConnectionPool[Conn]:
        if self._closed or self._pool is None:
            if not self._closed:
                raise StoreError("the PostgreSQL store is not open; use it as `async with open_store(url)`")
            raise StoreClosedError("the PostgreSQL store is closed")
        return self._pool

    async def _configure(self, conn: Conn) -> None:
        timeout_ms = int(self.statement_timeout * 1000) if self.statement_timeout else 0
        await conn.execute(
            "SELECT set_config('search_path', %s, false), set_config('statement_timeout', %s, false)",
            (f'"{self.schema}"', str(timeout_ms)),
        )

    def _error(self, exc: BaseException) -> StoreError:
        """The library's error for a driver or pool exception."""
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, PoolClosed) or self._closed:
            return StoreClosedError("the PostgreSQL store is closed")
        if isinstance(exc, pg_errors.QueryCanceled):
            return StoreBusyError(
                f"a PostgreSQL statement ran past statement_timeout={self.statement_timeout}s "
                f"(waiting for a lock held by another writer, or an overloaded server): {exc}"
            )
        if isinstance(exc, pg_errors.LockNotAvailable):
            return StoreBusyError(f"a PostgreSQL lock was not available: {exc}")
        if isinstance(exc, PoolTimeout):
            return StoreError(f"no PostgreSQL connection to {self.url} available: {exc}")
        if isinstance(exc, pg_errors.UndefinedTable):
            return StoreError(f"the schema {self.schema!r} lacks a table (was it dropped?): {exc}")
        return StoreError(f"PostgreSQL error ({type(exc).__name__}): {exc}")

    async def _run(self, body: Callable[[Conn], Awaitable[T]], *, write: bool = False) -> T:
        """Run ``body`` on a pooled connection, inside a transaction if ``write``.

        The body runs shielded from cancellation: a cancelled caller lets its transaction
        finish (bounded by ``statement_timeout``) instead of leaving a half-used connection.
        A connection that died before the commit was sent is replaced and the body retried.
        """
        pool = self._check()
        attempt = 0
        while True:
            attempt += 1
            committing = False
            try:
                conn = await pool.getconn()
            except (PoolClosed, PoolTimeout, psycopg.Error) as exc:
                raise self._error(exc) from exc
            try:
                with anyio.CancelScope(shield=True):
                    try:
                        if not write:
                            return await body(conn)
                        async with conn.transaction():
                            result = await body(conn)
                            committing = True
                        return result
                    finally:
                        await pool.putconn(conn)
            except (pg_errors.QueryCanceled, pg_errors.LockNotAvailable) as exc:
                raise self._error(exc) from exc
            except (psycopg.DataError, pg_errors.ProgramLimitExceeded) as exc:
                # Bad input, not a storage fault: a NUL byte, or a value too large to index.
                raise ValueError(f"PostgreSQL cannot store this value: {exc}") from None
            except psycopg.OperationalError as exc:
                if committing:
                    raise StoreError(
                        f"the connection to PostgreSQL failed while committing; the write may or "
                        f"may not have been applied: {exc}"
                    ) from exc
                if self._closed or attempt >= 3:
                    raise self._error(exc) from exc
                log.info("PostgreSQL connection failed (%s); retrying on a fresh one", exc)
                try:
                    await pool.check()
                except (PoolClosed, psycopg.Error) as check_exc:
                    raise self._error(check_exc) from exc
            except (psycopg.Error, PoolClosed) as exc:
                raise self._error(exc) from exc

    async def _migrate(self, conn: Conn) -> None:
        """Apply the missing migrations, one replica at a time."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_MIGRATE_LOCK, self._lock_key))
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

    # --- the log and wake-ups ------------------------------------------------------------

    @staticmethod
    async def _head(conn: Conn) -> int:
        cur = await conn.execute(f"SELECT {_HEAD}")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _append(self, conn: Conn, events: Sequence[StoreEvent]) -> int:
        """Insert ``events`` in commit order and announce them; return the last seq."""
        # One statement: take the log lock (held until commit), then draw the seqs. The rows
        # are a cross join of the lock's one-row result with the VALUES, so a row (and its
        # ``nextval``) exists only once the lock is held, and rows keep the VALUES order. The
        # NOTIFY carries the new head and is delivered at commit.
        rows = ", ".join(["(%s, %s, %s, %s::integer, %s::jsonb, %s::double precision)"] * len(events))
        params: list[Any] = [_LOG_LOCK, self._lock_key]
        for event in events:
            params += [
                event.kind.value,
                event.workspace_id,
                event.chat_id,
                event.build_number,
                Jsonb(event.payload()),
                event.at,
            ]
        params.append(self._channel)
        cur = await conn.execute(
            "WITH lock AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s, %s)),"
            " ins AS (INSERT INTO events (kind, workspace_id, chat_id, build_number, payload, at)"
            f"   SELECT v.* FROM lock, (VALUES {rows}) AS v RETURNING seq)"
            " SELECT m, pg_notify(%s, m::text) FROM (SELECT max(seq) AS m FROM ins) s",
            params,
        )
        row = await cur.fetchone()
        assert row is not None
        if self._before_commit is not None:
            await self._before_commit()
        return int(row[0])

    def _event(
        self,
        kind: EventKind,
        ws: Workspace,
        build: Build | None,
        build_number: int = 0,
        **fields: Any,
    ) -> StoreEvent:
        return StoreEvent.about(kind, ws, build, seq=0, at=self._clock(), build_number=build_number, **fields)

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    def _saw(self, seq: int, *, force: bool = False) -> bool:
        """Record that the log reached ``seq``; wake waiters if it moved (or if ``force``)."""
        if seq > self._known_head:
            self._known_head = seq
            self._wake()
            return True
        if force:
            self._wake()
            return True
        return False

    async def _listen(self) -> None:
        """The LISTEN connection: notifications, a slow fallback poll, reconnects."""
        delay = 0.05
        while not self._closed:
            conn: Conn | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                await self._configure(conn)
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self.listener_connects += 1
                # After a reconnect, anything may have been missed: wake everyone to re-read.
                if self._saw(await self._head(conn), force=self.listener_connects > 1):
                    self.listener_wakeups += 1
                if self._listening is not None:
                    self._listening.set()
                delay = 0.05
                while not self._closed:
                    async for note in conn.notifies(timeout=self.poll_interval):
                        try:
                            seq = int(note.payload)
                        except ValueError:
                            seq = 0
                        if self._saw(seq, force=seq == 0):
                            self.listener_wakeups += 1
                    if self._saw(await self._head(conn)):  # the fallback poll
                        self.listener_wakeups += 1
            except (psycopg.Error, OSError) as exc:
                if not self._closed:
                    log.warning("PostgreSQL listener: %s; reconnecting in %.2fs", exc, delay)
            finally:
                if conn is not None:
                    await conn.close()
            if not self._closed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # --- chats and workspaces --------------------------------------------------------------

    async def register_chat(self, chat_id: str, owner: str) -> Chat:
        async def body(conn: Conn) -> Chat:
            cur = await conn.execute(
                "INSERT INTO chats (chat_id, owner) VALUES (%s, %s) ON CONFLICT (chat_id) DO NOTHING"
                " RETURNING owner, workspace_id",
                (chat_id, owner),
            )
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    "SELECT owner, workspace_id FROM chats WHERE chat_id = %s", (chat_id,)
                )
                row = await cur.fetchone()
                assert row is not None
            return Chat(chat_id, row[0], row[1])

        chat = await self._run(body)
        if chat.owner != owner:
            raise OwnershipError(f"chat {chat_id!r} is registered to another owner")
        return chat

    async def get_chat(self, chat_id: str) -> Chat | None:
        async def body(conn: Conn) -> Chat | None:
            cur = await conn.execute("SELECT owner, workspace_id FROM chats WHERE chat_id = %s", (chat_id,))
            row = await cur.fetchone()
            return None if row is None else Chat(chat_id, row[0], row[1])

        return await self._run(body)

    @staticmethod
    async def _facts(conn: Conn, workspace_id: str) -> WorkspaceFacts:
        cur = await conn.execute(_FACTS_SQL, (workspace_id,))
        row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no workspace {workspace_id!r}")
        return _parse_facts(row)

    async def workspace_facts(self, workspace_id: str) -> WorkspaceFacts:
        return await self._run(lambda conn: self._facts(conn, workspace_id))

    async def create_workspace(
        self, chat_id: str, name: str, *, expected_workspace_id: str | None
    ) -> Outcome:
        async def body(conn: Conn) -> Outcome:
            cur = await conn.execute(
                "SELECT owner, workspace_id FROM chats WHERE chat_id = %s FOR UPDATE", (chat_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(f"no chat {chat_id!r}")
            owner, bound = row
            if bound != expected_workspace_id:
                return Outcome(fired=False, build=None, facts=await self._facts(conn, bound))
            ws = Workspace(str(uuid.uuid4()), chat_id, owner, name)
            build = Build(str(uuid.uuid4()), ws.workspace_id, 1, Transition.START, JobStatus.PENDING)
            await conn.execute(
                "WITH w AS (INSERT INTO workspaces (workspace_id, chat_id, owner, name, latest_build)"
                "  VALUES (%(ws)s, %(chat)s, %(owner)s, %(name)s, 1)),"
                " c AS (UPDATE chats SET workspace_id = %(ws)s WHERE chat_id = %(chat)s)"
                " INSERT INTO builds (build_id, workspace_id, number, transition, status)"
                " VALUES (%(build)s, %(ws)s, 1, 'start', 'pending')",
                {
                    "ws": ws.workspace_id,
                    "chat": chat_id,
                    "owner": owner,
                    "name": name,
                    "build": build.build_id,
                },
            )
            seq = await self._append(
                conn,
                [
                    self._event(EventKind.CHAT_BOUND, ws, None),
                    self._event(EventKind.BUILD_QUEUED, ws, build, status=JobStatus.PENDING),
                ],
            )
            return Outcome(fired=True, build=build, facts=WorkspaceFacts(ws, build, None, seq))

        return self._committed(await self._run(body, write=True))

    def _committed(self, outcome: Outcome) -> Outcome:
        if outcome.fired:
            self._saw(outcome.facts.seq)
        return outcome

    async def request_build(
        self, workspace_id: str, transition: Transition, *, expected_build_number: int
    ) -> Outcome:
        async def body(conn: Conn) -> Outcome:
            cur = await conn.execute(
                "SELECT 1 FROM workspaces WHERE workspace_id = %s FOR UPDATE", (workspace_id,)
            )
            if await cur.fetchone() is None:
                raise NotFoundError(f"no workspace {workspace_id!r}")
            # Read after taking the lock, in a new snapshot: every earlier winner is visible.
            facts = await self._facts(conn, workspace_id)
            latest = facts.latest_build
            number = latest.number if latest else 0
            if (
                facts.workspace.deleted
                or number != expected_build_number
                or (latest is not None and latest.status.in_progress)
            ):
                return Outcome(fired=False, build=None, facts=facts)
            build = Build(str(uuid.uuid4()), workspace_id, number + 1, transition, JobStatus.PENDING)
            await conn.execute(
                "WITH w AS (UPDATE workspaces SET latest_build = %(n)s WHERE workspace_id = %(ws)s)"
                " INSERT INTO builds (build_id, workspace_id, number, transition, status)"
                " VALUES (%(build)s, %(ws)s, %(n)s, %(t)s, 'pending')",
                {"n": build.number, "ws": workspace_id, "build": build.build_id, "t": transition.value},
            )
            seq = await self._append(
                conn, [self._event(EventKind.BUILD_QUEUED, facts.workspace, build, status=JobStatus.PENDING)]
            )
            return Outcome(
                fired=True, build=build, facts=WorkspaceFacts(facts.workspace, build, facts.agent, seq)
            )

        return self._committed(await self._run(body, write=True))

    async def list_chats(self) -> Sequence[ChatRow]:
        async def body(conn: Conn) -> list[ChatRow]:
            cur = await conn.execute(
                f"SELECT c.chat_id, c.owner, c.workspace_id, {_FACTS_COLUMNS}, {_HEAD}"
                f" FROM chats c LEFT JOIN workspaces w ON w.workspace_id = c.workspace_id {_FACTS_JOINS}"
                " ORDER BY c.chat_id"
            )
            rows: list[ChatRow] = []
            for row in await cur.fetchall():
                chat = Chat(row[0], row[1], row[2])
                facts = _parse_facts(row[3:]) if row[3] is not None else None
                rows.append(ChatRow(chat, facts))
            return rows

        return await self._run(body)

    # --- the provisioner side ---------------------------------------------------------------

    async def claim_build(self, worker: str) -> Build | None:
        async def body(conn: Conn) -> tuple[Build, int] | None:
            cur = await conn.execute(
                "UPDATE builds b SET status = 'running', worker = %s"
                " FROM workspaces w"
                " WHERE w.workspace_id = b.workspace_id AND b.build_id = ("
                "   SELECT build_id FROM builds WHERE status = 'pending'"
                "   ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_BUILD_COLUMNS}, w.chat_id, w.owner, w.name",
                (worker,),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            build = _parse_build(row[:8])
            ws = Workspace(build.workspace_id, row[8], row[9], row[10])
            seq = await self._append(
                conn, [self._event(EventKind.BUILD_UPDATED, ws, build, status=JobStatus.RUNNING)]
            )
            return build, seq

        claimed = await self._run(body, write=True)
        if claimed is None:
            return None
        self._saw(claimed[1])
        return claimed[0]

    async def finish_build(
        self,
        build_id: str,
        status: JobStatus | str,
        error: str | None = None,
        *,
        has_agent: bool = True,
    ) -> Build:
        status = writes.parse_status(status)
        if not status.finished:
            raise ValueError(f"finish_build takes a final status, not {status.value!r}")

        async def body(conn: Conn) -> tuple[Build, int]:
            cur = await conn.execute(
                f"SELECT {_BUILD_COLUMNS}, w.chat_id, w.owner, w.name, w.deleted"
                " FROM builds b JOIN workspaces w ON w.workspace_id = b.workspace_id"
                " WHERE b.build_id = %s FOR UPDATE OF b",
                (build_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(f"no build {build_id!r}")
            build = _parse_build(row[:8])
            ws = Workspace(build.workspace_id, row[8], row[9], row[10], deleted=row[11])
            deletes = status is JobStatus.SUCCEEDED and build.transition is Transition.DELETE
            done = build.finished_as(status, error, has_agent=has_agent)
            starts_agent = done.starts_agent
            await conn.execute(
                "WITH b AS (UPDATE builds SET status = %(status)s, error = %(error)s,"
                "   has_agent = %(has_agent)s WHERE build_id = %(build)s),"
                " a AS (INSERT INTO agents (workspace_id, build_number, lifecycle)"
                "   SELECT %(ws)s, %(n)s, 'created' WHERE %(agent)s"
                "   ON CONFLICT (workspace_id) DO UPDATE"
                "   SET build_number = excluded.build_number, lifecycle = excluded.lifecycle)"
                " UPDATE workspaces SET deleted = true WHERE workspace_id = %(ws)s AND %(delete)s",
                {
                    "status": status.value,
                    "error": done.error,
                    "has_agent": done.has_agent,
                    "build": build_id,
                    "ws": ws.workspace_id,
                    "n": build.number,
                    "agent": bool(starts_agent and has_agent),
                    "delete": deletes,
                },
            )
            events = [
                self._event(
                    EventKind.BUILD_FINISHED,
                    ws,
                    done,
                    status=status,
                    error=done.error,
                    has_agent=done.has_agent,
                )
            ]
            if deletes:
                events.append(self._event(EventKind.WORKSPACE_DELETED, ws, done))
            return done, await self._append(conn, events)

        done, seq = await self._run(body, write=True)
        self._saw(seq)
        return done

    async def report_agent(self, workspace_id: str, lifecycle: AgentLifecycle | str) -> None:
        lifecycle = writes.parse_lifecycle(lifecycle)

        async def body(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE agents a SET lifecycle = %s FROM workspaces w"
                " WHERE a.workspace_id = %s AND w.workspace_id = a.workspace_id"
                " RETURNING a.build_number, w.chat_id, w.owner, w.name",
                (lifecycle.value, workspace_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFoundError(f"workspace {workspace_id!r} has no agent")
            ws = Workspace(workspace_id, row[1], row[2], row[3])
            return await self._append(
                conn, [self._event(EventKind.AGENT_UPDATED, ws, None, row[0], agent=lifecycle)]
            )

        self._saw(await self._run(body, write=True))

    # --- the event log ----------------------------------------------------------------------

    async def head(self) -> int:
        return await self._run(self._head)

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
            self._saw(events[-1].seq)
        return events

    async def wait_for_change(self, after: int) -> None:
        self._check()
        if self._known_head > after:
            return
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()
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
