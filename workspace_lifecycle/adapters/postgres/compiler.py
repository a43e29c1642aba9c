"""The statement compiler: a decided :class:`~workspace_lifecycle.writes.Write` in, one SQL
statement and its parameters out. Pure (no connection, no server): what it emits is tested
as text in ``tests/stores/test_postgres_compiler.py``.

One statement persists a write generically: a CTE of the guard, the row changes, the log
append and the NOTIFY. It returns one row (the new head) or, when the guard fails, none and
changes nothing.

* **The guard** (a :class:`~.guards.Seen`): the workspace row ``FOR UPDATE`` and the chat row
  ``FOR SHARE``, each only if its ``version`` is still the one read. Under READ COMMITTED a
  locking read waits for a concurrent writer of the row and then re-checks its condition
  against the row's newest committed version, not the statement's snapshot: a row changed
  after the snapshot fails the guard (the caller reads again), and an unchanged one passes
  however old the snapshot, so it never refuses spuriously. A guarded row is only ever changed
  by a writer holding its lock, so the unlocked reads of this statement's snapshot (the other
  rows of the workspace) are current too. Without a guard the caller's transaction holds the
  row locks already.
* **The rows**, each change gated on the guard: the workspace row (its ``version`` bumped, and
  ``deleted`` / ``latest_build`` when the write changes them), the chat, the build (inserted
  when queued, else updated), the agent (upserted).
* **The log**: only once every row change has run (their row locks are taken before the log
  lock, as in every writer, so no two writers wait on each other in a circle), take the
  transaction-scoped advisory lock of the log, then draw the events' ``seq``: ``nextval`` runs
  per row of ``lock CROSS JOIN VALUES``, so after the lock is granted, never from the snapshot.
  The lock is held until the commit is visible, so seqs follow commit order. ``pg_notify``
  carries the new head and is delivered at commit, on each of the given channels.

``skip_locked`` (in a batch): a guard row locked by another transaction fails the guard instead
of being waited for. ``new_chat``: the write's chat row is inserted (unless another writer
inserted it first: then the statement returns no row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from ...buildlogs import BuildLog
from ...values import Agent, Build, Chat, StoreEvent
from ...writes import Write
from .guards import Seen

__all__ = ["compile_write"]

Params = dict[str, Any]

#: The gate of every row change: the guard passed.
_GATE = "EXISTS (SELECT FROM ok)"

#: The statement's text by the write's shape (which rows it changes, how many events and
#: channels, the guard's kind): built once per shape, so a write only fills its parameters
#: (and psycopg's own caches, keyed by the text, then hit too).
_TEXTS: dict[tuple[object, ...], str] = {}


def compile_write(
    write: Write,
    seen: Seen | None,
    *,
    log_lock: tuple[int, int],
    channels: Sequence[str] = (),
    skip_locked: bool = False,
    new_chat: bool = False,
) -> tuple[str, Params]:
    """The statement that persists ``write`` under the guard ``seen`` (see the module
    docstring), holding the log's advisory lock ``log_lock`` while it appends, and notifying
    ``channels`` of the new head.

    >>> from workspace_lifecycle.values import Chat
    >>> query, params = compile_write(Write(events=(), chat=Chat("c1", "al", None)), None,
    ...                               log_lock=(1, 2), new_chat=True)
    >>> query.startswith("WITH ok AS MATERIALIZED (SELECT 1), p1 AS (INSERT INTO chats")
    True
    """
    params: Params = {"l1": log_lock[0], "l2": log_lock[1]}
    key = (
        None if seen is None else seen.chat_id is None,
        seen is not None and seen.unlimited_owner is not None,
        skip_locked,
        new_chat,
        write.workspace is not None,
        write.queued,
        write.build is not None,
        write.then is not None,
        write.chat is not None,
        write.agent is not None,
        len(write.events),
        len(channels),
    )
    text = _TEXTS.get(key)
    ctes = _guard(seen, " SKIP LOCKED" if skip_locked else "", params)
    changes = [_workspace_change(write, seen, params)]
    chat = len(changes)
    changes += [
        _chat_change(write.chat, new_chat, params),
        _build_change(write, params),
        _then_change(write.then, params),
        _agent_change(write.agent, params),
        _log_change(write.log, params),
    ]
    for i, event in enumerate(write.events):
        _event_params(i, event, params)
    params.update({f"chan{i}": channel for i, channel in enumerate(channels)})
    if text is None:
        text = _TEXTS[key] = _text(write, ctes, changes, chat, len(channels), new_chat)
    return text, params


def _text(
    write: Write, ctes: list[str], changes: list[str | None], chat: int, channels: int, new_chat: bool
) -> str:
    """The statement's text, from its guard's CTEs and its row changes."""
    ctes += [f"p{i} AS ({change})" for i, change in enumerate(changes) if change is not None]
    # Reading the changes runs them before the log lock (an unread one would run last).
    done = " UNION ALL ".join(f"SELECT 1 FROM p{i}" for i, c in enumerate(changes) if c is not None)
    ctes.append(f"done AS MATERIALIZED (SELECT count(*) FROM ({done or 'SELECT 1'}) d)")
    # A new chat that another writer inserted first: no row (the caller's transaction rolls back).
    inserted = f" WHERE EXISTS (SELECT FROM p{chat})" if new_chat and write.chat is not None else ""
    if not write.events:  # a lease renewal, a chat's policy: rows only, no log lock, no NOTIFY; head 0
        return f"WITH {', '.join(ctes)} SELECT 0 FROM ok, done{inserted}"
    ctes.append(
        f"lock AS MATERIALIZED (SELECT pg_advisory_xact_lock(%(l1)s, %(l2)s) FROM ok, done{inserted})"
    )
    ctes.append(
        "ins AS (INSERT INTO events (kind, workspace_id, chat_id, build_number, payload, at)"
        f" SELECT v.* FROM lock, (VALUES {_event_rows(len(write.events))}) AS v RETURNING seq)"
    )
    notify = "".join(f", pg_notify(%(chan{i})s, m::text)" for i in range(channels))
    return (
        f"WITH {', '.join(ctes)} SELECT m{notify} FROM (SELECT max(seq) AS m FROM ins) s WHERE m IS NOT NULL"
    )


def _guard(seen: Seen | None, skip: str, params: Params) -> list[str]:
    """The CTEs up to ``ok``: one row when the rows are still as ``seen`` (locked), else none."""
    if seen is None:
        return ["ok AS MATERIALIZED (SELECT 1)"]
    ctes = [
        "g_w AS MATERIALIZED (SELECT 1 FROM workspaces"
        f" WHERE workspace_id = %(g_w)s AND version = %(g_wv)s FOR UPDATE{skip})"
    ]
    params.update(g_w=seen.workspace_id, g_wv=seen.version)
    unlimited = ""
    if seen.unlimited_owner is not None:  # decided without counting: only while none are stored
        params["g_o"] = seen.unlimited_owner
        unlimited = (
            " AND NOT EXISTS (SELECT FROM owners WHERE owner = %(g_o)s"
            " AND (running IS NOT NULL OR workspaces IS NOT NULL))"
        )
    if seen.chat_id is None:
        return [*ctes, f"ok AS MATERIALIZED (SELECT 1 FROM g_w WHERE TRUE{unlimited})"]
    # The workspace first, then the chat: create_workspace takes them in that order.
    params.update(g_c=seen.chat_id, g_cv=seen.chat_version)
    return [
        *ctes,
        "g_c AS MATERIALIZED (SELECT 1 FROM chats WHERE chat_id = %(g_c)s"
        f" AND version = %(g_cv)s AND EXISTS (SELECT FROM g_w) FOR SHARE{skip})",
        f"ok AS MATERIALIZED (SELECT 1 FROM g_w WHERE EXISTS (SELECT FROM g_c){unlimited})",
    ]


def _workspace_change(write: Write, seen: Seen | None, params: Params) -> str | None:
    """The workspace row: inserted when new, else its version bumped with what the write changes."""
    ws, build = write.workspace, write.build
    queued = build if write.queued else None
    if ws is not None:
        params.update(
            w_chat=ws.chat_id,
            w_owner=ws.owner,
            w_name=ws.name,
            w_deleted=ws.deleted,
            w_deadline=ws.deadline.at if ws.deadline else None,
            w_reason=ws.deadline.reason.value if ws.deadline else None,
            w_warn_at=ws.deadline.warn_at if ws.deadline else None,
            w_warned=bool(ws.deadline and ws.deadline.warned),
            w_deferred=None if ws.deferred is None else Jsonb(ws.deferred.record()),
            w_holds=Jsonb([[hold.token, hold.expires_at] for hold in ws.holds]) if ws.holds else None,
        )
    if ws is not None and seen is None:
        # A new workspace (with its first build: one statement cannot update a row it inserts).
        # Under the caller's locks (no guard) a finish may queue the deferred build too.
        then = write.then
        params.update(
            w_id=ws.workspace_id,
            w_latest=queued.number if queued is not None else then.number if then is not None else 0,
        )
        return (
            "INSERT INTO workspaces (workspace_id, chat_id, owner, name, deleted, latest_build,"
            " deadline_at, deadline_reason, deadline_warn_at, deadline_warned, deferred, holds)"
            " VALUES (%(w_id)s, %(w_chat)s, %(w_owner)s, %(w_name)s, %(w_deleted)s, %(w_latest)s,"
            " %(w_deadline)s, %(w_reason)s, %(w_warn_at)s, %(w_warned)s, %(w_deferred)s, %(w_holds)s::jsonb)"
            " ON CONFLICT (workspace_id) DO UPDATE SET deleted = excluded.deleted,"
            " latest_build = greatest(workspaces.latest_build, excluded.latest_build),"
            " deadline_at = excluded.deadline_at, deadline_reason = excluded.deadline_reason,"
            " deadline_warn_at = excluded.deadline_warn_at, deadline_warned = excluded.deadline_warned,"
            " deferred = excluded.deferred, holds = excluded.holds,"
            " version = workspaces.version + 1 RETURNING 1"
        )
    then = write.then
    target = seen.workspace_id if seen is not None else (queued.workspace_id if queued else None)
    if target is None:
        return None
    sets = ["version = version + 1"]
    if ws is not None:
        assert ws.workspace_id == target, "a write changes the workspace it read"
        sets += [
            "deleted = %(w_deleted)s",
            "deadline_at = %(w_deadline)s",
            "deadline_reason = %(w_reason)s",
            "deadline_warn_at = %(w_warn_at)s",
            "deadline_warned = %(w_warned)s",
            "deferred = %(w_deferred)s",
            "holds = %(w_holds)s::jsonb",
        ]
        # A claimed pooled workspace takes its chat's id, owner and name; every other write
        # writes back the ones it read.
        sets += ["chat_id = %(w_chat)s", "owner = %(w_owner)s", "name = %(w_name)s"]
    if then is not None:
        assert then.workspace_id == target, "a write queues builds of the workspace it read"
        sets.append("latest_build = %(t_n)s")
    elif queued is not None:
        assert queued.workspace_id == target, "a write queues builds of the workspace it read"
        sets.append("latest_build = %(b_n)s")
    params["w_target"] = target
    return (
        f"UPDATE workspaces SET {', '.join(sets)} WHERE workspace_id = %(w_target)s AND {_GATE} RETURNING 1"
    )


def _chat_change(chat: Chat | None, new: bool, params: Params) -> str | None:
    """The chat row as the write leaves it: updated (its version bumped), or inserted if ``new``."""
    if chat is None:
        return None
    params.update(
        c_ws=chat.workspace_id,
        c_id=chat.chat_id,
        c_idle=chat.policy.idle_stop_after,
        c_retain=chat.policy.delete_after_stopped,
        c_warn=chat.policy.warn_before,
    )
    if new:
        params["c_owner"] = chat.owner
        return (
            "INSERT INTO chats (chat_id, owner, workspace_id, idle_stop_after, delete_after_stopped,"
            " warn_before) SELECT %(c_id)s::text, %(c_owner)s::text, %(c_ws)s::text,"
            " %(c_idle)s::double precision, %(c_retain)s::double precision, %(c_warn)s::double precision"
            f" WHERE {_GATE} ON CONFLICT (chat_id) DO NOTHING RETURNING 1"
        )
    return (
        "UPDATE chats SET workspace_id = %(c_ws)s, idle_stop_after = %(c_idle)s,"
        " delete_after_stopped = %(c_retain)s, warn_before = %(c_warn)s, version = version + 1"
        f" WHERE chat_id = %(c_id)s AND {_GATE} RETURNING 1"
    )


def _build_change(write: Write, params: Params) -> str | None:
    """The build: inserted when queued, else updated."""
    build = write.build
    if build is None:
        return None
    params.update(
        b_id=build.build_id,
        b_ws=build.workspace_id,
        b_n=build.number,
        b_transition=build.transition.value,
        b_status=build.status.value,
        b_error=build.error,
        b_has_agent=build.has_agent,
        b_worker=build.worker,
        b_parameters=Jsonb(dict(build.parameters)),
        b_details=None if build.details is None else Jsonb(dict(build.details)),
        b_reason=build.reason.value,
        b_lease=build.lease_token,
        b_lease_until=build.lease_expires_at,
    )
    if write.queued:
        return (
            "INSERT INTO builds (build_id, workspace_id, number, transition, status, error,"
            " has_agent, worker, parameters, details, reason) SELECT %(b_id)s::text, %(b_ws)s::text,"
            " %(b_n)s::integer, %(b_transition)s::text, %(b_status)s::text, %(b_error)s::text,"
            " %(b_has_agent)s::boolean, %(b_worker)s::text, %(b_parameters)s::jsonb,"
            f" %(b_details)s::jsonb, %(b_reason)s::text WHERE {_GATE} RETURNING 1"
        )
    return (
        "UPDATE builds SET status = %(b_status)s, error = %(b_error)s,"
        " has_agent = %(b_has_agent)s, worker = %(b_worker)s, details = %(b_details)s,"
        " lease_token = %(b_lease)s, lease_expires_at = %(b_lease_until)s"
        f" WHERE build_id = %(b_id)s AND {_GATE} RETURNING 1"
    )


def _then_change(then: Build | None, params: Params) -> str | None:
    """The build queued after the write's build finished (a request deferred behind it): inserted."""
    if then is None:
        return None
    params.update(
        t_id=then.build_id,
        t_ws=then.workspace_id,
        t_n=then.number,
        t_transition=then.transition.value,
        t_status=then.status.value,
        t_parameters=Jsonb(dict(then.parameters)),
        t_reason=then.reason.value,
    )
    return (
        "INSERT INTO builds (build_id, workspace_id, number, transition, status, parameters, reason)"
        " SELECT %(t_id)s::text, %(t_ws)s::text, %(t_n)s::integer, %(t_transition)s::text,"
        f" %(t_status)s::text, %(t_parameters)s::jsonb, %(t_reason)s::text WHERE {_GATE} RETURNING 1"
    )


def _agent_change(agent: Agent | None, params: Params) -> str | None:
    """The agent, upserted."""
    if agent is None:
        return None
    params.update(
        a_ws=agent.workspace_id,
        a_n=agent.build_number,
        a_lifecycle=agent.lifecycle.value,
        a_endpoints=Jsonb(dict(agent.endpoints)) if agent.endpoints else None,
    )
    return (
        "INSERT INTO agents (workspace_id, build_number, lifecycle, endpoints)"
        f" SELECT %(a_ws)s::text, %(a_n)s::integer, %(a_lifecycle)s::text, %(a_endpoints)s::jsonb"
        f" WHERE {_GATE} ON CONFLICT (workspace_id) DO UPDATE SET build_number = excluded.build_number,"
        " lifecycle = excluded.lifecycle, endpoints = excluded.endpoints RETURNING 1"
    )


def _log_change(log: BuildLog | None, params: Params) -> str | None:
    """A build's log, upserted whole."""
    if log is None:
        return None
    params.update(l_id=log.build_id, l_lines=Jsonb(list(log.lines)), l_bytes=log.bytes, l_dropped=log.dropped)
    return (
        "INSERT INTO build_logs (build_id, lines, bytes, dropped)"
        " SELECT %(l_id)s::text, %(l_lines)s::jsonb, %(l_bytes)s::integer, %(l_dropped)s::bigint"
        f" WHERE {_GATE} ON CONFLICT (build_id) DO UPDATE SET lines = excluded.lines,"
        " bytes = excluded.bytes, dropped = excluded.dropped RETURNING 1"
    )


def _event_rows(count: int) -> str:
    """The ``VALUES`` rows of ``count`` events (their parameters: :func:`_event_params`)."""
    return ", ".join(
        f"(%(e{i}k)s, %(e{i}w)s, %(e{i}c)s, %(e{i}n)s::integer, %(e{i}p)s::jsonb, %(e{i}at)s::double precision)"
        for i in range(count)
    )


def _event_params(i: int, event: StoreEvent, params: Params) -> None:
    """The parameters of the ``i``-th event's ``VALUES`` row."""
    params[f"e{i}k"] = event.kind.value
    params[f"e{i}w"] = event.workspace_id
    params[f"e{i}c"] = event.chat_id
    params[f"e{i}n"] = event.build_number
    params[f"e{i}p"] = Jsonb(event.payload())
    params[f"e{i}at"] = event.at
