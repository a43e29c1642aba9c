"""The output of a workspace process, shipped from its log file to its build's log in the store.

:class:`LogShipper` reads what the process appended to its file since the last round and
appends the complete lines with ``store.append_log`` under the build's lease, every
:data:`SHIP_INTERVAL` seconds and once more when the process ends (or when the provisioner asks,
before it fails a build, so that the failure's answer points at the lines). Memory is bounded
however much the process writes: a round reads at most :data:`MAX_ROUND_BYTES` (older output
beyond that is skipped, and a line says how many bytes), a partial line at most
:data:`~workspace_lifecycle.buildlogs.MAX_LINE_CHARS` bytes are kept; the store bounds the rest
(:mod:`~workspace_lifecycle.buildlogs`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio

from .adapters.base import Store
from .buildlogs import MAX_LINE_CHARS, MAX_LOG_BYTES
from .errors import CallerError, LeaseLostError, StoreClosedError, StoreError

__all__ = ["MAX_ROUND_BYTES", "SHIP_INTERVAL", "LogShipper"]

log = logging.getLogger("workspace_lifecycle.process_provisioner")

#: Seconds between two rounds while the process runs.
SHIP_INTERVAL = 0.5
#: The most a round reads: a build keeps no more than this anyway.
MAX_ROUND_BYTES = MAX_LOG_BYTES
#: Lines of the provisioner's own in the file (headers, notes) are not the process's output.
_OWN = b"--- workspace-lifecycle:"


class LogShipper:
    """Ships ``path`` from byte ``offset`` on to build ``build_id``'s log (see the module)."""

    def __init__(self, store: Store, build_id: str, lease: str | None, path: Path, offset: int) -> None:
        self.store, self.build_id, self.lease, self.path = store, build_id, lease, path
        self.offset = offset
        self.shipped = 0  # lines appended so far
        self._partial = b""
        self._lock = anyio.Lock()
        self._stopped = False  # the lease is gone: nothing more may be appended

    async def run(self, ended: anyio.Event) -> None:
        """Ship a round every :data:`SHIP_INTERVAL` seconds until ``ended``, then the rest."""
        while not ended.is_set() and not self._stopped:
            with anyio.move_on_after(SHIP_INTERVAL):
                await ended.wait()
            await self.ship(final=ended.is_set())

    async def ship(self, *, final: bool = False) -> None:
        """One round: what the process wrote since the last one (``final``: its last partial
        line too). A store error is logged, not raised: the process runs on, and so do its logs."""
        async with self._lock:
            if self._stopped:
                return
            lines = await anyio.to_thread.run_sync(self._read, final)
            if not lines:
                return
            try:
                await self.store.append_log(self.build_id, lines, lease=self.lease)
                self.shipped += len(lines)
            except (LeaseLostError, StoreClosedError):
                self._stopped = True  # the build is no longer this worker's (or the store is gone)
            except (StoreError, CallerError) as exc:
                log.warning("process provisioner: build %s: log lines lost: %s", self.build_id, exc)

    def _read(self, final: bool) -> list[str]:
        """The complete lines appended since the last round (on a worker thread)."""
        try:
            size = os.stat(self.path).st_size
            if size < self.offset:  # rotated or truncated: start over at its beginning
                self.offset, self._partial = 0, b""
            lines: list[str] = []
            skipped = size - self.offset - MAX_ROUND_BYTES
            if skipped > 0:  # more than a build keeps: only the newest part is read
                lines.append(f"[workspace-lifecycle: {skipped} bytes of output skipped]")
                self.offset, self._partial = self.offset + skipped, b""
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(size - self.offset)
        except OSError as exc:
            log.warning("process provisioner: build %s: cannot read its log: %s", self.build_id, exc)
            return []
        self.offset += len(data)
        *complete, partial = (self._partial + data).split(b"\n")
        if final or len(partial) > MAX_LINE_CHARS:
            complete, partial = [*complete, partial] if partial else complete, b""
        self._partial = partial
        lines += [
            line.decode("utf-8", "replace").rstrip("\r") for line in complete if not line.startswith(_OWN)
        ]
        return lines
