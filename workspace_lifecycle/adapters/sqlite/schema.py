"""The SQLite store's schema: the tables, the forward migrations, the pragmas set at open, and
the check that a path is a file SQLite can use."""

from __future__ import annotations

import os
import sqlite3

from ...errors import StoreError
from .rows import head

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "check_path", "setup"]

SCHEMA_VERSION = 11

_SCHEMA = """
CREATE TABLE chats (
    chat_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    workspace_id TEXT
);
CREATE TABLE workspaces (
    workspace_id TEXT PRIMARY KEY,
    chat_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    latest_build_id TEXT
);
CREATE TABLE builds (
    build_id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    transition TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    has_agent INTEGER,
    worker TEXT,
    queued_seq INTEGER NOT NULL,
    UNIQUE (workspace_id, number)
);
CREATE INDEX builds_by_status ON builds (status, queued_seq);
CREATE TABLE agents (
    workspace_id TEXT PRIMARY KEY,
    build_number INTEGER NOT NULL,
    lifecycle TEXT NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    build_number INTEGER NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX events_by_time ON events (at);
CREATE TABLE log_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    head INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL
);
INSERT INTO log_state (id, head, pruned_through) VALUES (1, 0, 0);
"""

#: Forward migrations: MIGRATIONS[n] takes a database at version n to n + 1.
MIGRATIONS: dict[int, str] = {
    0: _SCHEMA,
    # Build parameters (JSON object of strings) and a failed build's details (JSON object).
    1: "ALTER TABLE builds ADD COLUMN parameters TEXT NOT NULL DEFAULT '{}';"
    " ALTER TABLE builds ADD COLUMN details TEXT",
    # The sequence number is the event's rowid (AUTOINCREMENT: never reused, even once retention
    # pruned the whole log), so a write appends an event in one INSERT instead of reading and
    # rewriting a head counter; the head moves to sqlite_sequence, starting where it was.
    2: """
CREATE TABLE events_v3 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    build_number INTEGER NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL
);
INSERT INTO events_v3 (seq, kind, workspace_id, chat_id, build_number, payload, at)
    SELECT seq, kind, workspace_id, chat_id, build_number, payload, at FROM events ORDER BY seq;
DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;
CREATE INDEX events_by_time ON events (at);
DELETE FROM sqlite_sequence WHERE name = 'events';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'events', max(head, coalesce((SELECT max(seq) FROM events), 0)) FROM log_state;
ALTER TABLE log_state DROP COLUMN head
""",
    # Between turns: a chat's policy, a workspace's armed deadline, why a build was fired.
    3: "ALTER TABLE chats ADD COLUMN idle_stop_after REAL;"
    " ALTER TABLE chats ADD COLUMN delete_after_stopped REAL;"
    " ALTER TABLE workspaces ADD COLUMN deadline_at REAL;"
    " ALTER TABLE workspaces ADD COLUMN deadline_reason TEXT;"
    " ALTER TABLE builds ADD COLUMN reason TEXT NOT NULL DEFAULT 'request';"
    " CREATE INDEX workspaces_by_deadline ON workspaces (deadline_at) WHERE deadline_at IS NOT NULL",
    # Leases: a claimed build's fencing token and when its lease runs out (only while in flight).
    # A build in flight now was claimed without one: it gets a lease of the old reaper's
    # stale_after (900 s, wall clock), so a reaper fails it if its worker never finishes it.
    4: "ALTER TABLE builds ADD COLUMN lease_token TEXT;"
    " ALTER TABLE builds ADD COLUMN lease_expires_at REAL;"
    " CREATE INDEX builds_by_lease ON builds (lease_expires_at) WHERE lease_expires_at IS NOT NULL;"
    " UPDATE builds SET lease_token = lower(hex(randomblob(16))),"
    " lease_expires_at = (julianday('now') - 2440587.5) * 86400.0 + 900"
    " WHERE status IN ('running', 'canceling')",
    # A usable workspace: where its agent is reached (a JSON object of names to URLs), and each
    # build's log (a JSON array of the lines kept, their size and how many were dropped).
    5: "ALTER TABLE agents ADD COLUMN endpoints TEXT;"
    " CREATE TABLE build_logs (build_id TEXT PRIMARY KEY, lines TEXT NOT NULL,"
    " bytes INTEGER NOT NULL, dropped INTEGER NOT NULL)",
    # Per-owner limits (NULL: unlimited, or the runtime's default), and the owner's workspaces
    # found by an index: a create or start counts them in its own transaction.
    6: "CREATE TABLE owners (owner TEXT PRIMARY KEY, running INTEGER, workspaces INTEGER);"
    " CREATE INDEX workspaces_by_owner ON workspaces (owner)",
    # Expiry warnings: a chat's warn_before, when an armed deadline's warning is due and
    # whether it was given (the compare-and-set that warns once across replicas).
    7: "ALTER TABLE chats ADD COLUMN warn_before REAL;"
    " ALTER TABLE workspaces ADD COLUMN deadline_warn_at REAL;"
    " ALTER TABLE workspaces ADD COLUMN deadline_warned INTEGER NOT NULL DEFAULT 0",
    # A request deferred behind the build in flight, stored as intent (a JSON object: its
    # transition, the build it waits out, who asked): the build's finish acts on it.
    8: "ALTER TABLE workspaces ADD COLUMN deferred TEXT",
    # Warm pools: a pool's members are the live workspaces bound to its holder row; a claim
    # and a fill read them by chat id.
    9: "CREATE INDEX workspaces_by_chat ON workspaces (chat_id) WHERE deleted = 0",
    # Turn holds: the turns holding a workspace (a JSON array of [token, expires_at] pairs; NULL
    # for none), in its own row so that every write guarded by the row sees them.
    10: "ALTER TABLE workspaces ADD COLUMN holds TEXT",
}


def check_path(path: str) -> None:
    """Refuse, in one sentence naming the path, a file SQLite could not use."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        if os.path.isdir(path):
            raise ValueError(f"SQLite path {path!r} is a directory, not a database file")
        if not os.path.isdir(parent):
            what = "is not a directory" if os.path.exists(parent) else "does not exist"
            raise ValueError(f"cannot create SQLite database {path!r}: directory {parent!r} {what}")
        if os.path.exists(path):
            # No write bit at all means somebody marked the file read-only: refuse it even for
            # root, whom os.access() (and SQLite) would let write anyway.
            if not os.access(path, os.R_OK | os.W_OK) or not os.stat(path).st_mode & 0o222:
                raise StoreError(
                    f"SQLite database {path!r} is read-only (the store writes to it); "
                    "make it writable or pass another file"
                )
        elif not os.access(parent, os.W_OK):
            raise StoreError(f"cannot create SQLite database {path!r}: directory {parent!r} is not writable")
    except OSError as exc:  # a name too long, a NUL, a loop of links...
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ValueError(f"SQLite path {path!r} cannot be used: {reason}") from None
    except TypeError as exc:
        raise ValueError(f"SQLite path {path!r} cannot be used: {exc}") from None


def setup(conn: sqlite3.Connection, path: str, synchronous: str) -> int:
    """WAL, ``synchronous``, and the schema migrated to :data:`SCHEMA_VERSION` in one
    transaction; the log's head."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(f"SQLite database {path!r} cannot use WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"SQLite database {path!r} has schema version {version}, newer than this "
                f"library knows ({SCHEMA_VERSION}); upgrade workspace-lifecycle"
            )
        while version < SCHEMA_VERSION:
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
            version += 1
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return head(conn)
