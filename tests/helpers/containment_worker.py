"""A ProcessProvisioner in a process of its own that stops between spawning a workspace's process
and recording it (tests/provisioners/test_process_containment.py SIGKILLs it there):

python containment_worker.py URL ROOT LEASE_SECONDS COMMAND...

It prints ``ready`` once open, then ``spawned PID`` when its first spawn is about to be recorded,
and sleeps there (blocking its loop) until killed. Nothing is mocked: the spawn is the library's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle._processes import Proc


class PausedBeforeTheRecord(wl.ProcessProvisioner):
    def _save(self, path: Path, proc: Proc, *, argv: Sequence[str]) -> None:
        print("spawned", proc.pid, flush=True)
        time.sleep(3600)  # the test SIGKILLs this process here


async def main(url: str, root: str, lease_seconds: float, command: list[str]) -> None:
    async with (
        wl.open_store(url) as store,
        PausedBeforeTheRecord(
            store, root=root, command=command, lease_seconds=lease_seconds, reap_leases=False
        ),
    ):
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:], backend="asyncio")
