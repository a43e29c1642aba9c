"""Spawning and watching the processes of a process workspace (Linux: ``/proc``, pidfds).

A workspace process is started in its directory, in a session (and process group) of its own,
with its output appended to the workspace's log. It starts held: a launcher (``/bin/sh``)
waits for a go line on its standard input, which the provisioner writes only once the process
is recorded (``workspace.json``), so no process runs that a restarted provisioner cannot find;
if the provisioner dies first, the launcher reads the end of its input and exits without
running anything. It is named by its pid *and* its start time
(``/proc/PID/stat`` field 22), so a reused pid is never taken for it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import attrs

from ._workspace_files import LOG_FILE, NOTE_PREFIX, write_state

__all__ = [
    "KEPT",
    "Proc",
    "exit_text",
    "free_port",
    "reap",
    "release",
    "save_record",
    "spawn",
    "start_ticks",
]

#: Processes a provisioner of this interpreter left running when it stopped, so that a later
#: provisioner here reaps them (they are still this interpreter's children) and no ``Popen`` is
#: dropped while its child runs.
KEPT: dict[int, subprocess.Popen[bytes]] = {}


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, ``/proc/PID/stat`` field 22), or
    ``None`` if no such process runs: with the pid it names one process, even if pids wrap."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has ended: only its parent's wait is left
        return None
    return int(fields[19])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def exit_text(status: int | None) -> str:
    """``exited with status 1``, ``was killed by signal 9 (SIGKILL)``."""
    if status is None:
        return "ended (its exit status is unknown: it was started by an earlier provisioner)"
    if status < 0:
        try:
            name = f" ({signal.Signals(-status).name})"
        except ValueError:
            name = ""
        return f"was killed by signal {-status}{name}"
    return f"exited with status {status}"


#: The log writer (run by path: it imports only the standard library).
LOG_WRITER = str(Path(__file__).with_name("_log_writer.py"))
#: The launcher: it waits for the go line, then runs the command (no shell parses it: the
#: command is ``"$@"``) with nothing on its input; without the line it exits 70 (EX_SOFTWARE).
LAUNCHER = 'read -r go && [ "$go" = go ] && exec "$@" </dev/null; exit 70'
#: Log writers this interpreter started and has not reaped yet.
_WRITERS: list[subprocess.Popen[bytes]] = []


def spawn(
    path: Path,
    argv: list[str],
    env: dict[str, str],
    header: str,
    *,
    log_max_bytes: int,
    contain: Callable[[list[int]], None] | None = None,
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start ``argv`` in ``path`` (no shell parses it), held (see the module), in a session of
    its own, its output piped to a log writer (``_log_writer.py``: the log stays under
    ``log_max_bytes``; it exits once every process that holds the pipe has ended; it has the
    same environment, so the same marker); return the process, where its output begins in the
    log, and the go descriptor to :func:`release` it with. ``contain`` is given the pids of
    both (held: nothing runs yet) to put them in the build's cgroup."""
    _WRITERS[:] = [w for w in _WRITERS if w.poll() is None]  # reap the writers that ended
    _check_command(path, argv, env)
    with open(path / LOG_FILE, "ab") as out:
        out.write(f"{NOTE_PREFIX} {header}\n".encode())
        out.flush()
        offset = out.tell()
    hold, go = os.pipe()  # not inherited: only this launcher reads it, only we write it
    try:
        popen = subprocess.Popen(
            ["/bin/sh", "-c", LAUNCHER, "wl-launcher", *argv],
            cwd=path,
            env=env,
            stdin=hold,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: a stop ends its children too
        )
    except BaseException:
        os.close(go)
        raise
    finally:
        os.close(hold)
    assert popen.stdout is not None
    try:
        writer = subprocess.Popen(
            [sys.executable, "-I", "-S", LOG_WRITER, str(path / LOG_FILE), str(log_max_bytes)],
            cwd=path,
            env=env,
            stdin=popen.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not the host's Ctrl-C; it ends at the end of its input
        )
    except BaseException:
        os.close(go)
        popen.kill()
        popen.wait()
        raise
    finally:
        popen.stdout.close()  # the writer holds the pipe; the process sees EPIPE only if it ends
        popen.stdout = None
    _WRITERS.append(writer)
    if contain is not None:
        contain([popen.pid, writer.pid])
    return popen, offset, go


def release(go: int) -> None:
    """Let a held process run (its record is written), and close ``go``."""
    try:
        os.write(go, b"go\n")
    finally:
        os.close(go)


def _check_command(path: Path, argv: list[str], env: dict[str, str]) -> None:
    """Raise what running ``argv`` would (``FileNotFoundError``, ``PermissionError``), before
    the launcher runs it: a command that cannot start fails its build with that error."""
    name = argv[0]
    found: str | None = str(path / name)
    if "/" in name:
        if not os.path.isfile(path / name) or not os.access(path / name, os.X_OK):
            found = None
    else:
        found = shutil.which(name, path=os.pathsep.join(os.get_exec_path(env)))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory (or not executable)", name)


def reap(proc: Proc) -> int | None:
    """The exit status of an ended process (its pidfd is readable): this interpreter's child is
    reaped; another's (adopted after a restart) has a status only its parent could read."""
    if proc.popen is not None:
        return proc.popen.poll()
    with contextlib.suppress(ChildProcessError):
        pid, code = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(code)
    return None


@attrs.define(eq=False)
class Proc:
    """One workspace process, from its spawn (or adoption) to its end."""

    workspace_id: str
    pid: int
    pidfd: int
    start_ticks: int
    port: int
    build_number: int
    popen: subprocess.Popen[bytes] | None  # None: adopted from another (dead) provisioner process
    lease: str | None  # the fencing token of the build that started it (its agent reports carry it)
    log_offset: int = 0
    status: int | None = None  # the exit status, once ended (None if it is not ours to read)
    ready: bool = False  # the agent was reported ready
    ending: bool = False  # a stop or delete build ends it: its end is no agent report
    built: bool = False  # its start build succeeded: its end is the agent's to report
    started: float = 0.0  # when it was spawned (anyio's clock; 0 if adopted)
    exited: anyio.Event = attrs.field(factory=anyio.Event)
    build_done: anyio.Event = attrs.field(factory=anyio.Event)
    reports: anyio.Lock = attrs.field(factory=anyio.Lock)  # one agent report at a time, in order

    def signal(self, sig: signal.Signals) -> None:
        """``sig`` to the process (by its pidfd: never a reused pid) and its process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.exited.is_set():
                os.killpg(self.pid, sig)  # what is left of its group
            else:
                signal.pidfd_send_signal(self.pidfd, sig)
                os.killpg(self.pid, sig)


def save_record(path: Path, proc: Proc, *, argv: Sequence[str]) -> None:
    """Write ``proc``'s record (``workspace.json``): what a restarted provisioner adopts it by."""
    state = {
        "pid": proc.pid,
        "start_ticks": proc.start_ticks,
        "port": proc.port,
        "build_number": proc.build_number,
        "lease": proc.lease,  # its build's fencing token: its agent reports carry it, after a restart too
        "argv": list(argv),
        "started_at": time.time(),
        "ended": None,
    }
    write_state(path, state)
