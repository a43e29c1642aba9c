"""The dialect: a PostgreSQL URL and the store's options, checked before anything connects.

:func:`parse_url` splits a URL into the libpq connection string and the store's own query
parameters; :class:`Options` checks every option once and derives what the components need
(the pool's and the listener's connection strings, whether to LISTEN). Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["DRIVERS", "Options", "parse_url"]

#: Driver suffixes accepted after the scheme, as SQLAlchemy users write them
#: (``postgresql+psycopg://``); each names a psycopg driver, and psycopg 3 serves them all.
DRIVERS = ("psycopg", "psycopg2")

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: The most notification shards (each is a channel; interest in every workspace LISTENs to all).
_MAX_SHARDS = 4096

#: Seconds the first connection of ``open`` may take unless the URL sets ``connect_timeout``.
_CONNECT_TIMEOUT = 5
#: TCP keepalives of every connection (the pool's and the LISTEN one) unless the URL sets them:
#: a dead peer (a host that vanished, a network black hole) is noticed in about 10 + 3 * 5
#: seconds even while no query is running on the connection, and data the peer does not
#: acknowledge within ``tcp_user_timeout`` (milliseconds) ends the connection. Neither helps
#: against a live host whose backend is frozen (SIGSTOP, a paused VM whose kernel still
#: answers): the client-side deadline (:attr:`Options.client_timeout`) is what bounds that.
_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25_000,
}
#: What every connection gets unless its URL says otherwise.
_CONNECTION_DEFAULTS = {"connect_timeout": _CONNECT_TIMEOUT, **_KEEPALIVES}
#: Seconds a store call may wait on the server beyond ``statement_timeout`` before the client
#: gives up on its connection (a server that enforces the timeout answers well within it).
_CLIENT_MARGIN = 5.0
#: The client-side deadline of a store call when ``statement_timeout`` is off.
_CLIENT_TIMEOUT_WITHOUT_STATEMENT_TIMEOUT = 60.0

#: The store's own query parameters of a URL; every other one goes to libpq.
_URL_OPTIONS = (
    "schema",
    "statement_timeout",
    "client_timeout",
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
NO_LISTEN = "none"


def cause(exc: BaseException) -> str:
    """libpq's message as one line, without the prefixes that repeat what the caller knows."""
    text = str(exc)
    for prefix in ("connection failed: ", "connection is bad: "):
        text = text.removeprefix(prefix)
    text = re.sub(r'connection to server (at|on) "[^"]*"(, port \d+)? failed: ', "", text)
    text = re.sub(r"(FATAL|ERROR):\s+", "", text)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def check_shards(value: object) -> int:
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


def _client_timeout(given: float | None, statement_timeout: float | None) -> float:
    """The client-side bound of a store call: ``given``, else the statement timeout and a
    margin, else a fixed bound."""
    if given is not None and not 0 < given < float("inf"):
        raise ValueError(f"client_timeout must be a positive number of seconds, not {given!r}")
    if given:
        return given
    return (
        statement_timeout + _CLIENT_MARGIN if statement_timeout else _CLIENT_TIMEOUT_WITHOUT_STATEMENT_TIMEOUT
    )


def _with_defaults(conninfo: str, defaults: dict[str, Any]) -> str:
    """``conninfo`` with each of ``defaults`` added unless it sets that parameter itself."""
    try:
        given = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"malformed PostgreSQL URL or connection string: {cause(exc)}") from None
    return make_conninfo(conninfo, **{k: v for k, v in defaults.items() if k not in given})


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


def parse_url(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The libpq connection string of ``url`` and the store's options: the URL's query
    parameters (as numbers where they are), then ``options``, with the URL to display."""
    ours, conninfo = _split_url(url, _URL_OPTIONS)
    ours.update(options)
    for key in ("statement_timeout", "client_timeout", "poll_interval", "pool_timeout"):
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
        shown.append(("listen_url", listen_url if listen_url == NO_LISTEN else _display_url(listen_url)))
    ours["display_url"] = _display_url(url, shown)
    return conninfo, ours


def _check_pool_mode(pool_mode: str | None) -> None:
    if pool_mode == "statement":
        raise ValueError(
            "pool_mode='statement' cannot work: the store's writes need transactions of several "
            "statements; give the store a PgBouncer database in transaction pooling mode"
        )
    if pool_mode is not None and pool_mode not in _POOL_MODES:
        raise ValueError(
            f"pool_mode must be 'session' or 'transaction' (PgBouncer's pool_mode), not {pool_mode!r}"
        )


class Options:
    """The store's options, checked (see :class:`~workspace_lifecycle.adapters.postgres.PostgresStore`
    for what each means), and what follows from them.

    >>> Options("postgresql://h/db", schema="a").listen_timeout
    4.0
    >>> Options("postgresql://h/db", statement_timeout=10).client_timeout
    15.0
    """

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
        display_url: str | None = None,
        batch_writes: bool = True,
        notify_after_commit: bool = False,
        shards: int = 0,
        pool_mode: str | None = None,
        listen_url: str | None = None,
        migrate: bool = True,
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
        shards = check_shards(shards)
        if shards and notify_after_commit:
            raise ValueError("shards and notify_after_commit cannot be combined: choose one")
        pool_mode = pool_mode or None
        _check_pool_mode(pool_mode)
        listen_url = listen_url or None
        if pool_mode == "transaction" and listen_url is None:
            raise ValueError(
                "pool_mode='transaction' needs listen_url: a URL that reaches PostgreSQL directly, "
                "for LISTEN (which PgBouncer's transaction pooling cannot carry), or "
                f"listen_url={NO_LISTEN!r} to poll every poll_interval instead"
            )
        self.url = display_url if display_url is not None else conninfo
        #: How the URL reaches PostgreSQL: ``None`` (directly), ``"session"`` or ``"transaction"``
        #: (through PgBouncer, or another pooler, in that pooling mode).
        self.pool_mode = pool_mode
        #: Whether a LISTEN connection wakes waiters (else only the poll does, see ``listen_url``).
        self.listens = listen_url != NO_LISTEN
        self.listen_elsewhere = listen_url not in (None, NO_LISTEN)  # a listen_url of its own
        self.schema = schema
        #: Create or upgrade the schema on open; else refuse one that is missing or not current.
        self.migrate = bool(migrate)
        self.statement_timeout = statement_timeout or None
        #: Seconds a store call may wait on its connection, whatever the caller's own timeout:
        #: past it the connection is cancelled and discarded (see :mod:`.connection`).
        self.client_timeout = _client_timeout(client_timeout, self.statement_timeout)
        self.poll_interval = poll_interval
        self.conninfo = conninfo
        self.pool_conninfo = _with_defaults(conninfo, _CONNECTION_DEFAULTS)
        listen_conninfo = conninfo if listen_url in (None, NO_LISTEN) else _listen_conninfo(listen_url)
        self.listen_conninfo = _with_defaults(listen_conninfo, _CONNECTION_DEFAULTS)
        self.pool_min_size = pool_min_size
        self.pool_max_size = pool_max_size
        self.pool_timeout = pool_timeout
        self.batch_writes = batch_writes
        self.notify_after_commit = notify_after_commit
        self.shards = shards

    @property
    def listen_timeout(self) -> float:
        """Seconds the listener's head read may take before its connection counts as hung."""
        return min(max(2 * self.poll_interval, 1.0), 10.0)

    @property
    def statement_timeout_ms(self) -> int:
        """``statement_timeout`` in milliseconds (0: none)."""
        return int(self.statement_timeout * 1000) if self.statement_timeout else 0
