"""A process for the crash tests (run as a script, not collected); the parent SIGKILLs it.

Modes (argv[1]):

* ``start URL CHAT OWNER``: open the store and a Lifecycle, print ``ready``, call
  ``start_workspace`` (waiting) and print its result as one JSON line.
* ``provision URL PREFIX BUILD_SECONDS LEASE_SECONDS``: run a SimulatedProvisioner whose worker
  is named :func:`local_worker_name(PREFIX)`, claiming under leases of LEASE_SECONDS (with its
  LeaseReaper); print ``ready WORKER`` and run until killed.
"""

from __future__ import annotations

import json
import sys

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle.reaper import local_worker_name


def _say(*parts: object) -> None:
    print(*parts, flush=True)


async def start(url: str, chat: str, owner: str) -> None:
    async with wl.open_store(url) as store, wl.Lifecycle(store, build_timeout=60, agent_timeout=5) as lc:
        _say("ready")
        r = await lc.start_workspace(chat, owner=owner)
        _say(json.dumps({"is_error": r.is_error, "data": r.data}))


async def provision(url: str, prefix: str, build_seconds: float, lease_seconds: float) -> None:
    worker = local_worker_name(prefix)
    async with wl.open_store(url) as store, anyio.create_task_group() as tg:
        tg.start_soon(
            wl.SimulatedProvisioner(
                store, build_seconds=build_seconds, worker=worker, agent=None, lease_seconds=lease_seconds
            ).run
        )
        _say("ready", worker)


def main(argv: list[str]) -> None:
    if argv[1] == "start":
        anyio.run(start, argv[2], argv[3], argv[4], backend="asyncio")
    elif argv[1] == "provision":
        anyio.run(provision, argv[2], argv[3], float(argv[4]), float(argv[5]), backend="asyncio")
    else:
        raise SystemExit(f"unknown mode {argv[1]!r}")


if __name__ == "__main__":
    main(sys.argv)
