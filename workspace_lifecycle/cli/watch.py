"""``watch``: every state change and expiry warning, live, until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import anyio

from ..adapters.base import Store
from ..deadlines import in_words
from ..runtime import Lifecycle
from ..values import StateChange, StoreEvent
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
from ._shared import clock as clock_text


def add_parser(commands: Commands) -> None:
    watch = command(
        commands,
        "watch",
        "print state changes and expiry warnings live until Ctrl-C",
        "Print every state change of every chat (or of one, with --chat) as it happens, with "
        "its timestamp, and each deadline_approaching warning (a chat's warn_before ahead of an "
        "idle stop or a retention delete), until Ctrl-C; a warm pool's workspaces show as 'pool:NAME' until a chat claims one. Works across processes on a shared "
        "SQLite file. Refuses a missing SQLite file (it does not create one).",
        handle,
    )
    add_db(watch)
    watch.add_argument("--chat", type=chat_id, metavar="CHAT", help="only this chat")
    watch.add_argument(
        "--json", action="store_true", help="one JSON object per state change or warning, one per line"
    )


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


def _warning_json(event: StoreEvent, now: float) -> dict[str, Any]:
    return {
        "at": event.at,
        "chat_id": event.chat_id,
        "workspace_id": event.workspace_id,
        "event": event.kind.value,
        "reason": event.reason.value if event.reason is not None else None,
        "deadline": event.deadline,
        "next_deadline": in_words(event.armed, now),
        "seq": event.seq,
    }


def warning_line(event: StoreEvent, now: float) -> str:
    """A ``deadline_approaching`` event as ``watch`` prints it."""
    return f"{clock_text(event.at)}  {event.chat_id}  deadline approaching: {in_words(event.armed, now)}"


async def _warnings(lc: Lifecycle, chat: str | None, emit: Callable[[StoreEvent], None]) -> None:
    warnings = lc.warnings(chat)
    try:
        async for event in warnings:
            emit(event)
    finally:
        await warnings.aclose()


async def _watch(store: Store, chat: str | None, as_json: bool) -> int:
    async with opened(store), Lifecycle(store, fire_deadlines=False) as lc:
        what = f"chat {chat!r}" if chat else "every chat"
        out(f"watching {what} on {store.url}; Ctrl-C to stop", sys.stderr)
        async with anyio.create_task_group() as tg:
            if as_json:
                tg.start_soon(_warnings, lc, chat, lambda e: out_json(_warning_json(e, lc.clock())))
                await follow(lc, chat, lambda change: out_json(_change_json(change)))
            else:
                tg.start_soon(_warnings, lc, chat, lambda e: out(warning_line(e, lc.clock())))
                await follow(lc, chat, lambda change: out(watch_line(change)))
    return 0
