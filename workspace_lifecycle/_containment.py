"""Containment of a process workspace: every process it starts, however it detaches, is found
and ended with it (Linux: ``/proc``, pidfds).

Each process a workspace build starts carries a marker in its environment,
``WL_WORKSPACE=<root id>/<workspace id>/<build number>``, and so does every descendant: a
double fork, ``setsid`` or a new process group keep the environment. The provisioner finds a
workspace's processes by reading ``/proc/*/environ`` (readable as root or as the same user) and
ends them in rounds until none is left: SIGTERM, then SIGKILL after the grace, again while new
ones appear. The marker lives in the processes themselves, so it survives a provisioner's
restart (unlike a subreaper, whose orphans go to init when it dies). The build number keeps a
crashed build's leftovers apart from the next build's processes.

What it cannot do: a process that replaces its environment (``execve`` with a cleared
environment, or one that overwrites its own environment block) is not found; nor is a process
of another user when the provisioner is not root.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio

from ._cgroups import Cgroups

__all__ = ["MARKER", "Marks", "end_marked"]

#: The environment variable that marks a workspace's processes.
MARKER = "WL_WORKSPACE"
#: How often a waiting end looks again (seconds).
POLL = 0.05


class Marks:
    """The markers of one provisioner root, and the processes that carry them."""

    def __init__(self, root: Path) -> None:
        #: Names the root (its resolved path, hashed): two roots never share a marker.
        self.root_id = hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:16]
        #: A cgroup per build too, where the machine allows it (see :meth:`contain`).
        self.cgroups: Cgroups | None = None

    def contain(self) -> None:
        """Use cgroups (v2) as well, if one can be made here. Blocking."""
        self.cgroups = Cgroups.find(self.root_id)

    def enter(self, workspace_id: str, build: int, pids: list[int]) -> None:
        """Put a build's held processes in its cgroup (if cgroups are used). Blocking."""
        if self.cgroups is not None:
            self.cgroups.enter(workspace_id, build, pids)

    def forget(self, workspace_id: str | None, build: int | None = None) -> None:
        """Remove the empty cgroups of a workspace (of its ``build``; all, and the root's
        own if it is empty, for ``None``). Blocking."""
        if self.cgroups is not None:
            self.cgroups.remove(workspace_id, build)

    def marker(self, workspace_id: str, build_number: int) -> str:
        """The marker of the processes of ``workspace_id``'s build ``build_number``."""
        return f"{self.root_id}/{workspace_id}/{build_number}"

    def found(self, workspace_id: str | None = None, build: int | None = None) -> dict[int, tuple[str, int]]:
        """Every running process of the root (of ``workspace_id``, of its build ``build``): its
        pid, and the workspace id and build number its marker names. Blocking: reads ``/proc``."""
        out: dict[int, tuple[str, int]] = {}
        me = os.getpid()
        with contextlib.suppress(OSError), os.scandir("/proc") as entries:
            for entry in entries:
                if entry.name.isdigit() and int(entry.name) != me:
                    named = self._named(int(entry.name), workspace_id, build)
                    if named is not None:
                        out[int(entry.name)] = named
        if self.cgroups is not None:  # and those in its cgroups, whatever their environment
            out.update(self.cgroups.found(workspace_id, build))
        out.pop(me, None)
        return out

    def signal(
        self, sig: signal.Signals, workspace_id: str | None = None, build: int | None = None
    ) -> list[int]:
        """Send ``sig`` to every process :meth:`found` names (each by a pidfd, its marker read
        again through it: never a reused pid); the pids found. Blocking."""
        pids = sorted(self.found(workspace_id, build))
        if self.cgroups is not None:
            self.cgroups.signal(sig, workspace_id, build)
        for pid in pids:
            with contextlib.suppress(OSError):
                fd = os.pidfd_open(pid)
                try:
                    if self._named(pid, workspace_id, build) is not None:
                        signal.pidfd_send_signal(fd, sig)
                finally:
                    os.close(fd)
        return pids

    def _named(self, pid: int, workspace_id: str | None, build: int | None) -> tuple[str, int] | None:
        """The workspace and build the marker of ``pid`` names, if it is of this root (and of
        ``workspace_id``, and of ``build``); ``None`` if not, or if it cannot be read (a
        zombie's environment is empty)."""
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                data = f.read()
        except OSError:
            return None
        needle = os.fsencode(f"{MARKER}={self.root_id}/")
        for var in data.split(b"\x00"):
            if var.startswith(needle):
                named, _, number = os.fsdecode(var[len(needle) :]).rpartition("/")
                if not number.isdigit() or (workspace_id is not None and named != workspace_id):
                    return None
                if build is not None and int(number) != build:
                    return None
                return named, int(number)
        return None


async def end_marked(
    marks: Marks,
    workspace_id: str,
    build: int | None,
    grace: float,
    *,
    also: Callable[[signal.Signals], None] | None = None,
) -> list[int]:
    """End every process of ``workspace_id`` (of its build ``build``, if given): SIGTERM, SIGKILL to those left
    after ``grace`` seconds (anyio's clock), again while any is found, for at most ``grace``
    more seconds. Return the pids still running then (empty: every one ended). ``also`` is
    sent each signal too (the workspace's main process, by its pidfd)."""
    term = await anyio.to_thread.run_sync(marks.signal, signal.SIGTERM, workspace_id, build)
    if also is not None:
        also(signal.SIGTERM)
    if not term:
        await anyio.to_thread.run_sync(marks.forget, workspace_id, build)
        return []
    left = term
    deadline = anyio.current_time() + grace
    while left and anyio.current_time() < deadline:
        await anyio.sleep(POLL)
        left = sorted(await anyio.to_thread.run_sync(marks.found, workspace_id, build))
    deadline = anyio.current_time() + grace
    while left:
        if also is not None:
            also(signal.SIGKILL)
        await anyio.to_thread.run_sync(marks.signal, signal.SIGKILL, workspace_id, build)
        await anyio.sleep(POLL)
        left = sorted(await anyio.to_thread.run_sync(marks.found, workspace_id, build))
        if anyio.current_time() >= deadline:
            break
    if not left:
        await anyio.to_thread.run_sync(marks.forget, workspace_id, build)
    return left
