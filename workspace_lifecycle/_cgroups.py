"""A cgroup (v2) per workspace build, where the machine lets the provisioner make one.

The provisioner looks for a writable cgroup v2 hierarchy (``cgroup2`` in
``/proc/self/mountinfo``: ``/sys/fs/cgroup`` on a unified host, ``/sys/fs/cgroup/unified`` on a
hybrid one) and makes ``workspace-lifecycle-<root id>/`` inside its own cgroup there. Each build's
processes (the held launcher and the log writer, before the launcher may run) go into
``w-<workspace id>/b<build>/``; the kernel keeps every descendant there, whatever it does to
its environment, and ``cgroup.kill`` ends them all at once. Where none is writable (no cgroup v2,
not root and no delegation), :meth:`Cgroups.find` answers ``None`` and the environment marker
alone finds the processes. Blocking calls (the cgroup filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Cgroups"]

log = logging.getLogger("workspace_lifecycle.process_provisioner")


def _mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted, if it is."""
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"]:
                return Path(left.split()[4])
    return None


def _own() -> str | None:
    """This process's cgroup in the v2 hierarchy (``0::/path``)."""
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return None


class Cgroups:
    """The cgroups of one provisioner root, under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def find(cls, root_id: str) -> Cgroups | None:
        """The root's cgroups if a cgroup v2 directory can be made for them, else ``None``."""
        mount, own = _mount(), _own()
        if mount is None or own is None:
            return None
        base = mount / own.lstrip("/") / f"workspace-lifecycle-{root_id}"
        try:
            base.mkdir(exist_ok=True)
            if not os.access(base / "cgroup.procs", os.W_OK):
                return None
        except OSError:
            return None
        cgroups = cls(base)
        cgroups.remove()  # the empty ones an earlier provisioner left
        base.mkdir(exist_ok=True)
        return cgroups

    def _dir(self, workspace_id: str, build: int | None = None) -> Path:
        path = self.base / f"w-{workspace_id}"
        return path if build is None else path / f"b{build}"

    def enter(self, workspace_id: str, build: int, pids: list[int]) -> bool:
        """Move ``pids`` (held: they run nothing yet) into the build's cgroup; False if it
        cannot be made (a name too long, say): the marker alone finds them then."""
        try:
            path = self._dir(workspace_id, build)
            path.mkdir(parents=True, exist_ok=True)
            for pid in pids:
                (path / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            log.warning("process provisioner: workspace %s: no cgroup (%s)", workspace_id, exc)
            return False
        return True

    def found(self, workspace_id: str | None = None, build: int | None = None) -> dict[int, tuple[str, int]]:
        """Every process in the root's cgroups (of ``workspace_id``, of its ``build``)."""
        return {
            pid: (named, number)
            for path, named, number in self._builds(workspace_id, build)
            for pid in _pids(path)
        }

    def signal(self, sig: signal.Signals, workspace_id: str | None = None, build: int | None = None) -> None:
        """``sig`` to every process in those cgroups (SIGKILL: ``cgroup.kill``, all at once)."""
        for path, _, _ in self._builds(workspace_id, build):
            if sig is signal.SIGKILL:
                with contextlib.suppress(OSError):
                    (path / "cgroup.kill").write_text("1")
                    continue
            for pid in _pids(path):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)

    def remove(self, workspace_id: str | None = None, build: int | None = None) -> None:
        """Remove the empty cgroups of ``workspace_id`` (of its ``build``; of every workspace);
        best effort. A cgroup whose last processes are still exiting is busy for a moment:
        each is tried a few times, a millisecond apart."""
        for path, _, _ in list(self._builds(workspace_id, build)):
            _rmdir(path)
        if build is None:
            tops = [self._dir(workspace_id)] if workspace_id is not None else self._tops()
            for top in tops:
                _rmdir(top)
        if workspace_id is None:
            _rmdir(self.base)

    def _tops(self) -> list[Path]:
        with contextlib.suppress(OSError):
            return [p for p in self.base.iterdir() if p.name.startswith("w-") and p.is_dir()]
        return []

    def _builds(self, workspace_id: str | None, build: int | None) -> Iterator[tuple[Path, str, int]]:
        """The build cgroups that exist: each path, its workspace id and build number."""
        with contextlib.suppress(OSError):
            for top in [self._dir(workspace_id)] if workspace_id is not None else self._tops():
                for path in top.iterdir():
                    number = path.name[1:]
                    if not (path.name.startswith("b") and number.isdigit() and path.is_dir()):
                        continue
                    if build is None or int(number) == build:
                        yield path, top.name[2:], int(number)


def _pids(path: Path) -> list[int]:
    """The processes in the cgroup at ``path`` (none if it is gone)."""
    try:
        return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _rmdir(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return  # gone already, or not empty: it is not ours to remove now
            time.sleep(0.001)
        else:
            return
