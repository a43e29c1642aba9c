"""What a build printed: its log lines, bounded per build, and the pages the model reads. Pure.

A provisioner appends the output of a build (``store.append_log(build_id, lines,
lease=token)``); the ``workspace_logs`` tool pages through it with the build's status and
error, so a model whose build failed reads why, as Coder's ``get_workspace_build_logs`` lets it.

Theory of operation
-------------------
A build's log is one value, :class:`BuildLog`: the lines kept, their size, and how many older
lines were dropped. :func:`appended` is the one rule of an append, for every store: each line
is escaped (control characters become visible escapes: a log never moves a terminal's cursor
or rings its bell) and cut at :data:`MAX_LINE_CHARS`; then the oldest lines are dropped, and
counted, until at most :data:`MAX_LOG_LINES` lines of at most :data:`MAX_LOG_BYTES` bytes are
left. Lines are numbered from 1 over everything ever appended, dropped lines included, so a
reader that asks for the lines after the last one it saw never reads one twice.

:func:`page` is the answer of ``workspace_logs``: at most ``limit`` lines, the last ones or
those after a line number, with the numbers a reader pages on.

Rules for this module: no I/O, no awaits, no clocks, no anyio.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import attrs

from .values import Build, ToolResult

__all__ = [
    "MAX_LINE_CHARS",
    "MAX_LOG_BYTES",
    "MAX_LOG_LINES",
    "MAX_PAGE_LINES",
    "BuildLog",
    "answer",
    "appended",
    "check_lines",
    "check_page",
    "escape",
    "failure_hint",
    "page",
]

#: Lines a build keeps (older ones are dropped first, and counted).
MAX_LOG_LINES = 1000
#: Bytes (UTF-8, after escaping) the kept lines of a build may take together.
MAX_LOG_BYTES = 128 * 1024
#: Characters of one line; the rest of a longer line is cut and its length said.
MAX_LINE_CHARS = 2000
#: Lines one page of ``workspace_logs`` answers at most.
MAX_PAGE_LINES = 500

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\\": "\\\\"}


@attrs.frozen
class BuildLog:
    """A build's log as stored: the ``lines`` kept (escaped), their size in ``bytes``, and how
    many older lines were ``dropped``."""

    build_id: str
    lines: tuple[str, ...] = ()
    bytes: int = 0
    dropped: int = 0

    @property
    def total(self) -> int:
        """Lines ever appended: the number of the last one."""
        return self.dropped + len(self.lines)


def escape(line: str) -> str:
    r"""``line`` with every control character (but tab) as a visible escape, and a backslash
    doubled so that an escape cannot be faked.

    >>> escape("red \x1b[31m, bell \x07, nul \x00")
    'red \\x1b[31m, bell \\x07, nul \\x00'
    """
    if line.isprintable() and "\\" not in line:
        return line
    out = []
    for char in line:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char == "\t" or char.isprintable():
            out.append(char)
        elif 0xD800 <= ord(char) <= 0xDFFF:  # a lone surrogate cannot be stored as UTF-8
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _cut(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    return f"{line[:MAX_LINE_CHARS]}... [{len(line) - MAX_LINE_CHARS} more characters]"


def check_lines(lines: object) -> list[str]:
    """The lines of an append: a list (or tuple) of strings; anything else is a ``ValueError``
    (a single string would otherwise be appended one character a line)."""
    if isinstance(lines, str | bytes) or not isinstance(lines, list | tuple):
        raise ValueError(f"lines must be a list of strings, not {type(lines).__name__}")
    for line in lines:
        if not isinstance(line, str):
            raise ValueError(f"a log line must be a string, not {type(line).__name__}")
    return list(lines)


def appended(log: BuildLog | None, build_id: str, lines: Iterable[str], *, dropped: int = 0) -> BuildLog:
    """``log`` (``None``: empty) with ``lines`` appended, the oldest dropped first (and counted)
    beyond the bounds; ``dropped`` counts lines the writer itself dropped before these.

    >>> log = appended(None, "b1", ["one", "two"])
    >>> log.lines, log.total
    (('one', 'two'), 2)
    >>> big = appended(log, "b1", [str(n) for n in range(MAX_LOG_LINES)])
    >>> big.dropped, big.lines[0], big.total
    (2, '0', 1002)
    """
    kept = deque(log.lines if log is not None else ())
    size = log.bytes if log is not None else 0
    lost = (log.dropped if log is not None else 0) + dropped
    for raw in lines:
        line = _cut(escape(raw))
        kept.append(line)
        size += len(line.encode()) + 1
        while len(kept) > MAX_LOG_LINES or (size > MAX_LOG_BYTES and len(kept) > 1):
            size -= len(kept.popleft().encode()) + 1
            lost += 1
    return BuildLog(build_id, tuple(kept), size, lost)


def page(build: Build, log: BuildLog | None, *, limit: int = 100, after: int | None = None) -> ToolResult:
    """The ``workspace_logs`` answer: build ``build``'s status (and error) and at most ``limit``
    lines of its log, the last ones or (with ``after``) those numbered after ``after``.

    ``first_line`` is the number of the first line answered; ``next_after`` is what to pass as
    ``after`` for the lines that come next; ``dropped_lines`` says how many older lines are
    gone for good.
    """
    log = log or BuildLog(build.build_id)
    limit = max(1, min(limit, MAX_PAGE_LINES))
    if after is None:
        start = max(0, len(log.lines) - limit)
    else:
        start = min(max(0, after - log.dropped), len(log.lines))
    lines = list(log.lines[start : start + limit])
    first = log.dropped + start + 1
    data: dict[str, Any] = {
        "build_id": build.build_id,
        "build_number": build.number,
        "transition": build.transition.value,
        "build_status": build.status.value,
        "lines": lines,
        "first_line": first,
        "next_after": first + len(lines) - 1,
        "total_lines": log.total,
        "dropped_lines": log.dropped,
        "more_before": start > 0,
        "more_after": start + len(lines) < len(log.lines),
    }
    if build.error:
        data["build_error"] = build.error
    return ToolResult.ok(data)


def check_page(build: object, limit: object, after: object) -> None:
    """The arguments of ``Lifecycle.logs``: ``build`` a number from 1 or a build id (or
    ``None``), ``limit`` from 1 to :data:`MAX_PAGE_LINES`, ``after`` a line number from 0 (or
    ``None``); a ``ValueError`` naming the bad one otherwise."""
    if build is not None and not (
        (isinstance(build, int) and not isinstance(build, bool) and build >= 1)
        or (isinstance(build, str) and 0 < len(build) <= 200)
    ):
        raise ValueError(f"build must be a build number from 1 or a build id, not {build!r:.80}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_LINES:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE_LINES}, not {limit!r:.80}")
    if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
        raise ValueError(f"after must be a line number from 0, not {after!r:.80}")


def answer(
    found: tuple[Build, BuildLog | None] | None, build: int | str | None, *, limit: int, after: int | None
) -> ToolResult:
    """``workspace_logs``: the :func:`page` of the build read (``found``), or why there is none."""
    if found is None:
        if build is None:
            return ToolResult.error("the workspace has no build yet")
        return ToolResult.error(f"build {build!r} not found among this chat's workspace builds")
    return page(found[0], found[1], limit=limit, after=after)


def failure_hint(log: BuildLog | None) -> dict[str, Any]:
    """What a failed build's answer adds about its log: that it exists and how to read it.

    >>> failure_hint(appended(None, "b1", ["boom"]))
    {'logs': 'the build logged 1 line; call workspace_logs to read its last lines'}
    >>> failure_hint(None)
    {}
    """
    if log is None or log.total == 0:
        return {}
    noun = "line" if log.total == 1 else "lines"
    return {"logs": f"the build logged {log.total} {noun}; call workspace_logs to read its last lines"}
