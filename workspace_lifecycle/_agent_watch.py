"""The agent of a process workspace, followed for as long as its process runs (mixed into
:class:`~workspace_lifecycle.process_provisioner.ProcessProvisioner`).

* Its **end** is noticed by waiting on its pidfd (an event; nothing polls) and reported
  (``off`` once ready, ``start_error`` before), unless a stop or delete build ended it.
* Its **readiness** is probed with a TCP connect to its port: before it is first ready, with
  probes that widen while nothing answers (``probe_interval`` at first); once it is ready, once
  per ``watch_interval`` (a sleep on the event loop's clock that its end cuts short), and
  :func:`~workspace_lifecycle.readiness.follow` decides when it is reported ``disconnected``
  (it stopped answering) and ``ready`` again (it answers again).

Every report carries the lease token of the build that started the process, so the store
refuses a late report of a process a newer build replaced; a refused report ends the watch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.abc

from ._containment import Marks, end_marked
from ._processes import Proc, exit_text, reap
from ._workspace_files import load_state, mark_ended, note
from .adapters.base import Store
from .errors import CallerError, StoreError
from .readiness import Followed, follow
from .values import AgentLifecycle

__all__ = ["AgentWatch"]

log = logging.getLogger("workspace_lifecycle.process_provisioner")

#: What became of an agent report: it landed, the store refused it (the lease is no longer the
#: agent's, the workspace is gone, or the process ended: nothing more is reported), or it failed
#: (the store stayed unavailable through the retries: the next change tries again).
Reported = Literal["landed", "refused", "failed"]


class AgentWatch:
    """The agents of a process provisioner's workspaces: their end and their readiness."""

    store: Store
    marks: Marks
    stop_grace: float
    ready_timeout: float
    probe_interval: float
    watch_interval: float
    pids: list[int]
    _procs: dict[str, Proc]

    if TYPE_CHECKING:

        def _probe_delays(self) -> Iterator[float]: ...
        def _dir_or_none(self, workspace_id: str) -> Path | None: ...
        async def _retrying(
            self, call: Callable[[], Awaitable[object]], *, until_it_lands: bool = False
        ) -> None: ...

    # --- its end ----------------------------------------------------------------------------

    def _track(self, proc: Proc, tg: anyio.abc.TaskGroup) -> None:
        self._procs[proc.workspace_id] = proc
        self.pids.append(proc.pid)
        tg.start_soon(self._watch, proc)

    async def _watch(self, proc: Proc) -> None:
        """Wait for the process to end (its pidfd turns readable: an event, not a poll), then
        report the agent if nobody asked for that end."""
        await anyio.wait_readable(proc.pidfd)
        proc.status = reap(proc)
        os.close(proc.pidfd)
        proc.pidfd = -1
        proc.exited.set()
        if self._procs.get(proc.workspace_id) is proc:
            del self._procs[proc.workspace_id]
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group ends with its leader
        try:
            await self._after_exit(proc)
            if not proc.ending:  # it ended on its own: what it started (a daemon) ends with it
                await end_marked(self.marks, proc.workspace_id, proc.build_number, self.stop_grace)
        except Exception:  # a workspace's files or its report: never the provisioner's end
            log.exception(
                "process provisioner: workspace %s: after pid %d ended", proc.workspace_id, proc.pid
            )

    async def _after_exit(self, proc: Proc) -> None:
        path = self._dir_or_none(proc.workspace_id)
        text = exit_text(proc.status)
        if path is not None:
            note(path, f"pid {proc.pid} {text}")
        if proc.ending:
            self._mark_ended(path, proc, text)
            return
        await proc.build_done.wait()
        if proc.built and not proc.ending:
            lifecycle = AgentLifecycle.OFF if proc.ready else AgentLifecycle.START_ERROR
            log.warning(
                "process provisioner: workspace %s: pid %d %s; agent %s",
                proc.workspace_id,
                proc.pid,
                text,
                lifecycle.value,
            )
            await self._report(proc, lifecycle, after_exit=True)
        self._mark_ended(path, proc, text)

    @staticmethod
    def _mark_ended(path: Path | None, proc: Proc, text: str) -> None:
        if path is None:
            return
        state = load_state(path)
        if state is not None and state["pid"] == proc.pid:
            mark_ended(path, state, text)

    # --- its readiness ----------------------------------------------------------------------

    async def _follow(self, proc: Proc, outcome: str) -> None:
        """Report the agent of a process whose start build succeeded: ``ready`` once the probe
        passes, ``start_timeout`` first if ``ready_timeout`` passes before; then follow it."""
        if outcome != "ready":
            outcome = await self._probe(proc, proc.started + self.ready_timeout)
        if outcome == "timeout":
            await self._report(proc, AgentLifecycle.START_TIMEOUT)
            outcome = await self._probe(proc, float("inf"))  # Coder's agent may still become ready
        if outcome == "ready" and await self._report(proc, AgentLifecycle.READY) != "refused":
            await self._keep_following(proc)

    async def _probe(self, proc: Proc, until: float) -> str:
        """``ready`` once a TCP connect to the port succeeds, ``exited`` once the process ended
        (woken by its end), ``timeout`` at ``until``."""
        delays = self._probe_delays()
        delay = next(delays)
        while True:
            if proc.exited.is_set() or proc.ending:
                return "exited"
            if await self._answers(proc):
                return "exited" if proc.exited.is_set() else "ready"
            left = until - anyio.current_time()
            if left <= 0:
                return "timeout"
            with anyio.move_on_after(min(delay, left)):
                await proc.exited.wait()
            delay = next(delays)

    @staticmethod
    async def _answers(proc: Proc) -> bool:
        """One look: a TCP connect to the process's port succeeds within a second."""
        try:
            with anyio.fail_after(1.0):
                stream = await anyio.connect_tcp("127.0.0.1", proc.port)
        except (OSError, TimeoutError):
            return False
        await stream.aclose()
        return True

    async def _keep_following(self, proc: Proc) -> None:
        """The agent of ``proc`` was reported ready: look once per ``watch_interval`` while the
        process runs (its end wakes this at once) and report what
        :func:`~workspace_lifecycle.readiness.follow` decides."""
        known = Followed()
        while True:
            with anyio.move_on_after(self.watch_interval):
                await proc.exited.wait()
            if proc.exited.is_set() or proc.ending:
                return
            after, report = follow(known, await self._answers(proc))
            if report is None:
                known = after
                continue
            log.info("process provisioner: workspace %s: agent %s", proc.workspace_id, report.value)
            outcome = await self._report(proc, report)
            if outcome == "refused":
                return
            if outcome == "landed":  # else the next look reports the change again
                known = after

    async def _resume_probe(self, proc: Proc) -> None:
        """An adopted process whose agent is not ready (not yet, or no longer): probe it until
        it is, then follow it."""
        ready = await self._probe(proc, float("inf")) == "ready"
        if ready and await self._report(proc, AgentLifecycle.READY) != "refused":
            await self._keep_following(proc)

    # --- reports --------------------------------------------------------------------------

    async def _report(self, proc: Proc, lifecycle: AgentLifecycle, *, after_exit: bool = False) -> Reported:
        """Report the agent of ``proc``'s build, in order, and never ``ready`` for a process
        that has ended or ``off`` for one a build ends."""
        async with proc.reports:
            if (proc.exited.is_set() and not after_exit) or proc.ending:
                return "refused"
            if lifecycle is AgentLifecycle.READY:
                proc.ready = True
            # A ready workspace is reached where its probe reached it: {port} on 127.0.0.1.
            reached = {"http": f"http://127.0.0.1:{proc.port}"} if lifecycle is AgentLifecycle.READY else None
            try:
                await self._retrying(
                    lambda: self.store.report_agent(
                        proc.workspace_id, lifecycle, lease=proc.lease, endpoints=reached
                    )
                )
            except (StoreError, CallerError) as exc:
                log.warning(
                    "process provisioner: workspace %s: agent %s: %s", proc.workspace_id, lifecycle.value, exc
                )
                return "refused" if isinstance(exc, CallerError) else "failed"
            return "landed"

    async def _report_found(self, workspace_id: str, lifecycle: AgentLifecycle, lease: str | None) -> None:
        await self._retrying(lambda: self.store.report_agent(workspace_id, lifecycle, lease=lease))
