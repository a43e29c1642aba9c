"""The SQLite store's URL and options: parsing and checking them, before anything is opened."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import parse_qs

__all__ = ["ACCEPTED", "MAX_BUSY_TIMEOUT", "WAKEUPS", "check_options", "from_url"]

ACCEPTED = "sqlite:///relative/path.db or sqlite:////absolute/path.db"

#: ``PRAGMA busy_timeout`` takes milliseconds in a C int.
MAX_BUSY_TIMEOUT = (2**31 - 1) // 1000

_OPTIONS = ("busy_timeout", "poll_interval", "retention", "synchronous", "wakeups")
_TEXT_OPTIONS = ("synchronous", "wakeups")
#: How other processes' commits are noticed (see :mod:`.wakeups`).
WAKEUPS = ("auto", "inotify", "poll")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """The file named by ``url`` and its query options (the last value of each).

    >>> parse_url("sqlite:///data/x.db?busy_timeout=2")
    ('data/x.db', {'busy_timeout': '2'})
    """
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep or not rest.startswith("/"):
        raise ValueError(f"malformed SQLite URL {url!r}; accepted forms: {ACCEPTED}")
    path, _, query = rest[1:].partition("?")
    if not path or path == ":memory:":
        raise ValueError(
            f"SQLite URL {url!r} names no file; accepted forms: {ACCEPTED} (use memory:// to keep nothing)"
        )
    options = {k: v[-1] for k, v in parse_qs(query, strict_parsing=False).items()} if query else {}
    return path, options


def from_url(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The path and the constructor's options for ``url``: the URL's query fills in what
    ``options`` (the caller's keywords) leaves out."""
    path, query = parse_url(url)
    for key, value in query.items():
        if key not in _OPTIONS:
            raise ValueError(f"unknown SQLite URL option {key!r} in {url!r}")
        try:
            options.setdefault(key, value if key in _TEXT_OPTIONS else float(value))
        except ValueError:
            raise ValueError(f"SQLite URL option {key}={value!r} is not a number") from None
    return path, options


def check_options(
    *,
    busy_timeout: float,
    poll_interval: float,
    retention: float | None,
    synchronous: str,
    wakeups: str = "auto",
) -> str:
    """Refuse a bad option in one sentence naming it; the ``synchronous`` level, upper case."""
    _finite_positive("busy_timeout", busy_timeout, MAX_BUSY_TIMEOUT)
    _finite_positive("poll_interval", poll_interval, 3600)
    if retention is not None:
        _finite_positive("retention", retention)
    if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    if wakeups not in WAKEUPS:
        raise ValueError(f"wakeups must be auto, inotify or poll, not {wakeups!r}")
    return synchronous.upper()


def _finite_positive(name: str, value: float, most: float = math.inf) -> None:
    if not (isinstance(value, int | float) and 0 < value <= most and math.isfinite(value)):
        bound = f" (at most {most:g})" if math.isfinite(most) else ""
        raise ValueError(f"{name} must be a positive, finite number of seconds{bound}, not {value!r}")
