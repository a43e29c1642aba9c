"""File-event wake-ups: how a SQLite store learns of other processes' commits without polling.

A commit appends frames to the ``-wal`` file; inotify (Linux, through ``inotify_simple``)
reports the write as ``IN_MODIFY``, and the loop wakes on the inotify descriptor
(``loop.add_reader``, what ``anyio.wait_readable`` does on asyncio, without a task of its own).
The signal is only a hint: the frames can be written before the commit is visible, so each
signal is confirmed by ``PRAGMA data_version`` (~3 µs; it changes only when another connection
commits) on the loop's connection, and when nothing changed yet it is checked again a moment
later (``RECHECKS``: 0.2, 1, 4, 16, 64 ms after the last signal). A change reads the head once
and rings the doorbell with it. While somebody waits, a safety check runs every ``SAFETY``
seconds (a commit whose visibility came after the last recheck); while nobody waits, nothing
runs: the descriptor is not watched and no timer is armed.

Measured (FACTS.md): inotify on the ``-wal`` file, then a ``data_version`` check, p50 0.15 ms,
p99 1.0 ms, 0.001% of a core idle, against p50 2.2 / p99 4.1 ms / 1.8% for a 4 ms poll.

The mode is chosen at open (:func:`choose`) and reported as ``store.wakeups``: ``"inotify"``,
or ``"poll"`` (the :class:`~.watcher.Watcher` thread polling ``data_version``) when inotify is
not there (another platform, ``inotify_simple`` missing, the inotify limits reached) or cannot
see other machines' writes (a network filesystem). A watched file replaced or unlinked while
open switches the store to polling, logged once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from ..base import Doorbell

__all__ = ["NETWORK_FILESYSTEMS", "FileWatch", "choose", "filesystem"]

log = logging.getLogger("workspace_lifecycle.sqlite")

#: Seconds after a signal at which ``data_version`` is checked again while it has not changed.
RECHECKS = (0.0002, 0.001, 0.004, 0.016, 0.064)
#: Seconds between safety checks while somebody waits.
SAFETY = 1.0

#: Filesystems whose other clients' writes inotify never reports.
NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "afs", "gfs2", "ocfs2"}
)


def filesystem(path: str) -> str | None:
    """The type of the filesystem holding ``path`` (``/proc/self/mounts``), if it can be told."""
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            table = [line.split() for line in mounts]
    except OSError:
        return None
    where = os.path.realpath(path)
    best, kind = "", None
    for fields in table:
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def choose(path: str, wanted: str) -> tuple[str, str]:
    """``("inotify" | "poll", why)`` for the database at ``path``; ``wanted`` is the store's
    ``wakeups`` option (``"auto"``, ``"inotify"`` or ``"poll"``)."""
    if wanted == "poll":
        return "poll", "asked for"
    if not sys.platform.startswith("linux"):
        return "poll", f"no inotify on {sys.platform}"
    try:
        import inotify_simple  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return "poll", "inotify_simple is not installed"
    kind = filesystem(os.path.dirname(os.path.abspath(path)) or ".")
    if kind is not None and (kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.")):
        return "poll", f"{kind} filesystem: inotify does not see other machines' writes"
    return "inotify", "local filesystem"


class FileWatch:
    """inotify on the database's ``-wal`` and main files, woken on the loop; the same face as
    :class:`~.watcher.Watcher` (``want``, ``unwanted``, ``check``, ``stop``, ``polls``).

    ``version()`` reads ``PRAGMA data_version`` on the loop's connection (``None``: not now,
    try again shortly); ``head()`` the log's head; ``lost(why)`` is called once when the files
    can no longer be watched (the store then polls).
    """

    def __init__(
        self,
        path: str,
        *,
        version: Callable[[], int | None],
        head: Callable[[], int | None],
        doorbell: Doorbell,
        lost: Callable[[str], object],
    ) -> None:
        from inotify_simple import INotify, flags

        self._path = path
        self._version_of = version
        self._head_of = head
        self._doorbell = doorbell
        self._lost = lost
        self.polls = 0  # data_version checks made
        self.signals = 0  # reads of the inotify descriptor that found events
        self.failure: str | None = None  # never set: a lost watch hands over to polling
        self._gone = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED
        self._attrib = flags.ATTRIB  # a link count changed (unlinked), or only a mode
        self._inotify: Any = INotify(nonblocking=True)
        self._files: list[tuple[str, int, int]] = []  # name, device, inode: what is watched
        try:
            mask = flags.MODIFY | flags.ATTRIB | flags.DELETE_SELF | flags.MOVE_SELF
            for name in (path + "-wal", path):
                found = os.stat(name)
                self._inotify.add_watch(name, mask)
                self._files.append((name, found.st_dev, found.st_ino))
        except BaseException:
            self._inotify.close()
            raise
        self._loop: asyncio.AbstractEventLoop | None = None
        self._version: int | None = None
        self._step = 0
        self._recheck: asyncio.TimerHandle | None = None
        self._safety: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def check(self) -> None:
        """Nothing to raise: a watch that fails hands over to polling."""

    def want(self, loop: asyncio.AbstractEventLoop) -> None:
        """Somebody waits: watch the descriptor (events from before are dropped: the waiter
        reads the head after this, and ``data_version`` is taken as of now)."""
        if self._loop is not None or self._inotify.closed:
            return
        self._inotify.read(timeout=0)
        self._version = self._version_of()
        self._loop = loop
        loop.add_reader(self._inotify.fileno(), self._signalled)
        self._safety = loop.call_later(SAFETY, self._safe)

    def unwanted(self) -> None:
        """Nobody waits: nothing runs until somebody does."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if not self._inotify.closed:
            loop.remove_reader(self._inotify.fileno())
        for timer in (self._recheck, self._safety):
            if timer is not None:
                timer.cancel()
        self._recheck = self._safety = None

    async def stop(self) -> None:
        self.unwanted()
        self._inotify.close()

    # --- on the loop --------------------------------------------------------------------------------

    def _signalled(self) -> None:
        try:
            events = self._inotify.read(timeout=0)
        except OSError as exc:
            self._give_up(f"reading inotify failed: {exc}")
            return
        if not events:
            return
        self.signals += 1
        for event in events:
            if event.mask & self._gone or (event.mask & self._attrib and self._replaced()):
                self._give_up("the database file was replaced or removed")
                return
        self._step = 0
        self._look()

    def _look(self) -> None:
        """Confirm with ``data_version``; if nothing changed yet, look again a moment later."""
        if self._loop is None:
            return
        self.polls += 1
        try:
            now = self._version_of()
            head = None if now is None or now == self._version else self._head_of()
        except Exception as exc:  # a disk I/O error, say: look again, the waiters are told by reads
            log.debug("SQLite wake-ups on %r: checking data_version failed (%s)", self._path, exc)
            now = None
        if now is None or (now != self._version and head is None):
            # Not readable this instant (a thread commit on its way to the loop): soon.
            self._arm(min(self._step, len(RECHECKS) - 1))
            return
        if head is not None:
            self._version = now
            self._doorbell.saw(head)
            self._arm(None)
            return
        self._arm(self._step if self._step < len(RECHECKS) else None)

    def _arm(self, step: int | None) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if step is not None and self._loop is not None:
            self._recheck = self._loop.call_later(RECHECKS[step], self._again)

    def _again(self) -> None:
        self._recheck = None
        self._step += 1
        self._look()

    def _safe(self) -> None:
        if self._loop is None:
            return
        self._safety = self._loop.call_later(SAFETY, self._safe)
        if self._recheck is None:
            self._step = len(RECHECKS)
            self._look()

    def _replaced(self) -> bool:
        """Whether a watched file is no longer the one at its name (unlinked, renamed over)."""
        for name, device, inode in self._files:
            try:
                found = os.stat(name)
            except OSError:
                return True
            if (found.st_dev, found.st_ino) != (device, inode) or found.st_nlink == 0:
                return True
        return False

    def _give_up(self, why: str) -> None:
        self.unwanted()
        self._inotify.close()
        log.warning("SQLite wake-ups on %r: %s; polling data_version from now on", self._path, why)
        self._lost(why)
