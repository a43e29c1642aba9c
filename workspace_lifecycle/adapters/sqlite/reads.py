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
from ...limits import RUNNING_STATUSES, Limits, Usage
from ...values import JobStatus, Lease, StoreEvent, parse_deadline
from ..base import ArmedDeadlines, ChatRow
from ..driver import LogRead, Read, ReadKind, Rows
from . import rows
from .rows import BUILD_COLUMNS, BUILD_WIDTH, CHAT_COLUMNS, FACTS_WIDTH, WORKSPACE_COLUMNS, WORKSPACE_WIDTH

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
    "usage",
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
#: A workspace and its agent, no build (``Read.latest`` false): the agent report's read.
_WORKSPACE_AGENT = (
    f"SELECT {_W}, a.build_number, a.lifecycle, a.endpoints FROM workspaces w"
    " LEFT JOIN agents a ON a.workspace_id = w.workspace_id WHERE w.workspace_id = ?"
)
_BUILD = (
    f"SELECT {_B}, {_W}, {_C} FROM builds b LEFT JOIN workspaces w ON w.workspace_id = b.workspace_id"
    " LEFT JOIN chats c ON c.chat_id = w.chat_id WHERE b.build_id = ?"
)
_MEMBERS = rows.facts_query("w.chat_id = ? AND w.deleted = 0")
_PENDING = (
    f"SELECT {_B}, {_W} FROM builds b LEFT JOIN workspaces w ON w.workspace_id = b.workspace_id"
    " WHERE b.status = 'pending' ORDER BY b.queued_seq LIMIT 1"
)


_RUNNING = "(" + ", ".join(f"'{status.value}'" for status in RUNNING_STATUSES) + ")"
#: An owner's counts (see :mod:`workspace_lifecycle.limits`) and stored limits, in one statement.
_USAGE = (
    "SELECT count(w.workspace_id),"
    f" coalesce(sum(b.transition = 'start' AND b.status IN {_RUNNING}), 0),"
    " (SELECT running FROM owners WHERE owner = ?1), (SELECT workspaces FROM owners WHERE owner = ?1),"
    " EXISTS (SELECT 1 FROM owners WHERE owner = ?1)"
    " FROM workspaces w LEFT JOIN builds b ON b.build_id = w.latest_build_id"
    " WHERE w.owner = ?1 AND NOT w.deleted"
)


def usage(conn: sqlite3.Connection, owner: str) -> Usage:
    """``owner``'s usage and stored limits."""
    workspaces, running, most_running, most_workspaces, stored = conn.execute(_USAGE, (owner,)).fetchone()
    limits = Limits(most_running, most_workspaces) if stored else None
    return Usage(owner, int(running), int(workspaces), limits)


def _has_limits(conn: sqlite3.Connection, owner: str) -> bool:
    """Whether limits are stored for ``owner`` (one row by its key: no count)."""
    return conn.execute("SELECT 1 FROM owners WHERE owner = ?", (owner,)).fetchone() is not None


def plan_rows(conn: sqlite3.Connection, read: Read) -> Rows:
    """The rows ``read`` names, absent ones ``None`` (see :class:`~..driver.Rows`); with the
    owner's usage when it asks for it (the write holds ``BEGIN IMMEDIATE``: no other write of
    any owner runs until it commits)."""
    found = _plan_rows(conn, read)
    if read.usage:
        if read.kind is ReadKind.OWNER:
            owner: str | None = read.key
        elif found.chat is not None:
            owner = found.chat.owner
        else:
            owner = None if found.workspace is None else found.workspace.owner
        # No limit can refuse (none stored, none of the caller's): nothing to count.
        counted = owner is not None and (read.limited or _has_limits(conn, owner))
        found.usage = usage(conn, owner) if counted and owner is not None else None
    return found


def _plan_rows(conn: sqlite3.Connection, read: Read) -> Rows:
    kind = read.kind
    if kind is ReadKind.OWNER:
        return Rows()
    if kind is ReadKind.WORKSPACE:
        if not read.related:
            if not read.latest:
                row = conn.execute(_WORKSPACE_AGENT, (read.key,)).fetchone()
                return Rows() if row is None else Rows.of_facts(rows.workspace_agent_row(row))
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
        ws = None if row[BUILD_WIDTH] is None else rows.workspace_row(row[BUILD_WIDTH:])
        at_chat = BUILD_WIDTH + WORKSPACE_WIDTH
        chat = None if row[at_chat] is None else rows.chat_row(row[at_chat:])
        log = log_of(conn, read.key) if kind is ReadKind.LOG else None
        return Rows(chat, None, rows.build(row), ws, log)
    if kind is ReadKind.POOL:
        members = tuple(rows.facts_row(r) for r in conn.execute(_MEMBERS, (read.key,)).fetchall())
        if not read.claimant:
            return Rows(rows.chat(conn, read.key), members=members)
        found = plan_rows(conn, Read.of_chat(read.claimant))
        found.members = members
        return found
    if kind is ReadKind.PENDING:
        row = conn.execute(_PENDING).fetchone()
        if row is None:
            return Rows()
        return Rows(
            build=rows.build(row),
            workspace=None if row[BUILD_WIDTH] is None else rows.workspace_row(row[BUILD_WIDTH:]),
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
        "SELECT workspace_id, deadline_at, deadline_reason, deadline_warn_at, deadline_warned"
        " FROM workspaces WHERE deadline_at IS NOT NULL"
    ).fetchall()
    return ArmedDeadlines.read(
        rows.head(conn),
        [(r[0], functools.partial(parse_deadline, r[1], r[2], r[3], r[4], key=r[0])) for r in found],
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
