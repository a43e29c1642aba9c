"""A real provisioner: each workspace is a directory under a root and a child process in it.

:class:`ProcessProvisioner` claims builds with the same store calls as any provisioner
(``claim_build``, ``finish_build``, ``report_agent``) and does them for real:

* a **start** build gives the workspace a free TCP port on 127.0.0.1 and spawns its command
  (an argv list, never a shell string: ``{port}`` in any argument is replaced by the port, and
  ``$PORT`` is in its environment) in the workspace's directory, with its output appended to
  ``workspace.log`` there (bounded: ``log_max_bytes``, then rotated to ``workspace.log.1``).
  The build succeeds once the process is spawned and has lived through
  ``spawn_grace`` seconds (or answered the probe sooner); a process that exits within them fails
  the build, with its exit status and its last lines of output as the reason. The agent is
  reported ``ready`` when the probe passes (a TCP connect to the port), ``start_timeout`` when it
  has not passed ``ready_timeout`` seconds after the spawn (probing goes on, and a later pass
  still reports ``ready``), and ``start_error`` when the process exits after the build
  succeeded but before it was ready.
* a **ready** agent is followed while its process runs: the probe looks again every
  ``watch_interval`` seconds (a sleep on the event loop's clock, cut short by the process's
  end), reports it ``disconnected`` once it misses two looks in a row (the workspace leaves
  ``agent_ready``; the tools answer ``agent_status: "not_ready"``) and ``ready`` again once it
  answers (:mod:`~workspace_lifecycle.readiness` decides; ``_agent_watch`` looks and reports).
* a **stop** build ends the process group (SIGTERM, then SIGKILL after ``stop_grace``) and keeps
  the directory; a **delete** build also removes the directory.
* a process that ends on its own while its agent is ready (a crash, a ``kill -9``) is noticed
  by waiting on it (a pidfd, an event; nothing polls) and its agent is reported ``off``.
* the pid of each process (and its start time, to tell a reused pid) is kept in
  ``workspace.json`` in its directory. A provisioner starting on a root adopts the processes
  that still run and reports those that died while no provisioner watched.

* every claim is a **lease**, renewed while the build runs
  (:func:`~workspace_lifecycle.provisioner.holding`); a provisioner that loses it (it was
  stopped, hung or cut off longer than the lease) stops the build's work and ends the process
  it spawned for it, and the store refuses its token from then on. Agent reports carry the
  token of the build that started the process, so a late report of an old process cannot
  change the agent of a newer build. A :class:`~workspace_lifecycle.reaper.LeaseReaper` runs
  beside the claim loop (``reap_leases``) and fails the builds of provisioners that stopped.

Linux only (``os.pidfd_open``). One provisioner per root, on one host.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import anyio
import anyio.abc

from . import checks, writes
from ._agent_watch import AgentWatch
from ._containment import MARKER, Marks
from ._ending import Ending
from ._log_shipper import LogShipper
from ._processes import KEPT, Proc, exit_text, free_port, release, save_record, spawn, start_ticks
from ._recovery import Recovery
from ._service import BackgroundService
from ._workspace_files import LOG_FILE, MAX_REASON, STATE_FILE, note, tail
from .adapters.base import DEFAULT_LEASE_SECONDS, Store
from .backoff import Backoff
from .errors import CallerError, StoreClosedError, StoreError
from .provisioner import Held, claims, holding, retrying
from .reaper import LeaseReaper
from .values import Build, JobStatus, Transition

__all__ = ["LOG_FILE", "STATE_FILE", "ProcessProvisioner", "UnusableRoot", "WorkspaceRefused"]

log = logging.getLogger("workspace_lifecycle.process_provisioner")

#: What a valid environment variable name looks like (POSIX portable names).
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class WorkspaceRefused(ValueError):
    """A build the provisioner will not do: its workspace id would leave the root, or its
    parameters cannot be environment variables. The build fails with this sentence."""


class UnusableRoot(OSError):
    """The provisioner's root cannot be used (it cannot be created, is not a directory, or is
    not writable): raised at open, with the path and the reason, before anything is claimed."""


class ProcessProvisioner(BackgroundService, AgentWatch, Ending, Recovery):
    """Runs each workspace as a real process: see the module's description.

    ``root`` is the directory that holds one directory per workspace (named by its workspace
    id; created if missing). ``command`` is the argv template; ``env`` adds environment
    variables to the provisioner's own; build parameters are added as
    ``parameter_prefix + name`` (``WL_PARAM_region``), and a name that is not a valid
    environment variable name fails the build. The process's output goes to ``workspace.log``
    through a log writer that keeps it under ``log_max_bytes`` (8 MiB): past it the log becomes
    ``workspace.log.1`` and a new one begins, so the two keep the latest output. A ready
    agent's port is probed again every ``watch_interval`` seconds (1 s) while it runs.

    >>> ProcessProvisioner(None, root=".", command="python -m http.server")  # type: ignore[arg-type]
    Traceback (most recent call last):
    ...
    TypeError: command must be an argv list (such as ['python', '-m', 'http.server', '{port}']), not a string
    """

    def __init__(
        self,
        store: Store,
        *,
        root: str | os.PathLike[str],
        command: Sequence[str],
        ready_timeout: float = 30.0,
        stop_grace: float = 5.0,
        spawn_grace: float = 0.5,
        probe_interval: float = 0.05,
        watch_interval: float = 1.0,
        env: Mapping[str, str] | None = None,
        parameter_prefix: str = "WL_PARAM_",
        output_lines: int = 10,
        log_max_bytes: int = 8 * 2**20,
        worker: str | None = None,
        retries: int = 8,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        reap_leases: bool = True,
    ) -> None:
        if isinstance(command, (str, bytes)):
            raise TypeError(
                "command must be an argv list (such as ['python', '-m', 'http.server', '{port}']), not a string"
            )
        if not command or not all(isinstance(arg, str) for arg in command):
            raise ValueError("command must be a non-empty list of strings")
        if parameter_prefix and not ENV_NAME.fullmatch(parameter_prefix):
            raise ValueError(f"parameter_prefix {parameter_prefix!r} does not start a valid environment name")
        if not hasattr(os, "pidfd_open"):
            raise RuntimeError("ProcessProvisioner needs Linux (os.pidfd_open) to watch its processes")
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise ValueError(
                f"root must name a directory (it holds one directory per workspace), not {root!r}"
            )
        self.store = store
        self.root = Path(root)
        #: The markers of this root's processes (see ``_containment``).
        self.marks = Marks(self.root)
        self.command = list(command)
        self.ready_timeout = checks.seconds("ready_timeout", ready_timeout)
        self.stop_grace = checks.seconds("stop_grace", stop_grace)
        self.spawn_grace = checks.seconds("spawn_grace", spawn_grace, zero=True)
        self.probe_interval = checks.seconds("probe_interval", probe_interval)
        # Probes come closer at first and wider apart while nothing answers (up to a second,
        # or the interval if that is longer).
        self._probes = Backoff(first=self.probe_interval, factor=1.5, cap=max(1.0, self.probe_interval))
        self.watch_interval = checks.seconds("watch_interval", watch_interval)
        self.env = dict(env or {})
        self.parameter_prefix = parameter_prefix
        self.output_lines = checks.count("output_lines", output_lines)
        self.log_max_bytes = checks.count("log_max_bytes", log_max_bytes, most=2**40)
        if self.log_max_bytes < 4096:
            raise ValueError(f"log_max_bytes must be at least 4096, not {self.log_max_bytes}")
        self.worker = worker or f"process:{socket.gethostname()}:{os.getpid()}"
        self.retries = checks.count("retries", retries)
        self.lease_seconds = writes.check_lease_seconds(lease_seconds)
        self.reaper = LeaseReaper(store) if reap_leases else None
        #: Builds whose lease this provisioner lost (their work was stopped).
        self.leases_lost = 0
        self._procs: dict[str, Proc] = {}
        self._recovered: anyio.Event | None = None  # set once _recover is done (see __aenter__)
        self.builds_done = 0
        #: Every pid this provisioner spawned or adopted (tests check that each one has ended).
        self.pids: list[int] = []

    # --- paths and environment ------------------------------------------------------------

    def workspace_dir(self, workspace_id: str) -> Path:
        """The directory of ``workspace_id``: a direct child of the root that is not a symlink;
        anything else (``..``, a separator, a symlink) raises :class:`WorkspaceRefused`.

        >>> ProcessProvisioner(None, root="/srv/ws", command=["x"]).workspace_dir("../etc")  # type: ignore[arg-type]
        Traceback (most recent call last):
        ...
        workspace_lifecycle.process_provisioner.WorkspaceRefused: workspace id '../etc' would leave the root /srv/ws
        """
        root = self.root.resolve()
        bad = not workspace_id or workspace_id in (".", "..") or any(c in workspace_id for c in "/\\\x00")
        path = root / workspace_id if not bad else root
        if bad or path.is_symlink() or path.resolve().parent != root:
            raise WorkspaceRefused(f"workspace id {workspace_id!r} would leave the root {self.root}")
        return path

    def environment(self, port: int, parameters: Mapping[str, str]) -> dict[str, str]:
        """The process's environment: the provisioner's, ``env``, ``PORT`` and the parameters.

        >>> p = ProcessProvisioner(None, root=".", command=["x"])  # type: ignore[arg-type]
        >>> {k: v for k, v in p.environment(8000, {"region": "eu"}).items() if k in ("PORT", "WL_PARAM_region")}
        {'PORT': '8000', 'WL_PARAM_region': 'eu'}
        >>> p.environment(8000, {"a-b": "1"})
        Traceback (most recent call last):
        ...
        workspace_lifecycle.process_provisioner.WorkspaceRefused: parameter 'a-b' cannot be an environment variable: use letters, digits and _, not starting with a digit
        """
        out = {**os.environ, **self.env, "PORT": str(port)}
        for name, value in parameters.items():
            if not ENV_NAME.fullmatch(self.parameter_prefix + name) or (
                not self.parameter_prefix and not name
            ):
                raise WorkspaceRefused(
                    f"parameter {name!r} cannot be an environment variable: "
                    "use letters, digits and _, not starting with a digit"
                )
            if not self.parameter_prefix and name == "PORT":
                raise WorkspaceRefused("parameter 'PORT' would hide the port the provisioner gives")
            out[self.parameter_prefix + name] = value
        return out

    def _probe_delays(self) -> Iterator[float]:
        """The pauses between probes of an agent not ready yet."""
        return self._probes.delays()

    # --- the loop ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start, and return once what the root holds is adopted or reported; an unusable root
        raises :class:`UnusableRoot` first (nothing is started)."""
        await anyio.to_thread.run_sync(self._open_root)
        self._recovered = recovered = anyio.Event()
        await super().__aenter__()
        await recovered.wait()
        return self

    async def run(self) -> None:
        """Adopt what the root holds, then claim and do builds until cancelled (or the store
        closes). Processes keep running when the provisioner stops: the next one adopts them."""
        try:
            async with anyio.create_task_group() as tg:
                try:
                    await self._recover(tg)
                except StoreClosedError:
                    return
                finally:
                    if self._recovered is not None:
                        self._recovered.set()
                if self.reaper is not None:
                    tg.start_soon(self.reaper.run)
                async for build in claims(self.store, self.worker, lease_seconds=self.lease_seconds):
                    tg.start_soon(self._serve, build, tg)
                tg.cancel_scope.cancel()  # the store closed: the reaper and the watchers too
        finally:
            for proc in self._procs.values():  # left running: a provisioner started later adopts them
                if proc.popen is not None and not proc.exited.is_set():
                    KEPT[proc.pid] = proc.popen
                if proc.pidfd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(proc.pidfd)
            self._procs.clear()
            self.marks.forget(None)  # the empty cgroups (those of running processes stay)

    async def _serve(self, build: Build, tg: anyio.abc.TaskGroup) -> None:
        """One task per build, from claim to finish, under the build's lease; the agent reports
        that follow a start build run on after it."""
        try:
            async with holding(self.store, build, lease_seconds=self.lease_seconds) as held:
                started = None
                try:
                    if build.transition is Transition.START:
                        started = await self._start(build, held, tg)
                    else:
                        await self._stop(build, held)
                except (StoreError, CallerError):
                    raise
                except Exception as exc:  # one workspace's trouble is its build's, never ours
                    await self._failed(build, held, exc)
            if held.lost:
                await self._lost(build)
            elif started is not None:
                await self._follow(*started)
        except (StoreError, CallerError) as exc:
            log.warning("process provisioner: build %s: %s", build.build_id, exc)
        except Exception:
            log.exception("process provisioner: build %s: after its finish", build.build_id)

    async def _failed(self, build: Build, held: Held, exc: Exception) -> None:
        """Fail ``build`` with ``exc`` in its answer (and in the workspace's log, if it has one)."""
        if isinstance(exc, WorkspaceRefused):
            reason = str(exc)
        else:
            log.warning("process provisioner: build %s failed: %r", build.build_id, exc)
            reason = f"the workspace {build.transition.value} failed: {exc}"
        path = self._dir_or_none(build.workspace_id)
        if path is not None:
            await anyio.to_thread.run_sync(note, path, f"build {build.number} failed: {reason}")
        await self._finish(held, JobStatus.FAILED, reason[:MAX_REASON])

    def _open_root(self) -> None:
        """Create the root if missing and check that workspaces can be made in it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not self.root.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable by this user")
            self.marks.contain()  # a cgroup per build too, where the machine allows it
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise UnusableRoot(
                exc.errno, f"the provisioner's root {str(self.root)!r} cannot be used: {reason}"
            ) from exc

    async def _start(self, build: Build, held: Held, tg: anyio.abc.TaskGroup) -> tuple[Proc, str] | None:
        """Spawn the workspace's process and finish the build; the process whose agent is now
        to be followed and what its probe found so far, or ``None``."""
        path = self.workspace_dir(build.workspace_id)
        port = free_port()
        env = self.environment(port, build.parameters)
        env[MARKER] = self.marks.marker(build.workspace_id, build.number)  # last: nothing overrides it
        old = self._procs.get(build.workspace_id)
        if old is not None:  # a start after a start: the new build replaces the old process
            await self._end(old)
        path.mkdir(exist_ok=True)
        path = self.workspace_dir(build.workspace_id)  # made now: check it again
        spawned = await self._spawn(build, held, tg, path, port, env)
        if spawned is None:
            return None
        proc, shipper = spawned
        proc.started = anyio.current_time()
        outcome = await self._probe(proc, proc.started + min(self.spawn_grace, self.ready_timeout))
        if outcome == "exited":
            reason = f"the workspace process {exit_text(proc.status)} before it was ready"
            last = tail(path, proc.log_offset, self.output_lines)
            details: dict[str, Any] = {"exit_status": proc.status}
            await shipper.ship(final=True)  # before the failure: its answer points at the lines
            try:
                await self._finish(
                    held, JobStatus.FAILED, f"{reason}; last output:\n{last}" if last else reason, details
                )
            finally:
                proc.build_done.set()
            return None
        try:
            proc.built = await self._finish(held, JobStatus.SUCCEEDED, None, has_agent=True)
        finally:
            proc.build_done.set()
        if not proc.built:  # the build was failed meanwhile (a reaper): nothing may run for it
            if not held.lost:
                log.warning(
                    "process provisioner: build %s was finished by another party; ending its process",
                    build.build_id,
                )
                await self._end(proc)
            return None
        return proc, outcome

    async def _spawn(
        self, build: Build, held: Held, tg: anyio.abc.TaskGroup, path: Path, port: int, env: dict[str, str]
    ) -> tuple[Proc, LogShipper] | None:
        """Spawn the command held, record it, then let it run and ship its output; ``None`` (the
        build failed) if it cannot start."""
        argv = [arg.replace("{port}", str(port)) for arg in self.command]
        header = f"build {build.number}: {argv} on port {port}"
        try:
            popen, offset, go = await anyio.to_thread.run_sync(
                functools.partial(
                    spawn,
                    path,
                    argv,
                    env,
                    header,
                    log_max_bytes=self.log_max_bytes,
                    contain=functools.partial(self.marks.enter, build.workspace_id, build.number),
                )
            )
        except OSError as exc:
            await self._finish(held, JobStatus.FAILED, f"the workspace command cannot start: {exc}")
            return None
        proc = None
        try:  # it is recorded before it runs: a provisioner that dies first leaves nothing running
            proc = Proc(
                build.workspace_id,
                popen.pid,
                os.pidfd_open(popen.pid),
                start_ticks(popen.pid) or 0,
                port,
                build.number,
                popen,
                held.token,
                log_offset=offset,
            )
            self._track(proc, tg)
            self._save(path, proc, argv=argv)
        except BaseException:
            os.close(go)  # the launcher reads the end of its input and exits: nothing ran
            if proc is not None:
                proc.ending = True
                proc.build_done.set()
            else:
                KEPT[popen.pid] = popen
            raise
        release(go)
        shipper = LogShipper(self.store, build.build_id, held.token, path / LOG_FILE, offset)
        tg.start_soon(shipper.run, proc.exited)  # its output to the build's log, bounded
        return proc, shipper

    # --- files ----------------------------------------------------------------------------

    def _save(self, path: Path, proc: Proc, *, argv: Sequence[str]) -> None:
        save_record(path, proc, argv=argv)  # a method: a test's provisioner stops here

    def _dir_or_none(self, workspace_id: str) -> Path | None:
        try:
            path = self.workspace_dir(workspace_id)
            return path if path.is_dir() else None
        except (WorkspaceRefused, OSError):
            return None

    # --- store writes -----------------------------------------------------------------------

    async def _finish(
        self,
        held: Held,
        status: JobStatus,
        error: str | None,
        details: Mapping[str, Any] | None = None,
        *,
        has_agent: bool = False,
    ) -> bool:
        """Finish the held build (:meth:`Held.finish`); False if another party had finished it
        (a reaper, say) or the lease was lost (then ``held.lost``)."""
        try:
            return await held.finish(
                self.store, status, error, has_agent=has_agent, details=details, retries=self.retries
            )
        finally:
            self.builds_done += 1

    async def _retrying(self, call: Callable[[], Awaitable[object]], *, until_it_lands: bool = False) -> None:
        await retrying(call, retries=self.retries, max_delay=2.0, until_it_lands=until_it_lands)
