"""Rows of the SQLite store read into values: the columns each table is read by, the parsing of
one row (a bad stored value is a :class:`~workspace_lifecycle.errors.CorruptStateError` naming
the row), and the lookups of one row by key. Run on a connection's thread."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from ...errors import CorruptStateError, NotFoundError
from ...values import (
    Agent,
    AgentLifecycle,
    Build,
    Chat,
    JobStatus,
    Reason,
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

__all__ = [
    "BUILD_COLUMNS",
    "CHAT_COLUMNS",
    "BUILD_WIDTH",
    "CHAT_WIDTH",
    "FACTS_WIDTH",
    "WORKSPACE_COLUMNS",
    "WORKSPACE_WIDTH",
    "agent_row",
    "build",
    "build_by_id",
    "chat",
    "chat_row",
    "facts",
    "facts_query",
    "facts_row",
    "head",
    "prefixed",
    "workspace_agent_row",
    "workspace_row",
]

BUILD_COLUMNS = (
    "build_id, workspace_id, number, transition, status, error, has_agent, worker, parameters,"
    " details, reason, lease_token, lease_expires_at"
)
CHAT_COLUMNS = "chat_id, owner, workspace_id, idle_stop_after, delete_after_stopped, warn_before"
WORKSPACE_COLUMNS = (
    "workspace_id, chat_id, owner, name, deleted, deadline_at, deadline_reason, deadline_warn_at,"
    " deadline_warned, deferred, holds"
)
#: How many columns each list above has (rows that join them are cut at these widths).
BUILD_WIDTH = 13
CHAT_WIDTH = 6
WORKSPACE_WIDTH = 11

#: Rows parsed lately, by their raw values: a row read again unchanged (the latest build of a
#: workspace whose agent reports, its workspace) is not parsed and validated again. A build
#: costs ~10 µs to parse and ~0.3 µs to find here, on a writer's thread doing ~50 µs a write.
#: The values are frozen, so one may be handed out twice; a failed parse is not remembered.
_PARSED = 2048

_HEAD = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"


def prefixed(alias: str, columns: str) -> str:
    """``columns`` (one of the lists above) qualified by the table alias ``alias``."""
    return ", ".join(f"{alias}.{name.strip()}" for name in columns.split(","))


def facts_query(where: str, *, with_chat: bool = False) -> str:
    """The statement reading a workspace's facts in one row (workspace ``w``, its agent, its
    latest build, the log's head; with ``with_chat`` its chat's :data:`CHAT_COLUMNS` after
    :data:`FACTS_WIDTH` columns), for the workspace ``where`` selects; see :func:`facts_row`."""
    chat_columns, chat_join = (
        (f", {prefixed('c', CHAT_COLUMNS)}", " LEFT JOIN chats c ON c.chat_id = w.chat_id")
        if with_chat
        else ("", "")
    )
    return (
        f"SELECT {prefixed('w', WORKSPACE_COLUMNS)}, a.build_number, a.lifecycle, a.endpoints,"
        f" {prefixed('b', BUILD_COLUMNS)}, ({_HEAD}){chat_columns}"
        " FROM workspaces w LEFT JOIN agents a ON a.workspace_id = w.workspace_id"
        # The latest build's rowid from the covering (workspace_id, number) index, then its row.
        " LEFT JOIN builds b ON b.rowid = (SELECT rowid FROM builds"
        f" WHERE workspace_id = w.workspace_id ORDER BY number DESC LIMIT 1){chat_join} WHERE {where}"
    )


#: The columns of a :func:`facts_query` row before its chat's.
FACTS_WIDTH = WORKSPACE_WIDTH + 3 + BUILD_WIDTH + 1

_FACTS = facts_query("w.workspace_id = ?")


def head(conn: sqlite3.Connection) -> int:
    """The log's head: the last sequence number ever given (pruning does not lower it)."""
    row = conn.execute(_HEAD).fetchone()
    return 0 if row is None else int(row[0])


def chat(conn: sqlite3.Connection, chat_id: str) -> Chat | None:
    row = conn.execute(f"SELECT {CHAT_COLUMNS} FROM chats WHERE chat_id = ?", (chat_id,)).fetchone()
    return None if row is None else chat_row(row)


def chat_row(row: Sequence[Any]) -> Chat:
    return _chat_row(tuple(row[:CHAT_WIDTH]))


@functools.lru_cache(maxsize=_PARSED)
def _chat_row(row: tuple[Any, ...]) -> Chat:
    return Chat(row[0], row[1], row[2], policy=parse_policy(row[3], row[4], row[5], key=row[0]))


def build_by_id(conn: sqlite3.Connection, build_id: str) -> Build:
    row = conn.execute(f"SELECT {BUILD_COLUMNS} FROM builds WHERE build_id = ?", (build_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no build {build_id!r}")
    return build(row)


def build(row: Sequence[Any]) -> Build:
    """A build from its :data:`BUILD_COLUMNS` (and any columns after them)."""
    return _build(tuple(row[:BUILD_WIDTH]))


@functools.lru_cache(maxsize=_PARSED)
def _build(row: tuple[Any, ...]) -> Build:
    build_id = row[0]
    token, expires_at = parse_lease(row[11], row[12], key=build_id)
    return Build(
        build_id=build_id,
        workspace_id=row[1],
        number=row[2],
        transition=parse_enum(Transition, row[3], table="builds", key=build_id, column="transition"),
        status=parse_enum(JobStatus, row[4], table="builds", key=build_id, column="status"),
        error=row[5],
        has_agent=None if row[6] is None else bool(row[6]),
        worker=row[7],
        parameters=_json_object(row[8], build_id, "parameters") or {},
        details=_json_object(row[9], build_id, "details"),
        reason=parse_enum(Reason, row[10], table="builds", key=build_id, column="reason"),
        lease_token=token,
        lease_expires_at=expires_at,
    )


def _json_object(text: str | None, key: str, column: str, *, table: str = "builds") -> dict[str, Any] | None:
    """A JSON object column (of ``builds`` unless ``table`` says); anything else names the row."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise CorruptStateError(table, key, column, text) from None
    if not isinstance(value, dict):
        raise CorruptStateError(table, key, column, text)
    return value


def workspace_row(row: Sequence[Any]) -> Workspace:
    """A workspace from its :data:`WORKSPACE_COLUMNS` (and any columns after them)."""
    return _workspace_row(tuple(row[:WORKSPACE_WIDTH]))


@functools.lru_cache(maxsize=_PARSED)
def _workspace_row(row: tuple[Any, ...]) -> Workspace:
    workspace_id = row[0]
    deadline = parse_deadline(row[5], row[6], row[7], row[8], key=workspace_id)
    deferred = parse_deferred(row[9], key=workspace_id)
    holds = parse_holds(row[10], key=workspace_id)
    return Workspace(
        workspace_id,
        row[1],
        row[2],
        row[3],
        deleted=bool(row[4]),
        deadline=deadline,
        deferred=deferred,
        holds=holds,
    )


@functools.lru_cache(maxsize=_PARSED)
def agent_row(workspace_id: str, build_number: int, lifecycle: str, endpoints: str | None = None) -> Agent:
    state = parse_enum(AgentLifecycle, lifecycle, table="agents", key=workspace_id, column="lifecycle")
    reached = _json_object(endpoints, workspace_id, "endpoints", table="agents") or {}
    return Agent(workspace_id, build_number, state, reached)


def facts(conn: sqlite3.Connection, workspace_id: str, at: int | None = None) -> WorkspaceFacts:
    """The facts of ``workspace_id`` (with ``at`` as their head when given); NotFoundError when
    there is no such workspace."""
    row = conn.execute(_FACTS, (workspace_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no workspace {workspace_id!r}")
    return facts_row(row, at)


def facts_row(row: tuple[Any, ...], at: int | None = None) -> WorkspaceFacts:
    """The facts in a row of :func:`facts_query` (with ``at`` as their head when given)."""
    W = WORKSPACE_WIDTH  # the workspace's columns come first, then the agent's three
    return WorkspaceFacts(
        _workspace_row(row[:W]),
        None if row[W + 3] is None else _build(row[W + 3 : W + 3 + BUILD_WIDTH]),
        None if row[W + 1] is None else agent_row(row[0], row[W], row[W + 1], row[W + 2]),
        at if at is not None else 0 if row[FACTS_WIDTH - 1] is None else row[FACTS_WIDTH - 1],
    )


def workspace_agent_row(row: tuple[Any, ...]) -> WorkspaceFacts:
    """The facts of a workspace read with its agent and no build (see ``Read.latest``)."""
    W = WORKSPACE_WIDTH  # the workspace's columns, then the agent's three
    return WorkspaceFacts(
        _workspace_row(row[:W]),
        None,
        None if row[W + 1] is None else agent_row(row[0], row[W], row[W + 1], row[W + 2]),
        0,
    )
