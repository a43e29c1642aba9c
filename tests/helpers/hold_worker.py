"""A process holding a chat's turn, for the hold tests (a script, not collected); the parent
SIGKILLs it.

``hold_worker.py URL CHAT OWNER HOLD_SECONDS``: open the store and a Lifecycle (which fires
deadlines, as any replica does), enter ``lc.turn(CHAT)``, print ``held`` and hold the turn,
renewing its hold every third of HOLD_SECONDS, until killed.
"""

from __future__ import annotations

import sys

import anyio

import workspace_lifecycle as wl


async def hold(url: str, chat: str, owner: str, hold_seconds: float) -> None:
    async with (
        wl.open_store(url) as store,
        wl.Lifecycle(store, hold_seconds=hold_seconds) as lc,
        lc.turn(chat, owner=owner) as turn,
    ):
        assert turn.holding
        print("held", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(hold, sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), backend="asyncio")
