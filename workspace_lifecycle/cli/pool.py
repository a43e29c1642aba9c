"""``pool status``: every warm pool in the store with its members ready, warming and other."""

from __future__ import annotations

import argparse
import time

from .. import pools
from ..adapters.base import Store
from ._shared import Commands, add_db, command, database, opened, out, out_json, run

_HEADINGS = ("POOL", "READY", "WARMING", "OTHER")


def add_parser(commands: Commands) -> None:
    pool = command(
        commands,
        "pool",
        "warm pools: 'pool status' lists them",
        "Warm pools keep workspaces built for chats that do not exist yet "
        "(Lifecycle(pools=[Pool(...)]); create_workspace(..., pool=NAME) claims one). "
        "'pool status' lists every pool in the database with how many of its workspaces are "
        "ready to claim, warming (being built) and other (failed, stopped, expired or being "
        "deleted); 'pool status --json' prints one JSON object per pool. Refuses a missing "
        "SQLite file (it does not create one).",
        _usage,
    )
    actions = pool.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status",
        help="each pool's workspaces: ready, warming, other",
        description="Each warm pool in the database with how many of its workspaces are ready to "
        "claim, warming (being built) and other (failed, stopped, expired or being deleted).",
    )
    status.set_defaults(handler=handle)
    add_db(status)
    status.add_argument("--json", action="store_true", help="one JSON object per pool, one per line")


def _usage(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires an action
    return 2


def handle(args: argparse.Namespace) -> int:
    return run(_status, database(args.db, create=False), args.json)


async def _status(store: Store, as_json: bool) -> int:
    async with opened(store):
        names = sorted(
            name for row in await store.list_chats() if (name := pools.pool_of(row.chat.chat_id)) is not None
        )
        now = time.time()
        counts = [
            pools.counts(pools.Pool(name, size=0), await store.pool_members(name), now) for name in names
        ]
    if as_json:
        for c in counts:
            data = c.as_dict()
            del data["size"]  # the size is the runtime's to say, not the store's
            out_json(data)
    elif not counts:
        out(f"no warm pools in {store.url}")
    else:
        lines = [_HEADINGS, *((c.name, str(c.ready), str(c.warming), str(c.other)) for c in counts)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADINGS))]
        for line in lines:
            out("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0
