"""``touch``: activity in a chat from outside it, pushing its workspace's idle deadline (as
E2B's ``setTimeout``, Coder's ``schedule extend``). There is no ``extend --by``: the core pushes
the idle deadline to now + the chat's ``idle_stop_after`` (its policy, set by ``create
--idle-stop-after``), and has no deadline of another length to write."""

from __future__ import annotations

import argparse
import time

from ..adapters.base import Store
from ..errors import NotFoundError
from ..runtime import Lifecycle
from ._shared import (
    CliError,
    Commands,
    add_db,
    chat_id,
    clock,
    command,
    database,
    opened,
    out,
    out_json,
    owner,
    run,
)
from .status import _duration


def add_parser(commands: Commands) -> None:
    sub = command(
        commands,
        "touch",
        "push a chat's idle deadline, as a message in the chat would",
        "Count as activity in CHAT: its running workspace's idle stop moves to now + the chat's "
        "idle_stop_after (set with 'create --idle-stop-after S'). Prints the deadline armed after "
        "it, or says why there is none (no idle policy, the workspace not running). There is no "
        "'extend --by S': the deadline's length is the chat's policy. Refuses a missing SQLite "
        "file or PostgreSQL schema; another owner's chat is answered as an unknown one.",
        handle,
    )
    sub.add_argument("chat", type=chat_id, metavar="CHAT", help="the chat id")
    sub.add_argument("--owner", type=owner, required=True, help="the chat's owner (required)")
    add_db(sub)
    sub.add_argument("--json", action="store_true", help='print {"deadline": {"at", "reason"} or null}')


def handle(args: argparse.Namespace) -> int:
    return run(_touch, database(args.db, create=False), args)


async def _touch(store: Store, args: argparse.Namespace) -> int:
    async with opened(store), Lifecycle(store, fire_deadlines=False) as lc:
        try:
            deadline = await lc.touch(args.chat, owner=args.owner)
        except NotFoundError:
            raise CliError(f"no chat {args.chat!r} of {args.owner!r} in {store.url}") from None
        chat = await store.get_chat(args.chat)
    if args.json:
        armed = None if deadline is None else {"at": deadline.at, "reason": deadline.reason.value}
        out_json({"deadline": armed})
    elif deadline is not None:
        out(f"idle stop at {clock(deadline.at)} (in {_duration(deadline.at - time.time())})")
    elif chat is not None and chat.policy.idle_stop_after is None:
        out(f"{args.chat} has no idle stop (create it with --idle-stop-after S to have one)")
    else:
        out(f"{args.chat} has no idle deadline to push: its workspace is not running")
    return 0
