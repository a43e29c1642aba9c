"""What the SQLite store reads: the rows a plan decides on (:func:`plan_rows`, one snapshot,
as few statements as the :class:`~..driver.ReadKind` allows) and the store's plain reads. Each
is a function of a connection, run on a connection's thread inside a transaction."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Collection

from ...buildlogs import BuildLog
from ...errors import CorruptStateError, CursorExpiredError
from ...values import JobStatus, Lease, StoreEvent, parse_deadline
from ..base import ArmedDeadlines, ChatRow
from ..driver import LogRead, Read, ReadKind, Rows
from . import rows
from .rows import BUILD_COLUMNS, CHAT_COLUMNS, FACTS_WIDTH, WORKSPACE_COLUMNS

__all__ = [
    "MAX_INT",
    "armed_deadlines",
    "events_after",
    "list_chats",
    "log_of",
    "next_lease",
    "plan_rows",
    "prune",
    "read_log",
]

#: SQLite's integers are signed 64-bit: a sequence number beyond this is beyond every head.
MAX_INT = 2**63 - 1

#: The finished statuses as an SQL list: a finished build holds no lease, whatever its row says
#: (one finished by code from before leases keeps the expiry migration 5 gave it).
_FINISHED = "(" + ", ".join(f"'{status.value}'" for status in JobStatus if status.finished) + ")"

_C = rows.prefixed("c", CHAT_COLUMNS)
_W = rows.prefixed("w", WORKSPACE_COLUMNS)
_B = rows.prefixed("b", BUILD_COLUMNS)

_WORKSPACE = rows.facts_query("w.workspace_id = ?")
_WORKSPACE_AND_CHAT = rows.facts_query("w.workspace_id = ?", with_chat=True)
_BUILD = (
    f"SELECT {_B}, {_W}, {_C} FROM builds b LEFT JOIN workspaces w ON w.workspace_id = b.workspace_id"
    " LEFT JOIN chats c ON c.chat_id = w.chat_id WHERE b.build_id = ?"
)
_PENDING = (
    f"SELECT {_B}, {_W} FROM builds b LEFT JOIN workspaces w ON w.workspace_id = b.workspace_id"
    " WHERE b.status = 'pending' ORDER BY b.queued_seq LIMIT 1"
)


def plan_rows(conn: sqlite3.Connection, read: Read) -> Rows:
    """The rows ``read`` names, absent ones ``None`` (see :class:`~..driver.Rows`)."""
    kind = read.kind
    if kind is ReadKind.WORKSPACE:
        if not read.related:
            row = conn.execute(_WORKSPACE, (read.key,)).fetchone()
            return Rows() if row is None else Rows.of_facts(rows.facts_row(row))
        row = conn.execute(_WORKSPACE_AND_CHAT, (read.key,)).fetchone()
        if row is None:
            return Rows()
        chat = None if row[FACTS_WIDTH] is None else rows.chat_row(row[FACTS_WIDTH:])
        return Rows.of_facts(rows.facts_row(row), chat)
    if kind is ReadKind.BUILD or kind is ReadKind.LOG:
        row = conn.execute(_BUILD, (read.key,)).fetchone()
        if row is None:
            return Rows()
        c = 13 + rows.WORKSPACE_WIDTH
        ws = None if row[13] is None else rows.workspace_row(row[13:c])
        chat = None if row[c] is None else rows.chat_row(row[c:])
        log = log_of(conn, read.key) if kind is ReadKind.LOG else None
        return Rows(chat, None, rows.build(row), ws, log)
    if kind is ReadKind.PENDING:
        row = conn.execute(_PENDING).fetchone()
        if row is None:
            return Rows()
        return Rows(
            build=rows.build(row), workspace=None if row[13] is None else rows.workspace_row(row[13:])
        )
    chat = rows.chat(conn, read.key)
    if chat is None or not read.related or chat.workspace_id is None:
        return Rows(chat)
    row = conn.execute(_WORKSPACE, (chat.workspace_id,)).fetchone()
    return Rows(chat, None if row is None else rows.facts_row(row))


def log_of(conn: sqlite3.Connection, build_id: str) -> BuildLog | None:
    """The log of build ``build_id``, ``None`` before its first line."""
    row = conn.execute(
        "SELECT lines, bytes, dropped FROM build_logs WHERE build_id = ?", (build_id,)
    ).fetchone()
    if row is None:
        return None
    try:
        lines = json.loads(row[0])
    except ValueError:
        raise CorruptStateError("build_logs", build_id, "lines", row[0]) from None
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise CorruptStateError("build_logs", build_id, "lines", row[0])
    return BuildLog(build_id, tuple(lines), int(row[1]), int(row[2]))


def read_log(conn: sqlite3.Connection, workspace_id: str, number: int | None) -> LogRead | None:
    """Build ``number`` of the workspace (``None``: the latest) and its log."""
    if number is None:
        found = conn.execute(
            f"SELECT {BUILD_COLUMNS} FROM builds WHERE workspace_id = ? ORDER BY number DESC LIMIT 1",
            (workspace_id,),
        ).fetchone()
    else:
        found = conn.execute(
            f"SELECT {BUILD_COLUMNS} FROM builds WHERE workspace_id = ? AND number = ?",
            (workspace_id, number),
        ).fetchone()
    if found is None:
        return None
    build = rows.build(found)
    return build, log_of(conn, build.build_id)


def armed_deadlines(conn: sqlite3.Connection) -> ArmedDeadlines:
    found = conn.execute(
        "SELECT workspace_id, deadline_at, deadline_reason FROM workspaces WHERE deadline_at IS NOT NULL"
    ).fetchall()
    return ArmedDeadlines.read(
        rows.head(conn), [(r[0], functools.partial(parse_deadline, r[1], r[2], key=r[0])) for r in found]
    )


def list_chats(conn: sqlite3.Connection) -> list[ChatRow]:
    head = rows.head(conn)
    found = conn.execute(f"SELECT {CHAT_COLUMNS} FROM chats ORDER BY rowid").fetchall()
    chats = [rows.chat_row(r) for r in found]
    return [ChatRow.read(c, functools.partial(rows.facts, conn, c.workspace_id or "", head)) for c in chats]


def next_lease(conn: sqlite3.Connection, skip: Collection[str]) -> Lease | None:
    row = conn.execute(
        "SELECT build_id, workspace_id, worker, lease_token, lease_expires_at FROM builds"
        f" WHERE lease_expires_at IS NOT NULL AND status NOT IN {_FINISHED}"
        " AND build_id NOT IN (SELECT value FROM json_each(?))"
        " ORDER BY lease_expires_at LIMIT 1",
        (json.dumps(list(skip)),),
    ).fetchone()
    return None if row is None else Lease.read(*row)


def events_after(conn: sqlite3.Connection, after: int, limit: int) -> list[StoreEvent]:
    pruned = conn.execute("SELECT pruned_through FROM log_state").fetchone()[0]
    if after < pruned:
        raise CursorExpiredError(after, pruned + 1)
    found = conn.execute(
        "SELECT seq, kind, workspace_id, chat_id, build_number, payload, at FROM events "
        "WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ).fetchall()
    return [
        StoreEvent.from_row(
            seq=r[0], kind=r[1], workspace_id=r[2], chat_id=r[3], build_number=r[4], payload=r[5], at=r[6]
        )
        for r in found
    ]


def prune(conn: sqlite3.Connection, older_than: float) -> int:
    """Inside a write transaction: drop a prefix of the log, everything before the first event
    at or after ``older_than``; how many events went."""
    first_kept = conn.execute("SELECT min(seq) FROM events WHERE at >= ?", (older_than,)).fetchone()[0]
    if first_kept is None:
        through = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    else:
        through = first_kept - 1
    if through is None:
        return 0
    count = conn.execute("DELETE FROM events WHERE seq <= ?", (through,)).rowcount
    conn.execute("UPDATE log_state SET pruned_through = max(pruned_through, ?)", (through,))
    return int(count)
