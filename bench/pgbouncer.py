"""A PgBouncer process in transaction pooling mode in front of a PostgreSQL URL, for the tests
(``tests/stores/test_pgbouncer.py``) and the wake-up benchmark behind it (``bench/pgbouncer_wakeup.py``).

It listens on a free port of 127.0.0.1, with a generated ini, its log and pidfile in a temporary
directory; PgBouncer refuses to run as root, so as root it switches to the ``postgres`` account
(``-u``). Each store gets a PgBouncer database of its own whose ``connect_query`` sets the
``search_path`` to its schema (:meth:`Bouncer.database`, added by a reload), as docs/stores.md
advises.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

import workspace_lifecycle as wl

#: The store's own default statement_timeout, which each database's connect_query sets.
STATEMENT_TIMEOUT_MS = 30_000


async def wake_up(sleeper: wl.Store, write: Callable[[], Awaitable[object]], delay: float) -> float:
    """Seconds from the end of ``write()``, called ``delay`` seconds after ``sleeper`` fell
    asleep in ``wait_for_change`` from its head, to the moment the sleeper woke (which must be
    after the write)."""
    head = await sleeper.head()
    woke: list[float] = []

    async def sleep() -> None:
        await sleeper.wait_for_change(head)
        woke.append(time.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleep)
        await anyio.sleep(delay)
        if woke:
            raise AssertionError(
                f"woke before the write, at head {await sleeper.head()} (asleep from {head})"
            )
        await write()
        written = time.monotonic()
    return woke[0] - written


def binary() -> str | None:
    """The ``pgbouncer`` executable (Debian puts it in /usr/sbin), or ``None``."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


class Bouncer:
    """A PgBouncer process of this run, in transaction pooling mode, in front of ``pg_url``."""

    def __init__(self, pg_url: str, executable: str) -> None:
        self.target = conninfo_to_dict(pg_url)
        self.user = str(self.target.get("user", "postgres"))
        self.dir = Path(tempfile.mkdtemp(prefix="wl_pgbouncer_"))
        self.ini = self.dir / "pgbouncer.ini"
        self.log = self.dir / "pgbouncer.log"
        self.port = _free_port()
        self.databases: dict[str, str] = {}
        (self.dir / "users.txt").write_text(f'"{self.user}" ""\n')
        self._add("plain")  # no connect_query: what a store that says nothing meets
        argv = [executable, str(self.ini)]
        if os.geteuid() == 0:  # PgBouncer refuses to run as root: it switches user itself
            entry = pwd.getpwnam("postgres" if _user_exists("postgres") else "nobody")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            argv[1:1] = ["-u", entry.pw_name]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            self.wait_for("plain")
        except BaseException:
            self.stop()
            raise

    def _write(self) -> None:
        lines = ["[databases]", *(f"{name} = {spec}" for name, spec in self.databases.items())]
        lines += [
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {self.dir / 'users.txt'}",
            "pool_mode = transaction",
            f"admin_users = {self.user}",
            "default_pool_size = 20",
            "max_client_conn = 500",
            # A shared PostgreSQL has few connections to spare: at most 20 server connections
            # for all the databases, closed by release() (or after 10 s idle); a login the
            # server refuses (too many clients) is retried after 1 s, not 15.
            "max_user_connections = 20",
            "server_idle_timeout = 10",
            "server_login_retry = 1",
            f"logfile = {self.log}",
            f"pidfile = {self.dir / 'pgbouncer.pid'}",
        ]
        self.ini.write_text("\n".join(lines) + "\n")

    def _add(self, name: str, connect_query: str | None = None) -> None:
        host = self.target.get("host", "127.0.0.1")
        port = self.target.get("port", "5432")
        spec = f"host={host} port={port} dbname={self.target.get('dbname', 'test')}"
        if connect_query is not None:
            spec += f" connect_query='{connect_query}'"
        self.databases[name] = spec
        self._write()

    def url(self, name: str) -> str:
        """The URL of PgBouncer's database ``name``."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def wait_for(self, name: str) -> None:
        """Until PgBouncer serves database ``name`` (after a start or a reload)."""
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"PgBouncer exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                with psycopg.connect(self.url(name), connect_timeout=2, prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def database(self, schema: str) -> str:
        """A new PgBouncer database whose server connections use ``schema`` (its URL)."""
        name = f"db_{schema}"
        self._add(name, f"SET search_path TO {schema}; SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        self.proc.send_signal(signal.SIGHUP)  # reload the ini
        self.wait_for(name)
        return self.url(name)

    def release(self) -> None:
        """Close the server connections of every database but ``plain`` (PgBouncer's ``KILL``),
        so that the next store's database finds connections to spare."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True) as admin:
            for name in list(self.databases):
                if name != "plain":
                    # The console speaks the simple query protocol only.
                    result = admin.pgconn.exec_(f"KILL {name}".encode())
                    if result.status != pq.ExecStatus.COMMAND_OK:
                        raise RuntimeError(f"PgBouncer's KILL {name}: {result.error_message.decode()}")
                    del self.databases[name]
        self._write()
        self.proc.send_signal(signal.SIGHUP)

    def log_tail(self) -> str:
        return self.log.read_text()[-2000:] if self.log.exists() else "(no log)"

    def stop(self) -> None:
        """SIGTERM (PgBouncer's immediate shutdown), wait for the exit, remove the directory."""
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
