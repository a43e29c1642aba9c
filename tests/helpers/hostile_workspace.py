"""Workspace commands that attack their own provisioner (tests/test_provisioner_*.py):

python hostile_workspace.py daemon PORT          serve, after leaving a daemon (double fork +
                                                 setsid) that writes files in the workspace
                                                 and its pid in ./daemon.pid
python hostile_workspace.py unmarked PORT        serve, after leaving a daemon that execs with an
                                                 empty environment (its pid in ./daemon.pid)
python hostile_workspace.py readonly PORT        serve, after making ./ro/ with files in it
                                                 read-only (chmod 555)
python hostile_workspace.py printer PORT         serve, while a thread prints as fast as it can
python hostile_workspace.py deafen PORT SECONDS  serve, then close the port after SECONDS (the
                                                 process lives on); reopen it when sent SIGUSR1
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time


def listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


def accept_forever(sock: socket.socket) -> None:
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return  # closed
        conn.close()


def daemonise() -> None:
    """The classic double fork: the grandchild is in a session of its own, its parent gone."""
    if os.fork():
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    with open("daemon.pid.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace("daemon.pid.tmp", "daemon.pid")
    os.makedirs("spool", exist_ok=True)
    n = 0
    while True:  # keep refilling the directory a delete is removing
        n += 1
        with open(f"spool/{n % 500}", "w") as f:
            f.write("x")
        if n % 500 == 0:
            time.sleep(0.001)


def daemonise_unmarked() -> None:
    """A double-forked daemon that replaces its environment with an empty one: no marker."""
    if os.fork():
        return
    os.setsid()
    if os.fork():
        os._exit(0)
    # Written aside, then renamed: a reader that sees daemon.pid sees the whole pid (an open
    # for writing shows an empty file first, and a loaded machine once read it so).
    code = (
        "import os, time\n"
        "open('daemon.pid.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace('daemon.pid.tmp', 'daemon.pid')\n"
        "while True: time.sleep(1)"
    )
    os.execve(sys.executable, [sys.executable, "-c", code], {})


def main(argv: list[str]) -> int:
    mode, port = argv[0], int(argv[1])
    if mode == "daemon":
        daemonise()
        while not os.path.exists("daemon.pid"):
            time.sleep(0.01)
    elif mode == "unmarked":
        daemonise_unmarked()
    elif mode == "readonly":
        os.makedirs("ro/deeper", exist_ok=True)
        for name in ("ro/a", "ro/deeper/b"):
            with open(name, "w") as f:
                f.write("kept")
        os.chmod("ro/deeper", 0o555)
        os.chmod("ro", 0o555)
    elif mode == "printer":
        line = b"x" * 1023 + b"\n"
        block = line * 64

        def printing() -> None:
            out = sys.stdout.buffer
            while True:
                out.write(block)

        threading.Thread(target=printing, daemon=True).start()
    sock = listen(port)
    print(f"serving on {port}", flush=True)
    if mode == "deafen":
        reopen = threading.Event()
        signal.signal(signal.SIGUSR1, lambda *_: reopen.set())
        threading.Thread(target=accept_forever, args=(sock,), daemon=True).start()
        time.sleep(float(argv[2]))
        sock.close()
        print("closed the port", flush=True)
        reopen.wait()
        sock = listen(port)
        print("reopened the port", flush=True)
    accept_forever(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
