"""``logs``: what a chat's workspace build printed (the ``workspace_logs`` tool), or follow it."""

from __future__ import annotations

import argparse
import sys

import anyio

from ..adapters.base import Store
from ..buildlogs import MAX_PAGE_LINES
from ..runtime import Lifecycle
from ..values import ToolResult
from ._shared import (
    CliError,
    Commands,
    add_db,
    chat_id,
    command,
    database,
    interruptible,
    opened,
    out,
    out_json,
    owner,
)

#: How often ``--follow`` reads the log again (a log line appends no event to wake on).
FOLLOW_INTERVAL = 0.5


def add_parser(commands: Commands) -> None:
    logs = command(
        commands,
        "logs",
        "print what a chat's workspace build printed",
        "Print the log lines of CHAT's latest build (or of --build N, its number or build id), "
        "the last --limit of them, with the build's status and error on stderr; with --follow, "
        "keep printing new lines until Ctrl-C. The answer of the workspace_logs tool "
        "(--json: as JSON objects, one per page). Refuses a missing SQLite file.",
        handle,
    )
    add_db(logs)
    logs.add_argument("chat", type=chat_id, metavar="CHAT")
    logs.add_argument("--owner", type=owner, help="the chat's owner (default: whoever registered it)")
    logs.add_argument("--build", metavar="N", help="a build number or build id (default: the latest)")
    logs.add_argument(
        "--limit", type=int, default=100, help=f"lines to print at most (1 to {MAX_PAGE_LINES}; default 100)"
    )
    logs.add_argument("--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    logs.add_argument("--json", action="store_true", help="each page as one JSON object")


def handle(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_PAGE_LINES:
        raise CliError(f"--limit must be from 1 to {MAX_PAGE_LINES}, not {args.limit}", 2)
    return interruptible(_logs, database(args.db, create=False), args)


async def _logs(store: Store, args: argparse.Namespace) -> int:
    async with opened(store), Lifecycle(store, fire_deadlines=False) as lc:
        owner = args.owner
        if owner is None:
            chat = await store.get_chat(args.chat)
            owner = chat.owner if chat is not None else ""
        build = args.build
        result = await lc.logs(args.chat, owner=owner or "-", build=build, limit=args.limit)
        if result.is_error:
            raise CliError(result.text)
        _print(result, args.json, header=True)
        # Follow the build printed, even once a newer one comes, from the last line printed.
        build_id, after, status = (
            result.data["build_id"],
            result.data["next_after"],
            result.data["build_status"],
        )
        while args.follow:
            await anyio.sleep(FOLLOW_INTERVAL)
            page = await lc.logs(args.chat, owner=owner, build=build_id, limit=MAX_PAGE_LINES, after=after)
            if page.is_error:
                raise CliError(page.text)
            changed = page.data["build_status"] != status
            if page.data["lines"] or changed:
                _print(page, args.json, header=changed)
            after, status = page.data["next_after"], page.data["build_status"]
    return 0


def _print(page: ToolResult, as_json: bool, *, header: bool) -> None:
    data = page.data
    if as_json:
        out_json(data)
        return
    if header:
        what = f"build #{data['build_number']} ({data['transition']}) {data['build_status']}"
        error = f": {data['build_error']}" if "build_error" in data else ""
        gone = f"; {data['dropped_lines']} older lines were dropped" if data["dropped_lines"] else ""
        out(f"{what}{error}; {data['total_lines']} lines logged{gone}", sys.stderr)
    for line in data["lines"]:
        out(line)
