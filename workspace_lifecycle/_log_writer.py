"""The log writer of a process workspace: it reads the workspace process's output from its
standard input and appends it to the workspace's log, which it keeps under a size.

    python _log_writer.py LOG MAX_BYTES

When the log passes ``MAX_BYTES`` it becomes ``LOG.1`` (replacing the older one) and a new log
begins, so the two hold the most recent output and at most ``2 * MAX_BYTES`` plus one read
(64 KiB) together, however fast the process writes: a process that writes faster than this
copies waits on its pipe. Memory is one read. It exits at the end of its input, once every
process of the workspace has ended. It carries the workspace's marker (its environment), so a
stop or delete ends it with the workspace; it ignores SIGTERM, so it keeps the last output the
processes write while they end, and only the SIGKILL after the grace cuts it short.

Run by path with ``python -I -S`` (it imports only the standard library), so it starts fast
and never imports the package.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

CHUNK = 64 * 1024


def _open(log: str) -> int:
    return os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def main(argv: list[str]) -> int:
    log, limit = argv[0], int(argv[1])
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it ends at the end of its input (see above)
    fd = _open(log)
    while True:
        try:
            data = os.read(0, CHUNK)
        except InterruptedError:
            continue
        if not data:
            return 0
        os.write(fd, data)
        if os.fstat(fd).st_size > limit:  # keep the tail: the current log becomes LOG.1
            fd = _rotate(log, fd)


def _rotate(log: str, fd: int) -> int:
    """LOG becomes LOG.1 and a new LOG begins, with no moment without a LOG (a reader of it by
    name never finds it missing): the new one is made aside, and each rename is atomic."""
    new = os.open(log + ".new", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(log + ".1.tmp")
    os.link(log, log + ".1.tmp")
    os.replace(log + ".1.tmp", log + ".1")
    os.replace(log + ".new", log)
    os.close(fd)
    return new


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
