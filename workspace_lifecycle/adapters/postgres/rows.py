"""The rows: the reads of the store in SQL, each a function of a connection, and the parsing of
what they return (a bad stored value is a :class:`~workspace_lifecycle.errors.CorruptStateError`
naming the row). The writes are the compiler's (:mod:`.compiler`)."""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from ...buildlogs import BuildLog
from ...errors import CorruptStateError, CursorExpiredError
from ...limits import RUNNING_STATUSES, Limits, OwnerRow, Usage
from ...values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    JobStatus,
    Lease,
    Reason,
    StoreEvent,
    Transition,
    Workspace,
    WorkspaceFacts,
    parse_deadline,
    parse_deferred,
    parse_enum,
    parse_holds,
    parse_lease,
    parse_policy,
)
from ..base import ArmedDeadlines, ChatRow
from ..driver import LogRead, Read, ReadKind, Rows
from .guards import Known, Seen

Conn = psycopg.AsyncConnection[TupleRow]

#: The finished statuses as an SQL list: a finished build holds no lease, whatever its row says
#: (one finished by code from before leases keeps the expiry migration 5 gave it).
_FINISHED = "(" + ", ".join(f"'{status.value}'" for status in JobStatus if status.finished) + ")"

HEAD = "coalesce(greatest((SELECT max(seq) FROM events), (SELECT pruned_through FROM log_state)), 0)"

#: A workspace row as :func:`parse_workspace` reads it.
_WS_COLUMNS = (
    "w.workspace_id, w.chat_id, w.owner, w.name, w.deleted, w.deadline_at, w.deadline_reason,"
    " w.deadline_warn_at, w.deadline_warned, w.deferred, w.holds"
)
#: A chat row as :func:`parse_chat` reads it.
_CHAT_COLUMNS = "c.chat_id, c.owner, c.workspace_id, c.idle_stop_after, c.delete_after_stopped, c.warn_before"
_CHAT_WIDTH = 6

_FACTS_COLUMNS = f"""
    {_WS_COLUMNS},
    b.build_id, b.number, b.transition, b.status, b.error, b.has_agent, b.worker,
    b.parameters, b.details, b.reason, b.lease_token, b.lease_expires_at,
    a.build_number, a.lifecycle, a.endpoints
"""
_FACTS_JOINS = """
    LEFT JOIN builds b ON b.workspace_id = w.workspace_id AND b.number = w.latest_build
    LEFT JOIN agents a ON a.workspace_id = w.workspace_id
"""
_FACTS_SQL = f"SELECT {_FACTS_COLUMNS}, {HEAD} FROM workspaces w {_FACTS_JOINS} WHERE w.workspace_id = %s"

#: What a request reads: the workspace's facts (then its version) and its chat's row (then its version).
_REQUEST_SQL = (
    f"SELECT {_FACTS_COLUMNS}, {HEAD}, w.version, {_CHAT_COLUMNS}, c.version"
    f" FROM workspaces w {_FACTS_JOINS} JOIN chats c ON c.chat_id = w.chat_id WHERE w.workspace_id = %s"
)
#: A workspace row as :func:`parse_workspace` reads it, then its version.
_WORKSPACE_COLUMNS = f"{_WS_COLUMNS}, w.version"
#: Columns of a workspace row as :func:`parse_workspace` reads it (its version follows them).
_WORKSPACE_WIDTH = 11
#: Columns of a build as :func:`parse_build` reads it.
_BUILD_WIDTH = 13
#: Columns of ``_FACTS_COLUMNS`` and the head (``_REQUEST_SQL``'s versions and chat follow).
_FACTS_WIDTH = _WORKSPACE_WIDTH + (_BUILD_WIDTH - 1) + 3 + 1

_BUILD_COLUMNS = (
    "b.build_id, b.workspace_id, b.number, b.transition, b.status, b.error, b.has_agent, b.worker,"
    " b.parameters, b.details, b.reason, b.lease_token, b.lease_expires_at"
)
#: The same row, also when the chat row is missing (a plain read of the facts: they are known
#: rows only with their chat).
_FACTS_KNOWN_SQL = _REQUEST_SQL.replace(" JOIN chats c ", " LEFT JOIN chats c ")
#: The oldest pending build with its workspace's facts and chat, as :data:`_REQUEST_SQL`.
_PENDING_SQL = (
    f"SELECT {_BUILD_COLUMNS.replace('b.', 'p.')}, {_FACTS_COLUMNS}, {HEAD}, w.version, {_CHAT_COLUMNS},"
    f" c.version FROM builds p JOIN workspaces w ON w.workspace_id = p.workspace_id {_FACTS_JOINS}"
    " JOIN chats c ON c.chat_id = w.chat_id WHERE p.status = 'pending' ORDER BY p.id LIMIT 1"
)

# --- parsing ---------------------------------------------------------------------------------


def parse_build(row: Sequence[Any]) -> Build:
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


def parse_facts(row: Sequence[Any]) -> WorkspaceFacts:
    """Facts from a row of ``_FACTS_COLUMNS`` followed by the head."""
    ws = parse_workspace(row)
    b = _WORKSPACE_WIDTH
    build = None
    if row[b] is not None:
        build = parse_build((row[b], ws.workspace_id, *row[b + 1 : b + _BUILD_WIDTH - 1]))
    a = b + _BUILD_WIDTH - 1
    agent = None
    if row[a] is not None:
        lifecycle = parse_enum(
            AgentLifecycle, row[a + 1], table="agents", key=ws.workspace_id, column="lifecycle"
        )
        reached = row[a + 2]
        if reached is not None and not isinstance(reached, dict):
            raise CorruptStateError("agents", ws.workspace_id, "endpoints", reached)
        agent = Agent(ws.workspace_id, row[a], lifecycle, reached or {})
    return WorkspaceFacts(workspace=ws, latest_build=build, agent=agent, seq=int(row[a + 3]))


def parse_workspace(row: Sequence[Any]) -> Workspace:
    """A workspace from ``_WS_COLUMNS``."""
    deadline = parse_deadline(row[5], row[6], row[7], row[8], key=row[0])
    deferred = parse_deferred(row[9], key=row[0])
    holds = parse_holds(row[10], key=row[0])
    return Workspace(
        row[0], row[1], row[2], row[3], deleted=row[4], deadline=deadline, deferred=deferred, holds=holds
    )


def parse_chat(row: Sequence[Any]) -> Chat:
    """A chat from ``_CHAT_COLUMNS``."""
    return Chat(row[0], row[1], row[2], policy=parse_policy(row[3], row[4], row[5], key=row[0]))


# --- what a write reads ----------------------------------------------------------------------


async def read_known(conn: Conn, workspace_id: str) -> Known | None:
    """The workspace's facts and its chat's row, in one snapshot, with their versions."""
    cur = await conn.execute(_REQUEST_SQL, (workspace_id,))
    row = await cur.fetchone()
    return None if row is None else parse_known(row)


def parse_known(row: Sequence[Any], facts: WorkspaceFacts | None = None) -> Known:
    """Known rows from a row of :data:`_REQUEST_SQL` (``facts``: already parsed from it)."""
    f = _FACTS_WIDTH
    chat = parse_chat(row[f + 1 : f + 1 + _CHAT_WIDTH])
    return Known(int(row[f]), facts or parse_facts(row), chat, int(row[f + 1 + _CHAT_WIDTH]))


async def read_facts_known(conn: Conn, workspace_id: str) -> tuple[WorkspaceFacts | None, Known | None]:
    """A plain read of the facts, with the known rows they make (``None`` without a chat row)."""
    cur = await conn.execute(_FACTS_KNOWN_SQL, (workspace_id,))
    row = await cur.fetchone()
    if row is None:
        return None, None
    facts = parse_facts(row)
    return facts, None if row[_FACTS_WIDTH + 1] is None else parse_known(row, facts)


async def send_read_known(conn: Conn, workspace_id: str) -> psycopg.AsyncCursor[TupleRow]:
    """Queue :func:`read_known`'s statement (in a pipeline, after a guarded write: its own
    snapshot under READ COMMITTED, so it sees the write's rows or the other writer's); the
    caller parses the row only if it needs it (:func:`parse_known_row`)."""
    return await conn.execute(_REQUEST_SQL, (workspace_id,))


async def parse_known_row(cur: psycopg.AsyncCursor[TupleRow]) -> Known | None:
    row = await cur.fetchone()
    return None if row is None else parse_known(row)


async def read_build(conn: Conn, build_id: str, *, related: bool = True) -> tuple[Rows, Seen | None]:
    """A build with its workspace and chat rows (the chat's policy arms the next deadline when
    it finishes) and the guard of a write decided on them (on the chat's row too if
    ``related``); no rows if there is no such build."""
    cur = await conn.execute(
        f"SELECT {_BUILD_COLUMNS}, {_WORKSPACE_COLUMNS}, {_CHAT_COLUMNS}, c.version"
        " FROM builds b JOIN workspaces w ON w.workspace_id = b.workspace_id"
        " JOIN chats c ON c.chat_id = w.chat_id WHERE b.build_id = %s",
        (build_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return Rows(), None
    b, w = _BUILD_WIDTH, _BUILD_WIDTH + _WORKSPACE_WIDTH
    ws = parse_workspace(row[b:w])
    chat = parse_chat(row[w + 1 : w + 1 + _CHAT_WIDTH])
    if related:
        seen = Seen(ws.workspace_id, int(row[w]), chat.chat_id, int(row[w + 1 + _CHAT_WIDTH]))
    else:
        seen = Seen(ws.workspace_id, int(row[w]))
    return Rows(chat, None, parse_build(row[:b]), ws), seen


async def read_log_row(conn: Conn, build_id: str) -> BuildLog | None:
    """The log of build ``build_id``, ``None`` before its first line."""
    cur = await conn.execute("SELECT lines, bytes, dropped FROM build_logs WHERE build_id = %s", (build_id,))
    row = await cur.fetchone()
    if row is None:
        return None
    lines = row[0]
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise CorruptStateError("build_logs", build_id, "lines", lines)
    return BuildLog(build_id, tuple(lines), int(row[1]), int(row[2]))


async def read_log(conn: Conn, workspace_id: str, number: int | None) -> LogRead | None:
    """Build ``number`` of the workspace (``None``: the latest) and its log, in one snapshot."""
    where = (
        "b.number = (SELECT latest_build FROM workspaces WHERE workspace_id = %s)"
        if number is None
        else "b.number = %s"
    )
    async with conn.transaction():
        cur = await conn.execute(
            f"SELECT {_BUILD_COLUMNS} FROM builds b WHERE b.workspace_id = %s AND {where}",
            (workspace_id, workspace_id if number is None else number),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        build = parse_build(row)
        return build, await read_log_row(conn, build.build_id)


async def read_pending(conn: Conn) -> tuple[Rows, Known | None]:
    """The oldest pending build and its workspace, with the workspace's known rows (its facts,
    chat and versions: the claim is guarded by the workspace's version, and the worker's next
    writes on it, its renewals and its finish, decide on them unread); a worker that loses it
    to another reads the next one."""
    cur = await conn.execute(_PENDING_SQL)
    row = await cur.fetchone()
    if row is None:
        return Rows(), None
    b = _BUILD_WIDTH
    known = parse_known(row[b:])
    return Rows(build=parse_build(row[:b]), workspace=known.facts.workspace), known


async def lock_chat(conn: Conn, chat_id: str, *, related: bool) -> Rows | None:
    """Inside a transaction: lock the chat's row and (``related``) the workspace it is bound to,
    the workspace first (every guarded write takes them in that order, so the two never wait on
    each other in a circle); its rows, with the workspace's facts. ``None`` when the chat was
    bound to another workspace between the two locks (nothing is decided on half-locked rows)."""
    bound = None
    if related:
        cur = await conn.execute(
            "WITH b AS (SELECT workspace_id FROM chats WHERE chat_id = %s),"
            " l AS (SELECT 1 FROM workspaces WHERE workspace_id = (SELECT workspace_id FROM b) FOR UPDATE)"
            " SELECT (SELECT workspace_id FROM b), (SELECT count(*) FROM l)",
            (chat_id,),
        )
        row = await cur.fetchone()
        bound = None if row is None or row[0] is None else str(row[0])
    cur = await conn.execute(
        f"SELECT {_CHAT_COLUMNS} FROM chats c WHERE c.chat_id = %s FOR UPDATE", (chat_id,)
    )
    row = await cur.fetchone()
    if row is None:
        return Rows()
    chat = parse_chat(row)
    if not related:
        return Rows(chat)
    if chat.workspace_id != bound:
        return None
    return Rows(chat, None if bound is None else await read_facts(conn, bound))


_RUNNING = "(" + ", ".join(f"'{status.value}'" for status in RUNNING_STATUSES) + ")"
_USAGE_SQL = (
    "SELECT count(*), count(*) FILTER (WHERE b.transition = 'start' AND b.status IN "
    f"{_RUNNING}), (SELECT running FROM owners WHERE owner = %(o)s),"
    " (SELECT workspaces FROM owners WHERE owner = %(o)s)"
    " FROM workspaces w LEFT JOIN builds b ON b.workspace_id = w.workspace_id AND b.number = w.latest_build"
    " WHERE w.owner = %(o)s AND NOT w.deleted"
)


async def owner_of(conn: Conn, read: Read) -> str | None:
    """The owner of the chat or workspace ``read`` names (``None``: there is none). An owner
    never changes, so it is read before any lock."""
    if read.kind is ReadKind.OWNER:
        return read.key
    if read.kind is ReadKind.POOL:  # the claimant's
        if not read.claimant:
            return None
        query, key = "SELECT owner FROM chats WHERE chat_id = %s", read.claimant
        cur = await conn.execute(query, (key,))
        row = await cur.fetchone()
        return None if row is None else str(row[0])
    if read.kind is ReadKind.BUILD or read.kind is ReadKind.LOG:
        query = "SELECT w.owner FROM builds b JOIN workspaces w USING (workspace_id) WHERE b.build_id = %s"
    else:
        table, key = ("chats", "chat_id") if read.kind is ReadKind.CHAT else ("workspaces", "workspace_id")
        query = f"SELECT owner FROM {table} WHERE {key} = %s"
    cur = await conn.execute(query, (read.key,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


async def lock_owner(conn: Conn, owner: str) -> bool:
    """Inside a transaction: lock the owner's row (made if missing) and bump its version. Every
    write that may take one of the owner's slots takes this lock first, so they run one at a
    time and each counts (:func:`read_usage`) what the previous one committed. Whether limits
    are stored for the owner (without them, and without the caller's, nothing need be counted)."""
    cur = await conn.execute(
        "INSERT INTO owners AS o (owner) VALUES (%s)"
        " ON CONFLICT (owner) DO UPDATE SET version = o.version + 1"
        " RETURNING (o.running IS NOT NULL OR o.workspaces IS NOT NULL)",
        (owner,),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def lock_build(conn: Conn, build_id: str, *, log: bool) -> Rows:
    """Inside a transaction: lock the workspace row of build ``build_id`` (every guarded write of
    the workspace then waits, and fails its guard), and read the build with its workspace and
    chat (and, ``log``, its log)."""
    await conn.execute(
        "SELECT 1 FROM workspaces WHERE workspace_id = (SELECT workspace_id FROM builds"
        " WHERE build_id = %s) FOR UPDATE",
        (build_id,),
    )
    rows, _ = await read_build(conn, build_id)
    if log:
        rows.log = await read_log_row(conn, build_id)
    return rows


async def lock_workspace(conn: Conn, workspace_id: str, *, related: bool) -> Rows:
    """Inside a transaction: lock the workspace's row (and, ``related``, share-lock its chat's,
    in the order every guarded write takes them) and read its facts and chat."""
    cur = await conn.execute(
        "SELECT chat_id FROM workspaces WHERE workspace_id = %s FOR UPDATE", (workspace_id,)
    )
    row = await cur.fetchone()
    if row is None:
        return Rows()
    if related:
        await conn.execute("SELECT 1 FROM chats WHERE chat_id = %s FOR SHARE", (row[0],))
    facts, known = await read_facts_known(conn, workspace_id)
    chat = None if known is None or not related else known.chat
    return Rows.of_facts(facts, chat)


async def read_usage(conn: Conn, owner: str) -> Usage:
    """``owner``'s usage (see :mod:`workspace_lifecycle.limits`) and stored limits."""
    cur = await conn.execute(_USAGE_SQL, {"o": owner})
    row = await cur.fetchone()
    assert row is not None
    workspaces, running, most_running, most_workspaces = row
    limits = (
        None if most_running is None and most_workspaces is None else Limits(most_running, most_workspaces)
    )
    return Usage(owner, int(running), int(workspaces), limits)


async def write_owner(conn: Conn, owner: OwnerRow) -> None:
    """Upsert an owner's row (its limits), bumping its version."""
    await conn.execute(
        "INSERT INTO owners AS o (owner, running, workspaces) VALUES (%s, %s, %s)"
        " ON CONFLICT (owner) DO UPDATE SET running = excluded.running,"
        " workspaces = excluded.workspaces, version = o.version + 1",
        (owner.owner, owner.limits.running, owner.limits.workspaces),
    )


async def lock_pool(conn: Conn, holder: str, claimant: str) -> tuple[Rows | None, dict[str, int]]:
    """Inside a transaction: lock the claimant's chat and its workspace as :func:`lock_chat`
    does (without a claimant, the pool holder's row: fills of one pool take turns, and each
    reads the members the one before it committed), then read the pool's members (the live
    workspaces bound to ``holder``) with their versions: the guard of a claim's write on the
    member it takes. ``None`` rows as for :func:`lock_chat`."""
    rows = await lock_chat(conn, claimant or holder, related=bool(claimant))
    if rows is None:
        return None, {}
    cur = await conn.execute(
        f"SELECT {_FACTS_COLUMNS}, {HEAD}, w.version FROM workspaces w {_FACTS_JOINS}"
        " WHERE w.chat_id = %s AND NOT w.deleted",
        (holder,),
    )
    found = await cur.fetchall()
    rows.members = tuple(parse_facts(row) for row in found)
    return rows, {str(row[0]): int(row[_FACTS_WIDTH]) for row in found}


# --- plain reads -----------------------------------------------------------------------------


async def read_head(conn: Conn) -> int:
    cur = await conn.execute(f"SELECT {HEAD}")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def read_facts(conn: Conn, workspace_id: str) -> WorkspaceFacts | None:
    cur = await conn.execute(_FACTS_SQL, (workspace_id,))
    row = await cur.fetchone()
    return None if row is None else parse_facts(row)


async def read_chat(conn: Conn, chat_id: str) -> Chat | None:
    cur = await conn.execute(f"SELECT {_CHAT_COLUMNS} FROM chats c WHERE c.chat_id = %s", (chat_id,))
    row = await cur.fetchone()
    return None if row is None else parse_chat(row)


async def read_one_build(conn: Conn, build_id: str) -> Build | None:
    cur = await conn.execute(f"SELECT {_BUILD_COLUMNS} FROM builds b WHERE b.build_id = %s", (build_id,))
    row = await cur.fetchone()
    return None if row is None else parse_build(row)


async def read_armed_deadlines(conn: Conn) -> ArmedDeadlines:
    # One statement: one snapshot for the deadlines and the head.
    cur = await conn.execute(
        f"SELECT {HEAD}, coalesce(array_agg(workspace_id), '{{}}'),"
        " coalesce(array_agg(deadline_at), '{}'), coalesce(array_agg(deadline_reason), '{}'),"
        " coalesce(array_agg(deadline_warn_at), '{}'), coalesce(array_agg(deadline_warned), '{}')"
        " FROM workspaces WHERE deadline_at IS NOT NULL"
    )
    row = await cur.fetchone()
    assert row is not None
    return ArmedDeadlines.read(
        int(row[0]),
        [
            (w, functools.partial(parse_deadline, at, r, warn, warned, key=w))
            for w, at, r, warn, warned in zip(row[1], row[2], row[3], row[4], row[5], strict=True)
        ],
    )


async def read_chat_rows(conn: Conn) -> list[ChatRow]:
    cur = await conn.execute(
        f"SELECT {_CHAT_COLUMNS}, {_FACTS_COLUMNS}, {HEAD}"
        f" FROM chats c LEFT JOIN workspaces w ON w.workspace_id = c.workspace_id {_FACTS_JOINS}"
        " ORDER BY c.chat_id"
    )
    rows: list[ChatRow] = []
    for row in await cur.fetchall():
        chat = parse_chat(row)
        rows.append(ChatRow.read(chat, functools.partial(parse_facts, row[_CHAT_WIDTH:])))
    return rows


async def read_next_lease(conn: Conn, skip: Collection[str]) -> Lease | None:
    cur = await conn.execute(
        "SELECT build_id, workspace_id, worker, lease_token, lease_expires_at FROM builds"
        f" WHERE lease_expires_at IS NOT NULL AND status NOT IN {_FINISHED}"
        " AND build_id <> ALL(%s::text[])"
        " ORDER BY lease_expires_at LIMIT 1",
        (list(skip),),
    )
    row = await cur.fetchone()
    return None if row is None else Lease.read(*row)


async def read_events(conn: Conn, after: int, limit: int) -> list[StoreEvent]:
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


async def prune_events(conn: Conn, older_than: float) -> int:
    # Only a prefix of the log is dropped: everything up to the first event that is not older
    # than ``older_than``.
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
