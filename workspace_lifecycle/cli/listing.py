"""``list``: one owner's chats, each with its workspace state, next deadline and endpoint (as
``gh repo list`` and ``coder list`` list what is yours). Read-only: it touches nothing."""

from __future__ import annotations

import argparse
import time
from typing import Any

from ..adapters.base import ChatRow, Store
from ._shared import Commands, add_db, command, database, opened, out, out_json, owner, run
from .status import _deadline_cell, _state_cell, _table, endpoints_of

_HEADINGS = ("CHAT", "STATE", "NEXT DEADLINE", "ENDPOINT")


def add_parser(commands: Commands) -> None:
    sub = command(
        commands,
        "list",
        "list one owner's chats with their state, next deadline and endpoint",
        "A table of OWNER's chats: the workspace state (derived from the stored rows), the next "
        "deadline (an idle stop or a retention delete, with how long until it is due) and the "
        "endpoints its agent reported while it runs (as status shows them). Reads only: listing is not activity, so "
        "it pushes no deadline. Refuses a missing SQLite file or PostgreSQL schema.",
        handle,
    )
    sub.add_argument("--owner", type=owner, required=True, help="whose chats (required)")
    add_db(sub)
    sub.add_argument("--json", action="store_true", help="one JSON object per chat, one per line")


def handle(args: argparse.Namespace) -> int:
    return run(_list, database(args.db, create=False), args.owner, args.json)


async def _list(store: Store, who: str, as_json: bool) -> int:
    async with opened(store):
        rows = sorted(
            (row for row in await store.list_chats() if row.chat.owner == who), key=lambda r: r.chat.chat_id
        )
    if as_json:
        for row in rows:
            out_json(_row_json(row))
    elif not rows:
        out(f"no chats of {who!r} in {store.url}")
    else:
        now = time.time()
        _table([_HEADINGS, *(_row_cells(row, now) for row in rows)], {})
    return 0


def _row_cells(row: ChatRow, now: float) -> tuple[str, ...]:
    endpoints = endpoints_of(row.facts)
    shown = " ".join(f"{name}={url}" for name, url in sorted(endpoints.items())) if endpoints else "-"
    return (row.chat.chat_id, _state_cell(row), _deadline_cell(row.facts, now), shown)


def _row_json(row: ChatRow) -> dict[str, Any]:
    deadline = row.facts.workspace.deadline if row.facts is not None else None
    return {
        "chat_id": row.chat.chat_id,
        "state": _state_cell(row),
        "deadline": None
        if deadline is None
        else {"at": deadline.at, "reason": deadline.reason.value, "transition": deadline.transition.value},
        "endpoints": endpoints_of(row.facts),
    }
