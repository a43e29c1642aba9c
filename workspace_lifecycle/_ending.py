"""Ending a process workspace's processes (mixed into
:class:`~workspace_lifecycle.process_provisioner.ProcessProvisioner`): a stop or delete build
ends every process of the workspace (its current one, anything left of older builds, however
it detached); a start build's lost lease ends the process spawned for it."""

from __future__ import annotations

import errno
import logging
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ._containment import Marks, end_marked
from ._processes import Proc
from ._workspace_files import remove_dir
from .provisioner import Held
from .values import Build, JobStatus, Transition

__all__ = ["Ending", "Outlived"]

log = logging.getLogger("workspace_lifecycle.process_provisioner")


class Outlived(OSError):
    """Processes of a workspace outlived its stop or delete (SIGKILL did not end them: another
    user's, or stuck in the kernel): the build fails with this sentence, naming them."""


class Ending:
    """Stop and delete builds, and the end of a lost start build's process."""

    marks: Marks
    stop_grace: float
    leases_lost: int
    _procs: dict[str, Proc]

    if TYPE_CHECKING:

        def workspace_dir(self, workspace_id: str) -> Path: ...
        async def _finish(
            self,
            held: Held,
            status: JobStatus,
            error: str | None,
            details: Mapping[str, Any] | None = None,
            *,
            has_agent: bool = False,
        ) -> bool: ...

    async def _lost(self, build: Build) -> None:
        """The lease on ``build`` is gone: its work was stopped; end the process spawned for it."""
        self.leases_lost += 1
        proc = self._procs.get(build.workspace_id)
        log.warning("process provisioner: build %s: lease lost; its work is stopped", build.build_id)
        if proc is None:
            return
        if proc.build_number == build.number:  # spawned for this start build
            proc.build_done.set()
        elif build.transition is Transition.START:
            return  # an older process, not this build's to end
        # A start build's process, or one a stop or delete build was ending when the lease
        # went (its SIGKILL after the grace must still come): end it.
        with anyio.CancelScope(shield=True):
            await self._end(proc)

    async def _stop(self, build: Build, held: Held) -> None:
        """End every process of the workspace (its current one and anything left of older
        builds); a delete then removes its directory. Processes that outlive that fail it."""
        proc = self._procs.get(build.workspace_id)
        left = await self._end(proc) if proc is not None else []
        left += await end_marked(self.marks, build.workspace_id, None, self.stop_grace)
        if left:
            raise Outlived(
                errno.EBUSY,
                f"{len(set(left))} of its processes outlived SIGKILL (pids {sorted(set(left))}); "
                "they still run",
            )
        if build.transition is Transition.DELETE:
            path = self.workspace_dir(build.workspace_id)
            await anyio.to_thread.run_sync(remove_dir, path)
        await self._finish(held, JobStatus.SUCCEEDED, None, has_agent=False)

    async def _end(self, proc: Proc) -> list[int]:
        """SIGTERM to the process, its group and every process of its build however it
        detached (its marker), SIGKILL after ``stop_grace``; return once the process ended,
        with the pids of its build that outlived SIGKILL too (none, nearly always)."""
        proc.ending = True
        left = await end_marked(
            self.marks, proc.workspace_id, proc.build_number, self.stop_grace, also=proc.signal
        )
        with anyio.move_on_after(self.stop_grace):
            await proc.exited.wait()
        if not proc.exited.is_set():
            log.warning(
                "process provisioner: workspace %s: pid %d outlived SIGTERM by %gs; killing it",
                proc.workspace_id,
                proc.pid,
                self.stop_grace,
            )
        proc.signal(signal.SIGKILL)  # also any child it left in its group
        await proc.exited.wait()
        return left
