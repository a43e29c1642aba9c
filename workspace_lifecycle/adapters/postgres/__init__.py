"""The PostgreSQL store: several runtime replicas on one database (psycopg 3, asyncio only).

:class:`PostgresStore` is :class:`~workspace_lifecycle.adapters.store.DriverStore` over a
:class:`~.driver.PostgresDriver`; the driver is split by concern, each module with its own
theory of operation:

* :mod:`.url`: the URL and the options, checked before anything connects;
* :mod:`.schema`: the forward migrations, applied one replica at a time;
* :mod:`.rows`: every read in SQL, and the parsing of rows;
* :mod:`.compiler`: a decided write in, one guarded statement out (pure);
* :mod:`.committer`: guards, the rows this process knows, group commit;
* :mod:`.connection`: the pool, retries, and the error boundary;
* :mod:`.listener`: LISTEN/NOTIFY as a hint, shards, interest, the fallback poll;
* :mod:`.driver`: the driver that composes them, and reads and persists a plan.

**A commit-ordered log.** ``bigserial`` ids are handed out in call order, not commit order, so
a reader following ``seq > cursor`` could pass an id whose transaction commits later. Every
writing transaction therefore takes a transaction-scoped advisory lock on the log right before
it inserts its events (after every row lock it needs) and holds it until its commit is visible:
ids are drawn in commit order, and a reader that sees ``seq = n`` has every committed event
below ``n`` in view. The lock serialises the commits of a schema, each with its fsync: group
commit is what amortises it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ...errors import UnsupportedBackendError
from ..store import DriverStore
from .channels import shard_of
from .committer import BATCHES_IN_FLIGHT as _BATCHES_IN_FLIGHT  # noqa: F401 - for tests
from .driver import PostgresDriver
from .guards import Seen as _Seen  # noqa: F401 - for benchmarks
from .schema import MIGRATIONS, SCHEMA_VERSION
from .url import DRIVERS, Options, parse_url

__all__ = [
    "DRIVERS",
    "MIGRATIONS",
    "PostgresDriver",
    "PostgresStore",
    "SCHEMA_VERSION",
    "UnsupportedBackendError",  # re-exported for old imports
    "shard_of",
]

#: Attributes of the store kept by a component of its driver: name -> (component, attribute).
#: The options and counters tests and benchmarks read, and the names the single class of
#: earlier versions had for them (``_known``, ``_channel``, ``_statement``, ...).
_FORWARDED = {
    "schema": ("options", "schema"),
    "statement_timeout": ("options", "statement_timeout"),
    "client_timeout": ("options", "client_timeout"),
    "poll_interval": ("options", "poll_interval"),
    "pool_mode": ("options", "pool_mode"),
    "listens": ("options", "listens"),
    "shards": ("options", "shards"),
    "notify_after_commit": ("options", "notify_after_commit"),
    "_conninfo": ("options", "conninfo"),
    "_pool_conninfo": ("options", "pool_conninfo"),
    "_listen_conninfo": ("options", "listen_conninfo"),
    "batch_writes": ("committer", "batch_writes"),
    "batches": ("committer", "batches"),
    "batched_writes": ("committer", "batched_writes"),
    "_known": ("committer", "known"),
    "_statement": ("committer", "statement"),
    "stray_notifications": ("listener", "stray_notifications"),
    "listener_wakeups": ("listener", "listener_wakeups"),
    "listener_connects": ("listener", "listener_connects"),
    "listener_pid": ("listener", "listener_pid"),
    "polls": ("listener", "polls"),
    "_channel": ("channel_names", "main"),
    "_shard_channels": ("channel_names", "shards"),
    "_builds_channel": ("channel_names", "builds"),
    "_shard_channel": ("channel_names", "shard"),
}


class PostgresStore(DriverStore):
    """The store on PostgreSQL; open it with ``open_store("postgresql://user@host:port/db")``.

    URLs as libpq and SQLAlchemy users write them: ``postgresql://`` or ``postgres://``, with an
    optional driver suffix naming psycopg (``postgresql+psycopg://``, ``postgresql+psycopg2://``),
    and libpq's Unix-socket forms (``postgresql:///db?host=/var/run/postgresql`` or
    ``postgresql://user@%2Fvar%2Frun%2Fpostgresql/db``).

    Options (keyword arguments, or query parameters of the URL):

    * ``schema``: the schema that holds the tables (created if absent; default ``public``);
    * ``statement_timeout``: seconds a statement may run (or wait for a lock) before it fails
      with :class:`~workspace_lifecycle.errors.StoreBusyError` (default 30; 0 disables it);
    * ``client_timeout``: seconds a store call may wait on its connection before the client
      gives up on it, cancels its statement and discards the connection (a frozen or
      unreachable server, which cannot enforce ``statement_timeout``), failing with
      :class:`~workspace_lifecycle.errors.StoreUnavailableError` (default
      ``statement_timeout`` + 5, or 60 without one). A caller's own cancel scope bounds a call
      sooner: a call never outlives its caller's deadline;
    * ``poll_interval``: seconds between the fallback reads of the log head (default 2);
    * ``pool_max_size``: the most pooled connections (default 10), plus one listener;
    * ``pool_timeout``: seconds a call may wait for a connection, e.g. while the server
      restarts, before it fails with :class:`~workspace_lifecycle.errors.StoreUnavailableError`
      (default 30);
    * ``migrate`` (keyword only): create the schema, or apply its missing migrations, on open
      (default on); off, a schema that is missing raises
      :class:`~workspace_lifecycle.errors.SchemaMissingError` and one at another version
      :class:`~workspace_lifecycle.errors.StoreError`, and nothing is created (the command
      line's read-only commands open so);
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
    ``connect_timeout`` — 5 seconds unless given, TCP ``keepalives*`` and ``tcp_user_timeout``
    — see docs/stores.md, …); one libpq does not know is a ``ValueError``.

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

    driver: PostgresDriver

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        statement_timeout: float | None = 30.0,
        client_timeout: float | None = None,
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
        migrate: bool = True,
    ) -> None:
        options = Options(
            conninfo,
            schema=schema,
            statement_timeout=statement_timeout,
            client_timeout=client_timeout,
            poll_interval=poll_interval,
            pool_min_size=pool_min_size,
            pool_max_size=pool_max_size,
            pool_timeout=pool_timeout,
            display_url=display_url,
            batch_writes=batch_writes,
            notify_after_commit=notify_after_commit,
            shards=shards,
            pool_mode=pool_mode,
            listen_url=listen_url,
            migrate=migrate,
        )
        super().__init__(PostgresDriver(options, clock=clock))

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStore:
        """A store for a ``postgresql://`` (or ``postgres://``) ``url``; options as in the class."""
        conninfo, ours = parse_url(url, options)
        return cls(conninfo, **ours)

    def __getattr__(self, name: str) -> Any:
        """An attribute of :data:`_FORWARDED`, read from the driver's component that keeps it.
        Python calls this only when the normal lookup fails: the hot paths never come here."""
        where = _FORWARDED.get(name)
        driver = self.__dict__.get("driver")
        if where is None or driver is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        component, attribute = where
        return getattr(getattr(driver, component), attribute)

    @property
    def round_trips(self) -> int:
        """Bodies this store ran on its pool, each attempt counted: a guarded write's read and
        its statement count one, a transaction one, the listener's reads none (the count of
        earlier versions; :attr:`wire_round_trips` counts the wire)."""
        return self.driver.connection.round_trips

    @property
    def wire_round_trips(self) -> int:
        """Round trips on the wire of this store's pool: each statement outside a pipeline,
        ``BEGIN`` and ``COMMIT`` one each, a pipeline one; the listener's reads none (see
        :attr:`listener_round_trips`)."""
        return self.driver.connection.wire_round_trips

    @property
    def round_trips_by_kind(self) -> dict[str, tuple[int, int]]:
        """By kind of call (a store method's name): its calls and their wire round trips."""
        connection = self.driver.connection
        return {
            kind: (calls, connection.wire_by_kind[kind]) for kind, calls in connection.calls_by_kind.items()
        }

    @property
    def listener_round_trips(self) -> int:
        """Round trips of the listener connection (its head reads, LISTENs), not in the pool's."""
        return self.driver.listener.round_trips

    @property
    def notifications_received(self) -> int:
        """Every notification the listener read, before any was found stray or stale: what the
        wake-ups of other processes' writes cost this one (with ``shards``, only the channels
        of its interest)."""
        return self.driver.listener.notifications_received

    @property
    def channels(self) -> frozenset[str]:
        """The channels the listener connection LISTENs to now (it catches up with a change of
        interest within a moment: see :meth:`take_interest`)."""
        return frozenset(self.driver.listener.listening)

    @property
    def listen_timeout(self) -> float:
        """Seconds the listener's head read may take before its connection counts as hung."""
        return self.driver.options.listen_timeout
