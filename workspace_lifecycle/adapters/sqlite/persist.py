"""A decided :class:`~workspace_lifecycle.writes.Write` persisted as SQL, generically: its
events (each numbered by its INSERT, in commit order), then its rows. It knows no rule: the
decision was made before, by :mod:`workspace_lifecycle.writes`."""

from __future__ import annotations

import json
import sqlite3

from ... import writes
from ...values import Build, Workspace, dump_holds
from .rows import head

__all__ = ["INSERT_EVENT", "Tx"]

INSERT_EVENT = (
    "INSERT INTO events (kind, workspace_id, chat_id, build_number, payload, at) VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_WORKSPACE = (
    "INSERT INTO workspaces (workspace_id, chat_id, owner, name, deleted, deadline_at, "
    "deadline_reason, deadline_warn_at, deadline_warned, deferred, holds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (workspace_id) DO UPDATE SET chat_id = excluded.chat_id, "
    "owner = excluded.owner, name = excluded.name, deleted = excluded.deleted, "
    "deadline_at = excluded.deadline_at, deadline_reason = excluded.deadline_reason, "
    "deadline_warn_at = excluded.deadline_warn_at, deadline_warned = excluded.deadline_warned, "
    "deferred = excluded.deferred, holds = excluded.holds"
)
_UPSERT_CHAT = (
    "INSERT INTO chats (chat_id, owner, workspace_id, idle_stop_after, delete_after_stopped, "
    "warn_before) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (chat_id) DO UPDATE SET owner = excluded.owner, "
    "workspace_id = excluded.workspace_id, idle_stop_after = excluded.idle_stop_after, "
    "delete_after_stopped = excluded.delete_after_stopped, warn_before = excluded.warn_before"
)
_UPDATE_BUILD = (
    "UPDATE builds SET status = ?, error = ?, has_agent = ?, worker = ?, details = ?,"
    " lease_token = ?, lease_expires_at = ? WHERE build_id = ?"
)
_INSERT_BUILD = (
    "INSERT INTO builds (build_id, workspace_id, number, transition, status, error, "
    "has_agent, worker, queued_seq, parameters, details, reason) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_LATEST_BUILD = "UPDATE workspaces SET latest_build_id = ? WHERE workspace_id = ?"
_UPSERT_AGENT = (
    "INSERT INTO agents (workspace_id, build_number, lifecycle, endpoints) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (workspace_id) DO UPDATE SET build_number = excluded.build_number, "
    "lifecycle = excluded.lifecycle, endpoints = excluded.endpoints"
)


_UPSERT_LOG = (
    "INSERT INTO build_logs (build_id, lines, bytes, dropped) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (build_id) DO UPDATE SET lines = excluded.lines, bytes = excluded.bytes, "
    "dropped = excluded.dropped"
)


class Tx:
    """One write's part of a transaction: its connection, and :meth:`persist` for what
    ``writes`` decided."""

    __slots__ = ("appended_head", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.appended_head: int | None = None  # the log's head after this write's events

    def persist(self, write: writes.Write) -> None:
        """Apply one decided write, generically: its events (each numbered by its INSERT, in
        commit order), then its rows."""
        conn = self.conn
        last = self.appended_head
        for e in write.events:
            last = conn.execute(
                INSERT_EVENT,
                (e.kind.value, e.workspace_id, e.chat_id, e.build_number, json.dumps(e.payload()), e.at),
            ).lastrowid
        self.appended_head = last
        if write.workspace is not None:
            conn.execute(_UPSERT_WORKSPACE, _workspace_values(write.workspace))
        if write.chat is not None:
            chat = write.chat
            conn.execute(
                _UPSERT_CHAT,
                (
                    chat.chat_id,
                    chat.owner,
                    chat.workspace_id,
                    chat.policy.idle_stop_after,
                    chat.policy.delete_after_stopped,
                    chat.policy.warn_before,
                ),
            )
        build = write.build
        if build is not None:
            if not write.queued:
                conn.execute(_UPDATE_BUILD, _build_update(build))
            else:  # a new build: the latest, claimed in the order it was queued
                conn.execute(_INSERT_BUILD, _build_insert(build, head(conn) if last is None else last))
                conn.execute(_LATEST_BUILD, (build.build_id, build.workspace_id))
        then = write.then
        if then is not None:  # queued after ``build`` finished: the request deferred behind it
            conn.execute(_INSERT_BUILD, _build_insert(then, head(conn) if last is None else last))
            conn.execute(_LATEST_BUILD, (then.build_id, then.workspace_id))
        if write.agent is not None:
            agent = write.agent
            reached = json.dumps(dict(agent.endpoints)) if agent.endpoints else None
            conn.execute(
                _UPSERT_AGENT, (agent.workspace_id, agent.build_number, agent.lifecycle.value, reached)
            )
        if write.log is not None:
            log = write.log
            conn.execute(_UPSERT_LOG, (log.build_id, json.dumps(list(log.lines)), log.bytes, log.dropped))
        if write.owner is not None:
            row = write.owner
            conn.execute(_UPSERT_OWNER, (row.owner, row.limits.running, row.limits.workspaces))


_UPSERT_OWNER = (
    "INSERT INTO owners (owner, running, workspaces) VALUES (?, ?, ?)"
    " ON CONFLICT (owner) DO UPDATE SET running = excluded.running, workspaces = excluded.workspaces"
)


def _workspace_values(ws: Workspace) -> tuple[object, ...]:
    deadline = ws.deadline
    return (
        ws.workspace_id,
        ws.chat_id,
        ws.owner,
        ws.name,
        ws.deleted,
        deadline.at if deadline else None,
        deadline.reason.value if deadline else None,
        deadline.warn_at if deadline else None,
        bool(deadline and deadline.warned),
        None if ws.deferred is None else ws.deferred.stored(),
        dump_holds(ws.holds),
    )


def _details(build: Build) -> str | None:
    return None if build.details is None else json.dumps(build.details)


def _build_update(build: Build) -> tuple[object, ...]:
    return (
        build.status.value,
        build.error,
        build.has_agent,
        build.worker,
        _details(build),
        build.lease_token,
        build.lease_expires_at,
        build.build_id,
    )


def _build_insert(build: Build, queued_seq: int) -> tuple[object, ...]:
    return (
        build.build_id,
        build.workspace_id,
        build.number,
        build.transition.value,
        build.status.value,
        build.error,
        build.has_agent,
        build.worker,
        queued_seq,
        json.dumps(dict(build.parameters)),
        _details(build),
        build.reason.value,
    )
