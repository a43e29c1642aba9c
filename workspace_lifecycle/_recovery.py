"""A restarted :class:`~workspace_lifecycle.process_provisioner.ProcessProvisioner`: what it
finds in its root (records, processes, the processes' markers) becomes events, as
:func:`~workspace_lifecycle.reconcile.reconcile` decides."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._containment import Marks, end_marked
from ._processes import KEPT, Proc, start_ticks
from ._workspace_files import load_state, mark_ended
from .adapters.base import Store
from .errors import CallerError, NotFoundError, StoreClosedError, StoreError
from .reconcile import Afterwards, Ended, Found, reconcile
from .values import AgentLifecycle

__all__ = ["Recovery"]

log = logging.getLogger("workspace_lifecycle.process_provisioner")


class Recovery:
    """The restart of a process provisioner (mixed into it)."""

    root: Path
    store: Store
    marks: Marks
    stop_grace: float

    if TYPE_CHECKING:

        def _track(self, proc: Proc, tg: anyio.abc.TaskGroup) -> None: ...
        async def _end(self, proc: Proc) -> list[int]: ...
        async def _resume_probe(self, proc: Proc) -> None: ...
        async def _keep_following(self, proc: Proc) -> None: ...
        async def _report_found(
            self, workspace_id: str, lifecycle: AgentLifecycle, lease: str | None
        ) -> None: ...

    async def _recover(self, tg: anyio.abc.TaskGroup) -> None:
        """What a provisioner finds in its root becomes events: a process of this root that
        still runs is adopted (watched, and probed if its agent is not ready yet, followed if it
        is); one that
        ended while no provisioner watched is reported; one whose workspace the store says is
        stopped or deleted is ended. This gathers the facts (the record, whether its process
        still runs, the store's rows) and executes what
        :func:`~workspace_lifecycle.reconcile.reconcile` decides from them."""
        running: dict[str, set[int]] = {}  # the builds whose processes run, by workspace (markers)
        for workspace_id, number in (await anyio.to_thread.run_sync(self.marks.found)).values():
            running.setdefault(workspace_id, set()).add(number)
        paths = await anyio.to_thread.run_sync(lambda: list(self.root.iterdir()))
        for path in sorted(paths):
            await self._isolated(path.name, self._recover_one(path, running.pop(path.name, set()), tg))
        for workspace_id, builds in sorted(running.items()):  # no directory left: only processes
            await self._isolated(workspace_id, self._leftovers(workspace_id, builds, tg))

    @staticmethod
    async def _isolated(name: str, recovery: Awaitable[object]) -> None:
        try:
            await recovery
        except StoreClosedError:
            raise
        except Exception as exc:  # one workspace's record or rows: never the provisioner's end
            log.warning("process provisioner: %s: %r; left alone", name, exc)

    async def _leftovers(self, workspace_id: str, builds: set[int], tg: anyio.abc.TaskGroup) -> None:
        """Processes of ``workspace_id`` run but no recorded process does (its end was
        recorded, or its directory is gone): decide, and end them."""
        try:
            facts = await self.store.workspace_facts(workspace_id)
        except NotFoundError:
            facts = None
        decision = reconcile(facts, Found(False, max(builds), leftovers=True, recorded=False))
        if decision.end_leftovers:
            self._end_leftovers(workspace_id, builds, tg)

    def _end_leftovers(self, workspace_id: str, builds: set[int], tg: anyio.abc.TaskGroup) -> None:
        for number in sorted(builds):
            log.warning(
                "process provisioner: workspace %s: processes of build %d outlived it; ending them",
                workspace_id,
                number,
            )
            tg.start_soon(self._end_build, workspace_id, number)

    async def _end_build(self, workspace_id: str, number: int) -> None:
        await self._isolated(workspace_id, end_marked(self.marks, workspace_id, number, self.stop_grace))

    async def _recover_one(self, path: Path, builds: set[int], tg: anyio.abc.TaskGroup) -> None:
        if (state := load_state(path)) is None:
            if builds:
                await self._leftovers(path.name, builds, tg)
            return
        workspace_id = path.name
        facts = await self.store.workspace_facts(workspace_id)
        pid, ticks = state["pid"], state["start_ticks"]
        pidfd = -1
        if start_ticks(pid) == ticks:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(pid)
        recorded = state.get("lease")
        if pidfd >= 0:  # its own build's processes are its, not leftovers
            builds = builds - {state["build_number"]}
        found = Found(
            alive=pidfd >= 0,
            build_number=state["build_number"],
            lease=recorded if isinstance(recorded, str) else None,
            leftovers=bool(builds),
        )
        decision = reconcile(facts, found)
        if decision.end_leftovers:
            self._end_leftovers(workspace_id, builds, tg)
        if isinstance(decision, Ended):
            await self._found_ended(path, state, decision)
            return
        proc = Proc(
            workspace_id,
            pid,
            pidfd,
            ticks,
            state["port"],
            state["build_number"],
            KEPT.pop(pid, None),
            decision.lease,
        )
        proc.built = True
        proc.ready = decision.ready
        proc.build_done.set()
        self._track(proc, tg)
        log.info("process provisioner: workspace %s: adopted pid %d", workspace_id, pid)
        if decision.afterwards is Afterwards.END:
            tg.start_soon(self._end, proc)  # the store says nothing should run here
        elif decision.afterwards is Afterwards.PROBE:
            tg.start_soon(self._resume_probe, proc)
        elif decision.ready:  # its agent is ready: follow it (disconnected when it stops answering)
            tg.start_soon(self._keep_following, proc)

    async def _found_ended(self, path: Path, state: Mapping[str, Any], decision: Ended) -> None:
        """A recorded process that ended while no provisioner watched: reap it if it was this
        interpreter's child, report its agent if :func:`reconcile` says so, record its end."""
        workspace_id, pid = path.name, state["pid"]
        kept = KEPT.pop(pid, None)
        if kept is not None:
            kept.poll()  # this interpreter's child, ended: reap it
        if decision.report is not None:
            log.warning(
                "process provisioner: workspace %s: pid %d ended while no provisioner watched; agent %s",
                workspace_id,
                pid,
                decision.report.value,
            )
            try:
                await self._report_found(workspace_id, decision.report, decision.lease)
            except (StoreError, CallerError) as exc:
                log.warning("process provisioner: workspace %s: %s", workspace_id, exc)
        mark_ended(path, state, "ended while no provisioner watched")
