"""The SQLite store: the durable embedded default (stdlib ``sqlite3``, on the event loop when a
call cannot block and on threads when it can; asyncio only).

:class:`SQLiteStore` is :class:`~..store.DriverStore` over a :class:`SQLiteDriver`: every write
is decided once, in :mod:`workspace_lifecycle.writes`, and this package only reads rows and
persists what was decided. It is split by concern:

* :mod:`.url`: the URL and the options, checked before anything is opened;
* :mod:`.schema`: the tables, the forward migrations and the pragmas set at open;
* :mod:`.rows`: a row read into a value (a bad stored value names its row);
* :mod:`.reads`: the rows a write decides on, in as few statements as it allows, and the
  plain reads;
* :mod:`.persist`: a decided :class:`~workspace_lifecycle.writes.Write` as SQL;
* :mod:`.errors`: ``sqlite3``'s errors mapped to the library's, in one place;
* :mod:`.inline`: writes and reads on the event loop when they cannot block, the writes of
  one tick in one transaction;
* :mod:`.writer`: the connections' threads, for what may block: one hop per write, group commit;
* :mod:`.wakeups`: other processes' commits noticed through inotify on the ``-wal`` file;
* :mod:`.watcher`: ... or through polling ``PRAGMA data_version`` where inotify cannot work;
* :mod:`.driver`: :class:`SQLiteDriver`, composing them.

The log's sequence number is the event's ``INTEGER PRIMARY KEY AUTOINCREMENT`` rowid (never
reused, even once retention pruned the whole log): appending an event is one INSERT, with no
head counter to read and rewrite (its ``lastrowid`` is the number it took); the head is
SQLite's ``sqlite_sequence`` entry. Schema 3 migrates older files, keeping their events and
numbering.

Where a write's time goes (``report_agent``, one writer): on the thread path, measured before
the inline path existed (~160-185 µs a write on the shared 2-core machine), the thread hop
was about half (waking the loop through its self-pipe, then waking the thread for the next
write); the statements about 65 µs (five: BEGIN IMMEDIATE, one joined read, the agent upsert,
the event INSERT, COMMIT; the COMMIT of its few dirty pages is most of it); the decision and
its values ~35 µs. The inline path removes the hop; group commit spreads BEGIN and COMMIT
over a tick's writes; the statements are prepared once per connection (``sqlite3``'s
statement cache).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ..store import DriverStore
from . import url as _url
from .driver import SQLiteDriver as SQLiteDriver
from .errors import map_exceptions as map_exceptions
from .schema import MIGRATIONS as MIGRATIONS
from .schema import SCHEMA_VERSION as SCHEMA_VERSION
from .writer import Connection

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteDriver", "SQLiteStore", "map_exceptions"]

#: The connection thread class, by the name the bench and tests reach for.
_Connection = Connection


class SQLiteStore(DriverStore):
    """A store in one SQLite file, shared safely by any number of processes.

    ``busy_timeout`` (seconds) bounds how long a write waits for another writer's lock before
    :class:`~workspace_lifecycle.errors.StoreBusyError`; ``poll_interval`` (seconds) is the
    longest pause between the watcher's checks for other processes' commits while somebody
    waits (it checks every millisecond for a quarter second after a change), when it polls;
    ``retention`` (seconds, optional) prunes older events as writes happen.

    ``wakeups`` chooses how other processes' commits are noticed: ``"auto"`` (inotify on the
    ``-wal`` file where it works: Linux, a local filesystem; else polling), ``"inotify"`` (fail
    the open if it cannot) or ``"poll"``; ``store.wakeups`` says which was chosen. ``inline``
    (default True) runs writes and reads on the event loop when they cannot block; False
    sends every call to the connections' threads (a filesystem slow enough that even an
    uncontended commit should not run on the loop).

    The driver's settings and counters read through (``path``, ``commits``, ...); anything
    else of the driver is ``store.driver``.

    >>> store = SQLiteStore("x.db", busy_timeout=2)
    >>> store.url, store.busy_timeout, store.commits
    ('sqlite:///x.db', 2, 0)
    """

    driver: SQLiteDriver

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        poll_interval: float = 0.004,
        retention: float | None = None,
        synchronous: str = "NORMAL",
        clock: Callable[[], float] = time.time,
        wakeups: str = "auto",
        inline: bool = True,
    ) -> None:
        super().__init__(
            SQLiteDriver(
                path,
                busy_timeout=busy_timeout,
                poll_interval=poll_interval,
                retention=retention,
                synchronous=synchronous,
                clock=clock,
                wakeups=wakeups,
                inline=inline,
            )
        )

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLiteStore:
        path, options = _url.from_url(url, options)
        return cls(path, **options)

    # --- the driver's settings and counters --------------------------------------------------------

    @property
    def path(self) -> str:
        return self.driver.path

    @property
    def busy_timeout(self) -> float:
        return self.driver.busy_timeout

    @property
    def poll_interval(self) -> float:
        return self.driver.poll_interval

    @property
    def retention(self) -> float | None:
        return self.driver.retention

    @property
    def commits(self) -> int:
        """Write transactions committed so far: with group commit, fewer than the writes."""
        return self.driver.commits

    @property
    def transactions(self) -> int:
        """Writes committed through this store (see also ``commits``)."""
        return self.driver.transactions

    @property
    def watcher_polls(self) -> int:
        """``data_version`` checks made by the cross-process watcher (the poll thread's, or
        inotify's confirmations)."""
        return self.driver.watcher.polls

    @property
    def wakeups(self) -> str:
        """How other processes' commits are noticed: ``"inotify"`` or ``"poll"`` (chosen at
        open; a watched file replaced while open switches to ``"poll"``)."""
        return self.driver.wakeups
