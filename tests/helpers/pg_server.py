"""The local PostgreSQL server, for the tests that stop or restart it."""

from __future__ import annotations

import time


def wait_until_answering(pg_url: str, seconds: float = 60.0, pause: float = 0.1) -> None:
    """Return once ``pg_url`` accepts a connection; raise its last error after ``seconds``."""
    import psycopg

    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(pg_url, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
