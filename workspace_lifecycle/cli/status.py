"""``status``: every chat with its workspace state, latest build, agent and next deadline."""

from __future__ import annotations

import argparse
import time
from typing import Any

from .. import pools
from ..adapters.base import ChatRow, Store
from ..machine import Tracker, derive_state
from ..steps import agent_status, reached
from ..values import Reason, WorkspaceFacts
from ._shared import Commands, add_db, clock, command, database, opened, out, out_json, run

_HEADINGS = ("CHAT", "OWNER", "STATE", "LATEST BUILD", "AGENT", "NEXT DEADLINE")


def add_parser(commands: Commands) -> None:
    status = command(
        commands,
        "status",
        "list chats with their workspace state, latest build and agent",
        "A table of every chat in the database: owner, workspace state (derived from the stored "
        "rows), the latest build (number, transition, job status) and the agent's lifecycle, with "
        "where a running workspace is reached on a line of its own (--json: 'endpoints'). "
        "Refuses a missing SQLite file (it does not create one).",
        handle,
    )
    add_db(status)
    status.add_argument("--json", action="store_true", help="one JSON object per chat, one per line")


def handle(args: argparse.Namespace) -> int:
    return run(_list, database(args.db, create=False), args.json)


async def _list(store: Store, as_json: bool) -> int:
    async with opened(store):
        # A warm pool's holder is no chat: 'pool status' shows pools.
        chats = [r for r in await store.list_chats() if pools.pool_of(r.chat.chat_id) is None]
        rows = sorted(chats, key=lambda r: r.chat.chat_id)
    if as_json:
        for row in rows:
            out_json(_row_json(row))
    elif not rows:
        out(f"no chats in {store.url}")
    else:
        now = time.time()
        # Where a workspace is reached goes on a line of its own under its row (URLs are long).
        reached = {row.chat.chat_id: endpoints_of(row.facts) for row in rows}
        _table([_HEADINGS, *(_row_cells(row, now) for row in rows)], reached)
    return 0


def _table(lines: list[tuple[str, ...]], reached: dict[str, dict[str, str]]) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for i, line in enumerate(lines):
        out("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        endpoints = reached.get(line[0]) if i else None
        if endpoints:
            out("  endpoints: " + "  ".join(f"{name}={url}" for name, url in endpoints.items()))


def _row_cells(row: ChatRow, now: float) -> tuple[str, ...]:
    return (
        row.chat.chat_id,
        row.chat.owner,
        _state_cell(row),
        _build_cell(row.facts),
        _agent(row.facts) or "-",
        _deadline_cell(row.facts, now),
    )


def _row_json(row: ChatRow) -> dict[str, Any]:
    build = row.facts.latest_build if row.facts is not None else None
    deadline = row.facts.workspace.deadline if row.facts is not None else None
    return {
        "chat_id": row.chat.chat_id,
        "owner": row.chat.owner,
        "state": _state_cell(row),
        "latest_build": None
        if build is None
        else {
            "build_id": build.build_id,
            "number": build.number,
            "transition": build.transition.value,
            "status": build.status.value,
        },
        "agent": _agent(row.facts),
        "endpoints": endpoints_of(row.facts),
        "deadline": None
        if deadline is None
        else {
            "at": deadline.at,
            "reason": deadline.reason.value,
            "transition": deadline.transition.value,
            "warn_at": deadline.warn_at,
            "warned": deadline.warned,
        },
        "policy": {
            "idle_stop_after": row.chat.policy.idle_stop_after,
            "delete_after_stopped": row.chat.policy.delete_after_stopped,
            "warn_before": row.chat.policy.warn_before,
        },
    }


def _state_cell(row: ChatRow) -> str:
    if row.error is not None:
        return f"unreadable ({row.error})"
    return derive_state(row.facts).value if row.facts is not None else "no_workspace"


def _build_cell(facts: WorkspaceFacts | None) -> str:
    build = facts.latest_build if facts is not None else None
    if build is None:
        return "-"
    return f"#{build.number} {build.transition.value} {build.status.value}"


def _agent(facts: WorkspaceFacts | None) -> str | None:
    """The latest build's agent in a word, as the core says it (``None``: nothing to say)."""
    return agent_status(Tracker.from_facts(facts)) if facts is not None else None


def endpoints_of(facts: WorkspaceFacts | None) -> dict[str, str]:
    """Where the workspace is reached now, as every answer says it (the core's
    :func:`~workspace_lifecycle.steps.reached`; empty: nowhere, e.g. once it stopped). The one
    helper of ``status`` and ``list``."""
    if facts is None:
        return {}
    found: dict[str, str] = reached(Tracker.from_facts(facts)).get("endpoints", {})
    return found


def _deadline_cell(facts: WorkspaceFacts | None, now: float) -> str:
    deadline = facts.workspace.deadline if facts is not None else None
    if deadline is None:
        return "-"
    action = "idle stop" if deadline.reason is Reason.IDLE else "delete (retention)"
    left = deadline.at - now
    when = f"in {_duration(left)}" if left >= 0 else f"{_duration(-left)} overdue"
    return f"{action} at {clock(deadline.at)} ({when})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
