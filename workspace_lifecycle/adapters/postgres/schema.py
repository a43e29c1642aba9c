"""The schema: its forward migrations, applied one replica at a time, and the advisory locks.

Versioned forward migrations run under ``pg_advisory_xact_lock`` so replicas that start
together do not race; a schema newer than this code is refused with a clear error.
"""

from __future__ import annotations

import logging
import zlib

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from ...errors import SchemaMissingError, StoreError

__all__ = ["LOG_LOCK", "MIGRATIONS", "SCHEMA_VERSION", "check_schema", "lock_key", "migrate", "prepare"]

log = logging.getLogger("workspace_lifecycle.postgres")

Conn = psycopg.AsyncConnection[TupleRow]

# Advisory lock classes (the first int4 key); the second key is a hash of the schema name, so
# deployments in other schemas of one database never wait for each other.
_MIGRATE_LOCK = 0x574C0001
LOG_LOCK = 0x574C0002

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
    # 6: a usable workspace: where its agent is reached (names to URLs), and each build's log
    # (the lines kept, their size in bytes, and how many were dropped, oldest first).
    """
    ALTER TABLE agents ADD COLUMN endpoints jsonb;
    CREATE TABLE build_logs (
        build_id text PRIMARY KEY REFERENCES builds,
        lines jsonb NOT NULL,
        bytes integer NOT NULL,
        dropped bigint NOT NULL
    );
    """,
    # 7: per-owner limits (NULL: the runtime's default) and the owner row's version, bumped by
    # every write that may take one of the owner's slots (a create, a start) under the row's
    # lock: such writes of one owner run one at a time, each counting what the last committed.
    """
    CREATE TABLE owners (
        owner text PRIMARY KEY,
        running integer,
        workspaces integer,
        version bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX workspaces_owner ON workspaces (owner) WHERE NOT deleted;
    """,
    # 8: expiry warnings: a chat's warn_before, when an armed deadline's warning is due and
    # whether it was given (the compare-and-set that warns once across replicas).
    """
    ALTER TABLE chats ADD COLUMN warn_before double precision;
    ALTER TABLE workspaces ADD COLUMN deadline_warn_at double precision,
        ADD COLUMN deadline_warned boolean NOT NULL DEFAULT false;
    """,
    # 9: a request deferred behind the build in flight, stored as intent (its transition, the
    # build it waits out, who asked): the build's finish acts on it in its own transaction.
    """
    ALTER TABLE workspaces ADD COLUMN deferred jsonb;
    """,
    # 10: warm pools: a pool's members are the live workspaces bound to its holder row; a claim
    # and a fill read (and lock) them by chat id.
    """
    CREATE INDEX workspaces_by_chat ON workspaces (chat_id) WHERE NOT deleted;
    """,
    # 11: turn holds: the turns holding a workspace (a JSON array of [token, expires_at] pairs;
    # NULL for none), in its own row so that the row's version guards them with it.
    """
    ALTER TABLE workspaces ADD COLUMN holds jsonb;
    """,
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(MIGRATIONS)


def lock_key(schema: str) -> int:
    """A stable signed 32-bit key for ``schema`` (the second key of the advisory locks).

    >>> lock_key("public") == lock_key("public")
    True
    """
    value = zlib.crc32(schema.encode())
    return value - (1 << 32) if value >= (1 << 31) else value


async def migrate(conn: Conn, schema: str) -> None:
    """Apply the missing migrations of ``schema``, one replica at a time."""
    async with conn.transaction():
        # search_path for this transaction only: also right behind transaction pooling.
        await conn.execute(
            "SELECT set_config('search_path', %s, true), pg_advisory_xact_lock(%s, %s)",
            (f'"{schema}"', _MIGRATE_LOCK, lock_key(schema)),
        )
        cur = await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if await cur.fetchone() is None:
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the PostgreSQL schema {schema!r} is at version {current}, newer than "
                f"this workspace-lifecycle understands ({SCHEMA_VERSION}); upgrade the library"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            log.info("migrated schema %s to version %d", schema, version)


async def check_schema(conn: Conn, schema: str, url: str) -> None:
    """Without changing anything: refuse a ``schema`` that is missing (a read-only open of an
    empty database, or a mistyped ``?schema=``) or not at this library's version."""
    cur = await conn.execute("SELECT to_regclass(%s)", (f'"{schema}".schema_migrations',))
    row = await cur.fetchone()
    if row is None or row[0] is None:
        raise SchemaMissingError(f"no workspace-lifecycle schema at {url}")
    cur = await conn.execute(
        sql.SQL("SELECT coalesce(max(version), 0) FROM {}.schema_migrations").format(sql.Identifier(schema))
    )
    found = await cur.fetchone()
    current = int(found[0]) if found else 0
    if current != SCHEMA_VERSION:
        raise StoreError(
            f"the workspace-lifecycle schema at {url} is at version {current}, not this library's"
            f" {SCHEMA_VERSION}; open it once with a command that writes (or migrate=True) to "
            "upgrade it"
            if current < SCHEMA_VERSION
            else f"the PostgreSQL schema {schema!r} is at version {current}, newer than "
            f"this workspace-lifecycle understands ({SCHEMA_VERSION}); upgrade the library"
        )


async def prepare(conn: Conn, schema: str, *, migrating: bool, url: str) -> None:
    """On open: :func:`migrate` the schema, or (``migrating`` false) :func:`check_schema` it."""
    if migrating:
        await migrate(conn, schema)
    else:
        await check_schema(conn, schema, url)
