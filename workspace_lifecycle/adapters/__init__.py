"""Storage adapters and :func:`open_store`, which picks one from a URL.

Accepted URLs (SQLAlchemy's habit): ``memory://``, ``sqlite:///relative.db``,
``sqlite:////absolute/path.db``, ``postgresql://user@host:port/db`` (optionally
``?schema=name``; also ``postgres://``, a psycopg driver suffix as in
``postgresql+psycopg://`` or ``postgresql+psycopg2://``, and libpq's Unix-socket forms
``postgresql:///db?host=/var/run/postgresql`` and ``postgresql://user@%2Fvar%2Frun%2Fpostgresql/db``).
Drivers are imported only when their scheme is used.
"""

from __future__ import annotations

from .base import ChatRow, Outcome, Store
from .memory import MemoryStore

__all__ = ["ChatRow", "MemoryStore", "Outcome", "Store", "open_store"]

ACCEPTED = (
    "memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, postgresql://user@host:port/dbname"
    " (or postgresql+psycopg://..., postgresql:///dbname?host=/socket/dir)"
)


#: What the ``postgres`` extra installs (a missing one is named with the extra to install).
_POSTGRES_MODULES = ("psycopg", "psycopg_pool", "psycopg_binary")


def open_store(url: str, **options: object) -> Store:
    """The store for ``url``; use it as ``async with open_store(url) as store``.

    A ``postgresql://`` URL without the ``postgres`` extra installed raises
    ``ModuleNotFoundError`` naming it: ``pip install 'workspace-lifecycle[postgres]'``.

    >>> open_store("memory://").url
    'memory://'
    >>> open_store("mysql://x")
    Traceback (most recent call last):
    ...
    ValueError: unsupported store URL 'mysql://x'; accepted forms: memory://, sqlite:///relative/path.db, sqlite:////absolute/path.db, postgresql://user@host:port/dbname (or postgresql+psycopg://..., postgresql:///dbname?host=/socket/dir)
    """
    if not isinstance(url, str):
        raise ValueError(
            f"a store URL must be a string, not {type(url).__name__}; accepted forms: {ACCEPTED}"
        )
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"malformed store URL {url!r}; accepted forms: {ACCEPTED}")
    if scheme == "memory":
        if rest not in ("", "/"):
            raise ValueError(
                f"malformed store URL {url!r}: memory:// takes no path; accepted forms: {ACCEPTED}"
            )
        return MemoryStore(**options)  # type: ignore[arg-type]
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url, **options)
    if scheme.partition("+")[0] in ("postgresql", "postgres"):  # +psycopg, +psycopg2: from_url checks
        try:
            from .postgres import PostgresStore
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.partition(".")[0] not in _POSTGRES_MODULES:
                raise
            raise ModuleNotFoundError(
                f"the PostgreSQL store needs {exc.name}, which is not installed:"
                " pip install 'workspace-lifecycle[postgres]'",
                name=exc.name,
            ) from exc

        return PostgresStore.from_url(url, **options)
    raise ValueError(f"unsupported store URL {url!r}; accepted forms: {ACCEPTED}")
