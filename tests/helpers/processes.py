"""What runs, read from ``/proc`` by the tests themselves (not by the library): whether a process
is alive, and which processes carry a workspace's marker."""

from __future__ import annotations

import os
from pathlib import Path


def running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def marked(workspace_id: str) -> list[int]:
    """Every running process whose environment names ``workspace_id`` in a workspace marker."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        for var in environ.split(b"\0"):
            if var.startswith(b"WL_WORKSPACE=") and var.split(b"/")[1:2] == [workspace_id.encode()]:
                pids.append(int(entry))
    return [pid for pid in pids if running(pid)]
