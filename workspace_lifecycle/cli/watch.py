"""``watch``: every state change, live, until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..adapters.base import Store
from ..runtime import Lifecycle
from ..values import StateChange
from ._shared import (
    Commands,
    add_db,
    chat_id,
    command,
    database,
    follow,
    interruptible,
    opened,
    out,
    out_json,
    shown_chat,
    watch_line,
)


def add_parser(commands: Commands) -> None:
    watch = command(
        commands,
        "watch",
        "print state changes live until Ctrl-C",
        "Print every state change of every chat (or of one, with --chat) as it happens, with "
        "its timestamp, until Ctrl-C; a warm pool's workspaces show as 'pool:NAME' until a chat "
        "claims one. Works across processes on a shared SQLite file. Refuses "
        "a missing SQLite file (it does not create one).",
        handle,
    )
    add_db(watch)
    watch.add_argument("--chat", type=chat_id, metavar="CHAT", help="only this chat")
    watch.add_argument("--json", action="store_true", help="one JSON object per state change, one per line")


def handle(args: argparse.Namespace) -> int:
    return interruptible(_watch, database(args.db, create=False), args.chat, args.json)


def _change_json(change: StateChange) -> dict[str, Any]:
    return {
        "at": change.at,
        "chat_id": shown_chat(change.chat_id),
        "workspace_id": change.workspace_id,
        "build_number": change.build_number,
        "from": change.from_state.value,
        "to": change.to_state.value,
        "event": change.event.value if change.event is not None else "resync",
        "reason": change.reason.value if change.reason is not None else None,
        "seq": change.seq,
    } | ({"endpoints": dict(change.endpoints)} if change.endpoints else {})


async def _watch(store: Store, chat: str | None, as_json: bool) -> int:
    async with opened(store), Lifecycle(store, fire_deadlines=False) as lc:
        what = f"chat {chat!r}" if chat else "every chat"
        out(f"watching {what} on {store.url}; Ctrl-C to stop", sys.stderr)
        if as_json:
            await follow(lc, chat, lambda change: out_json(_change_json(change)))
        else:
            await follow(lc, chat, lambda change: out(watch_line(change)))
    return 0
