"""Run as an unprivileged user by tests/test_provisioner_isolation.py: a provisioner on ROOT
(memory store) deletes a workspace that made a read-only directory, then builds another.
Prints one JSON object: the answers and whether the first workspace's directory is gone.

    python unprivileged_delete.py ROOT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

import workspace_lifecycle as wl

HOSTILE = str(Path(__file__).with_name("hostile_workspace.py"))


async def main(root: str) -> None:
    with anyio.fail_after(30):
        async with (
            wl.open_store("memory://") as store,
            wl.Lifecycle(store) as lc,
            wl.ProcessProvisioner(
                store, root=root, command=[sys.executable, HOSTILE, "readonly", "{port}"], spawn_grace=0.1
            ),
        ):
            for chat in ("c1", "c2"):
                await lc.register_chat(chat, owner="alice")
            created = await lc.create_workspace("c1", owner="alice", name="dev")
            ws = (await store.get_chat("c1")).workspace_id  # type: ignore[union-attr]
            assert ws is not None
            made_ro = (Path(root) / ws / "ro").is_dir()
            deleted = await lc.delete_workspace("c1", owner="alice")
            gone = not (Path(root) / ws).exists()
            other = await lc.create_workspace("c2", owner="alice", name="dev2")
            await lc.delete_workspace("c2", owner="alice")
    print(
        json.dumps(
            {
                "created": created.data,
                "made_ro": made_ro,
                "deleted": deleted.data,
                "gone": gone,
                "other": other.data,
            }
        )
    )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
