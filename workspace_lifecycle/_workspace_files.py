"""The files of a process workspace: its record (``workspace.json``), its log
(``workspace.log``) and its removal. Blocking calls: the provisioner runs the slow ones on a
worker thread.

The record names the process a provisioner started there (its pid, start time, port, build and
lease) and, once seen, how it ended; a provisioner started later on the same root reads it to
adopt or report the process (:mod:`~workspace_lifecycle.reconcile` decides which).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LOG_FILE", "STATE_FILE", "load_state", "mark_ended", "note", "remove_dir", "tail", "write_state"]

log = logging.getLogger("workspace_lifecycle.process_provisioner")

LOG_FILE = "workspace.log"
STATE_FILE = "workspace.json"
#: The longest reason (a process's last lines) a failed build carries.
MAX_REASON = 2000
#: Lines the provisioner writes in a workspace's log start with this.
NOTE_PREFIX = "--- workspace-lifecycle:"


def note(path: Path, text: str) -> None:
    """A line of the provisioner's own in the workspace's log (best effort)."""
    with contextlib.suppress(OSError), open(path / LOG_FILE, "ab") as out:
        out.write(f"{NOTE_PREFIX} {text}\n".encode())


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Replace the record atomically (a crash leaves the old record or the new, never half)."""
    tmp = path / f".{STATE_FILE}.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(state, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / STATE_FILE)


def load_state(path: Path) -> dict[str, Any] | None:
    """The record of a workspace directory whose process has not been seen to end."""
    try:
        if not path.is_dir() or path.is_symlink():
            return None
        state = json.loads((path / STATE_FILE).read_text())
        if not isinstance(state, dict) or state.get("ended") is not None:
            return None
        for key in ("pid", "start_ticks", "port", "build_number"):
            if not isinstance(state.get(key), int) or isinstance(state[key], bool):
                raise ValueError(f"no {key}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("process provisioner: %s/%s is unreadable (%s); left alone", path, STATE_FILE, exc)
        return None
    loaded: dict[str, Any] = state
    return loaded


def mark_ended(path: Path, state: Mapping[str, Any], text: str) -> None:
    """Record that the process of ``state`` ended (best effort: a record that cannot be written
    is found again by the next provisioner, which sees the process ended)."""
    with contextlib.suppress(OSError):
        write_state(path, {**state, "ended": {"at": time.time(), "how": text}})


def tail(path: Path, offset: int, lines: int) -> str:
    """The last ``lines`` lines the process wrote after ``offset`` (bounded; from the start of
    the log if it was rotated since)."""
    try:
        with open(path / LOG_FILE, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(offset if offset <= size else 0, size - 64 * 1024))
            data = f.read(64 * 1024)
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").replace("\x00", "")
    kept = [line for line in text.splitlines() if not line.startswith(NOTE_PREFIX)]
    return "\n".join(kept[-lines:])[-MAX_REASON:]


def _writable_again(function: Any, name: str, exc: BaseException) -> None:
    """``shutil.rmtree``'s error hook: a directory the workspace made read-only (``chmod
    555``) is the provisioner's user's; make it writable and try once more."""
    if not isinstance(exc, PermissionError):
        raise exc
    parent = os.path.dirname(name)
    for target in (parent, name):
        with contextlib.suppress(OSError):
            mode = os.lstat(target).st_mode
            if stat.S_ISDIR(mode):
                os.chmod(target, stat.S_IMODE(mode) | stat.S_IRWXU)
    if function in (os.rmdir, os.unlink, os.remove):
        function(name)
    elif os.path.isdir(name) and not os.path.islink(name):
        shutil.rmtree(name)
    else:
        raise exc


def remove_dir(path: Path) -> None:
    """Remove a workspace's directory (or whatever stands at its name: a file, a symlink), and
    the read-only directories the workspace made in it; ``OSError`` if it cannot."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        os.unlink(path)
        return
    for attempt in range(3):
        try:
            if sys.version_info >= (3, 12):
                shutil.rmtree(path, onexc=_writable_again)
            else:
                shutil.rmtree(path, onerror=lambda f, n, e: _writable_again(f, n, e[1]))
            return
        except OSError as exc:
            # A process still writing there (it is being ended) can refill a directory between
            # its listing and its removal: ENOTEMPTY. Try again a few times, then give up.
            if exc.errno != errno.ENOTEMPTY or attempt == 2:
                raise
