"""The connection: the pool, one try of a body on it (with its retry on a connection that died,
and its shield from cancellation), the server-settings checks, and the error boundary.

* **Connections.** A psycopg-pool ``AsyncConnectionPool`` of autocommit connections, each with
  ``search_path`` set to the store's schema and an optional ``statement_timeout``. A statement
  that fails because its connection died (a restarted server, ``pg_terminate_backend``) is
  retried on a fresh connection, unless the failure came while committing (then the outcome is
  unknown and the caller gets a :class:`~workspace_lifecycle.errors.TransientStoreError` that
  says so).
* **Behind PgBouncer** (``pool_mode="transaction"``): no prepared statements and no session
  state; the server's ``search_path`` and ``statement_timeout`` are checked at open instead.
  A store that meets a pooler it was not told of refuses to open before it sets anything.

Driver errors never leak: :meth:`Connection.boundary` maps them to
:mod:`workspace_lifecycle.errors` (or ``ValueError`` for a value PostgreSQL cannot store), the
one place that does, as httpcore's ``map_exceptions``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import attrs
import psycopg
from anyio.lowlevel import checkpoint
from psycopg import errors as pg_errors
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from ...backoff import Backoff
from ...errors import (
    StoreBusyError,
    StoreClosedError,
    StoreError,
    StoreUnavailableError,
    TransientStoreError,
    WorkspaceLifecycleError,
)
from .schema import prepare
from .url import NO_LISTEN, Options, cause

__all__ = [
    "DRIVER_ERRORS",
    "Attempt",
    "Conn",
    "Connection",
    "CountedConnection",
    "connection_lost",
    "idle_and_alive",
    "wire_round_trips",
]

log = logging.getLogger("workspace_lifecycle.postgres")

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

#: What the error boundary translates; everything else passes through untouched.
DRIVER_ERRORS = (psycopg.Error, PoolClosed, PoolTimeout, UnicodeEncodeError, ConnectionError)
#: Seconds a call whose caller's deadline passed may still take to finish the statement it
#: sent (its outcome then known, its connection kept) before it is interrupted: a healthy
#: server answers well within it, a frozen one is given up on.
CANCEL_GRACE = 0.25
#: Seconds a call keeps retrying a connection that died before its commit (a restarting
#: server, PgBouncer's server connection gone with it), pausing by :data:`_RECONNECT_BACKOFF`:
#: a short restart is ridden out, not reported to the caller. Its own deadline bounds it sooner.
RESTART_WINDOW = 10.0
_RECONNECT_BACKOFF = Backoff(first=0.05, factor=2, cap=0.5)
#: Words of a connection refusal that a retry may get past (the server is starting, full, ...).
_TRANSIENT_REFUSALS = ("starting up", "shutting down", "recovery mode", "too many clients", "slots")


class CountedConnection(psycopg.AsyncConnection[TupleRow]):
    """A psycopg connection that counts its round trips on the wire (for benchmarks and the
    tests that pin them): a statement outside a pipeline is one, ``BEGIN`` and ``COMMIT`` one
    each, a pipeline one for everything queued in it (and one more for each commit inside it,
    which syncs). Counting is an integer add per statement; nothing else changes."""

    wire = 0  # round trips so far (an instance attribute from the first one)

    async def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool = False
    ) -> Any:
        if self._pipeline is None:
            self.wire += 1
        return await super().execute(query, params, prepare=prepare, binary=binary)

    @contextlib.asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[Any]:
        # BEGIN and COMMIT (or ROLLBACK): queued in a pipeline, whose commit syncs once.
        self.wire += 2 if self._pipeline is None else 1
        async with super().transaction(savepoint_name, force_rollback) as tx:
            yield tx

    @contextlib.asynccontextmanager
    async def pipeline(self) -> AsyncIterator[Any]:
        outermost = self._pipeline is None
        async with super().pipeline() as pipeline:
            yield pipeline
        if outermost:
            self.wire += 1


def wire_round_trips(conn: Conn) -> int:
    """The round trips ``conn`` made so far (0 for a connection that does not count them)."""
    return conn.wire if isinstance(conn, CountedConnection) else 0


@attrs.define
class Attempt:
    """How far one try of :meth:`Connection.try_` got, for the error boundary."""

    connected: bool = False  # it holds a pooled connection
    committing: bool = False  # the body is done: a failure now leaves the outcome unknown
    retry: bool = False  # set by the boundary: the connection died before the commit


def connection_lost(exc: BaseException) -> bool:
    """A connection that died under a statement (not a timeout, not a refusal): worth a retry."""
    return isinstance(exc, (psycopg.OperationalError, ConnectionError)) and not isinstance(
        exc, (pg_errors.QueryCanceled, pg_errors.LockNotAvailable, pg_errors.ProgramLimitExceeded)
    )


#: PgBouncer's words for a statement it never sent to a server (it had no server connection to
#: give): safe to retry even while committing.
_NEVER_SENT = ("server_login_retry", "pgbouncer cannot connect to server", "no server connection")


def never_sent(exc: BaseException) -> bool:
    """Whether a pooler refused ``exc``'s statement before any server saw it."""
    return isinstance(exc, psycopg.OperationalError) and any(words in str(exc) for words in _NEVER_SENT)


def idle_and_alive(conn: Conn) -> bool:
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


def map_error(
    exc: BaseException, options: Options, *, closed: bool, connecting: bool, committing: bool
) -> Exception:
    """The library's error for a driver's ``exc`` (or a ``ValueError`` for a value PostgreSQL
    cannot store)."""
    if isinstance(exc, UnicodeEncodeError):
        return ValueError(
            f"PostgreSQL cannot store this text: it is not valid UTF-8 ({exc.reason}, "
            f"e.g. a lone surrogate, at position {exc.start})"
        )
    if isinstance(exc, (psycopg.DataError, pg_errors.ProgramLimitExceeded)):
        # A NUL byte, a value too large to index, ...: bad input, not a storage fault.
        return ValueError(f"PostgreSQL cannot store this value: {cause(exc)}")
    if isinstance(exc, PoolClosed) or closed:
        return StoreClosedError("the PostgreSQL store is closed")
    if isinstance(exc, pg_errors.QueryCanceled):
        limit = f"={options.statement_timeout}s" if options.statement_timeout else " (the server's)"
        return StoreBusyError(
            f"a PostgreSQL statement ran past statement_timeout{limit} "
            f"(waiting for a lock held by another writer, or an overloaded server): {cause(exc)}"
        )
    if isinstance(exc, pg_errors.LockNotAvailable):
        return StoreBusyError(f"a PostgreSQL lock was not available: {cause(exc)}")
    if connecting:
        return _refusal(exc, options)
    if isinstance(exc, PoolTimeout):
        return StoreUnavailableError(
            f"no connection to PostgreSQL at {options.url} within pool_timeout={options.pool_timeout}s "
            f"(is the server up?): {cause(exc)}"
        )
    if isinstance(exc, (psycopg.OperationalError, ConnectionError)):
        if committing:
            return TransientStoreError(
                f"the connection to PostgreSQL failed while committing; the write may or may "
                f"not have been applied: {cause(exc)}"
            )
        return StoreUnavailableError(f"the connection to PostgreSQL at {options.url} failed: {cause(exc)}")
    if isinstance(exc, pg_errors.UndefinedTable):
        why = (
            "was it dropped, or does every server connection of PgBouncer get its search_path?"
            if options.pool_mode == "transaction"
            else "was it dropped?"
        )
        return StoreError(f"the schema {options.schema!r} lacks a table ({why}): {cause(exc)}")
    return StoreError(f"PostgreSQL error ({type(exc).__name__}): {cause(exc)}")


def _refusal(exc: BaseException, options: Options) -> Exception:
    """An error while connecting: the cause is all the caller needs."""
    reason = cause(exc)
    text = f"cannot connect to PostgreSQL at {options.url}: {reason}"
    refused_for_good = (
        "FATAL:" in str(exc) or str(exc).startswith("connection is bad: invalid")
    ) and not any(word in reason for word in _TRANSIENT_REFUSALS)
    if isinstance(exc, psycopg.OperationalError) and refused_for_good:
        return StoreError(text)  # no such database or role, bad password, bad parameter
    if isinstance(exc, (psycopg.OperationalError, PoolTimeout, ConnectionError)):
        return StoreUnavailableError(text)
    return StoreError(text)


class Connection:
    """The pool of one store, and every way a body runs on it."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.pool: AsyncConnectionPool[Conn] | None = None
        self.closed = False
        #: Bodies run on the pool, each attempt counted (a guarded write's read and statement
        #: count one): what ``round_trips`` counted before wire round trips were (for benchmarks).
        self.round_trips = 0
        #: Round trips on the wire of the pool's connections (see :class:`CountedConnection`),
        #: in total and by the kind of call (a store method's name), and the calls of each kind.
        self.wire_round_trips = 0
        self.wire_by_kind: Counter[str] = Counter()
        self.calls_by_kind: Counter[str] = Counter()
        self._database: str | None = None  # the store's database, once read (by migrate_alone)

    def check(self) -> AsyncConnectionPool[Conn]:
        if self.closed:
            raise StoreClosedError("the PostgreSQL store is closed")
        if self.pool is None:
            raise StoreError("the PostgreSQL store is not open; use it as `async with open_store(url)`")
        return self.pool

    # --- the error boundary ------------------------------------------------------------------

    @contextlib.contextmanager
    def boundary(self, attempt: Attempt | None = None, *, connecting: bool = False) -> Iterator[None]:
        """The one place where driver exceptions become the library's (httpcore's
        ``map_exceptions``). ``attempt`` learns whether a retry is safe; ``connecting`` says the
        error came while connecting, when the cause is all the caller needs."""
        try:
            yield
        except WorkspaceLifecycleError:
            raise  # already ours (some are OSErrors, which the driver tuple would catch)
        except DRIVER_ERRORS as exc:
            committing = attempt is not None and attempt.committing and not never_sent(exc)
            if attempt is not None:
                attempt.retry = attempt.connected and not committing and connection_lost(exc)
            mapped = map_error(
                exc, self.options, closed=self.closed, connecting=connecting, committing=committing
            )
            if isinstance(mapped, WorkspaceLifecycleError):
                raise mapped from exc
            raise mapped from None  # bad input: the driver's exception adds nothing

    # --- running bodies ----------------------------------------------------------------------

    async def run(self, body: Callable[[Conn], Awaitable[T]], *, write: bool = False, kind: str = "") -> T:
        """Run ``body`` on a pooled connection, inside a transaction if ``write``.

        The body runs shielded from a cancellation, but not past a deadline: a cancelled
        caller lets its transaction finish instead of leaving a half-used connection, and the
        caller's effective deadline (with :data:`CANCEL_GRACE`), or the client's own
        (``client_timeout``), whichever comes first, still ends it (see :meth:`try_`).
        A connection that died before the commit was sent is replaced and the body retried.
        """
        return await self.try_(lambda conn, attempt: body(conn), transaction=write, kind=kind)

    async def try_(
        self, body: Callable[[Conn, Attempt], Awaitable[T]], *, transaction: bool = False, kind: str = ""
    ) -> T:
        """:meth:`run` for a body that says itself when its commit begins: an autocommit body
        sets ``attempt.committing`` before the statement that commits. ``kind`` names the call
        whose round trips it counts.

        **The deadline.** A body that has not finished :data:`CANCEL_GRACE` after the caller's
        effective deadline (``anyio.current_effective_deadline()``, read before the shield), or
        by ``client_timeout``, is interrupted: psycopg sends the server a cancel request, and the
        connection is closed and leaves the pool, whatever state it was in. Nothing is half
        written: a write is one statement or one transaction, which the server either commits
        whole or rolls back when the connection goes. Then the caller's own cancellation takes
        over; a call stopped by ``client_timeout`` alone raises
        :class:`~workspace_lifecycle.errors.StoreUnavailableError` (or
        :class:`~workspace_lifecycle.errors.TransientStoreError` if the commit may have landed).
        """
        pool = self.check()
        self.calls_by_kind[kind] += 1
        give_up = anyio.current_time() + RESTART_WINDOW
        pauses = _RECONNECT_BACKOFF.delays()
        while True:
            attempt = Attempt()
            self.round_trips += 1
            try:
                with self.boundary(attempt):
                    conn = await pool.getconn()
                    attempt.connected = True
                    return await self._bounded(pool, conn, body, attempt, transaction=transaction, kind=kind)
            except StoreUnavailableError as exc:
                if not attempt.retry or self.closed or anyio.current_time() >= give_up:
                    raise
                log.info("%s; retrying on a fresh connection", exc)
            # The pool's idle connections died with this one: replace them (a server still
            # down fails the check: the next try waits for the pool, which reconnects).
            with contextlib.suppress(StoreUnavailableError), self.boundary():
                await pool.check()
            await anyio.sleep(next(pauses))

    async def _bounded(
        self,
        pool: AsyncConnectionPool[Conn],
        conn: Conn,
        body: Callable[[Conn, Attempt], Awaitable[T]],
        attempt: Attempt,
        *,
        transaction: bool,
        kind: str,
    ) -> T:
        """One try of ``body`` on ``conn``, shielded up to the deadline (see :meth:`try_`);
        ``conn`` goes back to the pool, or is discarded if the deadline interrupted it."""
        client_deadline = anyio.current_time() + self.options.client_timeout
        caller_deadline = anyio.current_effective_deadline()
        if caller_deadline == -math.inf:  # cancelled already: nothing begun, nothing to finish
            with anyio.CancelScope(shield=True):
                await pool.putconn(conn)
            await checkpoint()
        wire = wire_round_trips(conn)
        deadline = min(caller_deadline + CANCEL_GRACE, client_deadline)
        with anyio.CancelScope(shield=True, deadline=deadline) as scope:
            try:
                if not transaction:
                    return await body(conn, attempt)
                async with conn.transaction():
                    result = await body(conn, attempt)
                    attempt.committing = True
                return result
            finally:
                wire = wire_round_trips(conn) - wire
                self.wire_round_trips += wire
                self.wire_by_kind[kind] += wire
                with anyio.CancelScope(shield=True):
                    if scope.cancel_called:
                        # Interrupted mid-statement: its state is unknown, the pool must not
                        # hand it out again (psycopg already sent the server a cancel request).
                        await conn.close()
                    await pool.putconn(conn)
        # The deadline passed (the scope swallowed its own cancellation): the caller's own
        # scope, if its deadline it was, has passed too and cancels at this checkpoint.
        await checkpoint()
        gave_up = (
            f"PostgreSQL at {self.options.url} did not answer within client_timeout="
            f"{self.options.client_timeout:g}s (a frozen or unreachable server?); the connection "
            "was discarded"
        )
        if attempt.committing:
            raise TransientStoreError(f"{gave_up}; the write may or may not have been applied")
        raise StoreUnavailableError(gave_up)

    # --- opening and closing -----------------------------------------------------------------

    def pool_kwargs(self) -> dict[str, Any]:
        """Connection arguments of the pool (and of the connection that migrates without a
        listener): behind transaction pooling no server-side prepared statement either, since
        the next statement may run on another server connection (PgBouncer < 1.21)."""
        if self.options.pool_mode == "transaction":
            return {"autocommit": True, "prepare_threshold": None}
        return {"autocommit": True}

    async def open_pool(self) -> None:
        """Open the pool (its first connection fails fast and clearly)."""
        options = self.options
        self.pool = AsyncConnectionPool(
            options.pool_conninfo,
            min_size=options.pool_min_size,
            max_size=options.pool_max_size,
            open=False,
            kwargs=self.pool_kwargs(),
            # Behind transaction pooling a session setting would stay on whichever server
            # connection ran it: the settings are the server's, checked once below.
            configure=None if options.pool_mode == "transaction" else self.configure,
            timeout=options.pool_timeout,
            name=f"workspace-lifecycle:{options.schema}",
            connection_class=CountedConnection,
        )
        with self.boundary(connecting=True):
            await self.pool.open(wait=True, timeout=options.pool_timeout)
        if options.pool_mode == "transaction":
            await self._check_server_settings(self.pool)

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()

    async def configure(self, conn: Conn) -> None:
        """A new connection's session settings; one that reaches the server through a pooler
        (its backend pid is not the one the connection was told) is refused unless
        ``pool_mode`` says the pooler keeps sessions, and so is a listener in another database
        than the store's."""
        options = self.options
        # One round trip, and nothing set on a server connection that a pooler would share.
        cur = await conn.execute(
            "SELECT set_config('search_path', %s, false), set_config('statement_timeout', %s, false),"
            " current_database() WHERE pg_backend_pid() = %s OR %s",
            (
                f'"{options.schema}"',
                str(options.statement_timeout_ms),
                conn.info.backend_pid,
                options.pool_mode == "session",
            ),
        )
        row = await cur.fetchone()
        if row is not None and self._database is not None and row[2] != self._database:
            # Only a listen_url of its own can: a NOTIFY never crosses databases.
            raise StoreError(
                f"listen_url reaches database {row[2]!r}, but the store's URL reaches "
                f"{self._database!r}: notifications reach only listeners of the same database"
            )
        if row is None:
            if options.pool_mode == "transaction":
                raise StoreError(
                    f"listen_url must reach PostgreSQL directly, not through a connection pooler "
                    f"such as PgBouncer: its transaction pooling cannot carry LISTEN (or use "
                    f"listen_url={NO_LISTEN!r} to poll)"
                )
            raise StoreError(
                f"{options.url} reaches PostgreSQL through a connection pooler such as PgBouncer (the "
                "server's process id is not the one the connection was given); say how it pools: "
                "pool_mode=transaction with listen_url=<a direct URL, or none> for transaction "
                "pooling, pool_mode=session for session pooling"
            )

    async def migrate_alone(self) -> None:
        """Open without a listener on the store's URL: one connection of the pool's URL
        migrates, and closes."""
        with self.boundary(connecting=True):
            conn = await psycopg.AsyncConnection.connect(self.options.pool_conninfo, **self.pool_kwargs())
        try:
            with self.boundary():
                if self.options.pool_mode != "transaction":
                    await self.configure(conn)
                await prepare(conn, self.options.schema, migrating=self.options.migrate, url=self.options.url)
                cur = await conn.execute("SELECT current_database()")
                row = await cur.fetchone()
                self._database = None if row is None else str(row[0])
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()

    async def _check_server_settings(self, pool: AsyncConnectionPool[Conn]) -> None:
        """Behind transaction pooling the store sets no session state: check that the server's
        (PgBouncer's ``connect_query``, the role's or the database's settings) are the store's."""
        with self.boundary():
            async with pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT current_schema(),"
                    " (SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout')"
                )
                row = await cur.fetchone()
        assert row is not None
        options = self.options
        where = (
            "for every server connection PgBouncer opens: connect_query in its [databases] entry, "
            "or ALTER ROLE ... SET"
        )
        if row[0] != options.schema:
            raise StoreError(
                f"behind PgBouncer's transaction pooling (pool_mode=transaction) the store cannot "
                f"set search_path, and the server's does not lead to schema {options.schema!r} "
                f"(current_schema() is {row[0]!r}): set search_path to {options.schema} {where}"
            )
        timeout_ms = options.statement_timeout_ms or None
        if timeout_ms is not None and int(row[1]) != timeout_ms:
            raise StoreError(
                f"behind PgBouncer's transaction pooling (pool_mode=transaction) the store cannot "
                f"set statement_timeout={options.statement_timeout}s, and the server's is {row[1]} ms: "
                f"set statement_timeout to {timeout_ms} {where}, or pass statement_timeout=0 to "
                "keep the server's"
            )
