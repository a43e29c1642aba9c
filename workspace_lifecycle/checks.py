"""Configuration numbers and names, checked in one place: durations in seconds, counts, ids
(chat ids, owners) and workspace names. Pure.

Every constructor that takes a duration (a timeout, a grace, an interval, a lease, a policy's
idle time) checks it here, so each refuses the same things with the same sentence naming the
parameter: booleans, non-numbers, NaN, infinities, a number out of its range, and integers too
large for a float (``10**400`` would otherwise raise ``OverflowError`` where it is first used).
A duration is also bounded above (:data:`MAX_SECONDS` unless the caller says less): a "never"
spelled as a huge number is refused, not carried into a deadline or a sleep.

Use :func:`seconds` in an ``__init__`` and :func:`positive_seconds` /
:func:`non_negative_seconds` as attrs validators::

    >>> seconds("stop_grace", 5)
    5.0
    >>> seconds("stop_grace", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: stop_grace must be a positive finite number of seconds, not nan
    >>> seconds("spawn_grace", 0, zero=True)
    0.0
    >>> seconds("lease_seconds", 10**400)
    Traceback (most recent call last):
    ...
    ValueError: lease_seconds must be a positive finite number of seconds (at most 3153600000), not 1000...000 (401 digits)

Ids are data that every face prints and every store keeps: :func:`identifier` refuses, in
one sentence, whatever could not be shown on one line or kept by every store (a control
character, a lone surrogate, NUL) and anything over :data:`MAX_IDENTIFIER` characters.
:func:`workspace_name` is Coder's rule for workspace names: a name is kept or refused, with a
valid one to try (:func:`suggested_workspace_name`), never renamed.

Rules for this module: no I/O, no awaits, no clocks, no anyio.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import attrs

__all__ = [
    "MAX_COUNT",
    "MAX_IDENTIFIER",
    "MAX_SECONDS",
    "MAX_WORKSPACE_NAME",
    "WORKSPACE_NAME_RULE",
    "count",
    "identifier",
    "instant",
    "non_negative_seconds",
    "positive_seconds",
    "seconds",
    "suggested_workspace_name",
    "workspace_name",
    "workspace_name_valid",
]

#: The longest duration any parameter takes: a hundred years of seconds.
MAX_SECONDS = 100 * 365 * 24 * 3600
#: The largest count (retries, lines) any parameter takes.
MAX_COUNT = 1_000_000
#: The longest chat id or owner, in characters: room for a UUID, an email address or a path-like
#: id with a prefix, and short enough to print in a table's column.
MAX_IDENTIFIER = 128
#: The longest workspace name (Coder's).
MAX_WORKSPACE_NAME = 32
#: Coder's rule for a workspace name (``codersdk.NameValid``), as said to whoever broke it.
WORKSPACE_NAME_RULE = f"1 to {MAX_WORKSPACE_NAME} letters, digits and single hyphens between them (Coder's rule), such as 'dev-2'"
_WORKSPACE_NAME_RE = re.compile(r"[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*")
#: Unicode categories an id may not hold: controls (newline, tab, ESC, NUL, DEL, C1), lone
#: surrogates (not text: no store can encode them), and the line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def _shown(value: object) -> str:
    """``repr(value)``, shortened for a huge integer (its repr alone could be a page)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        try:
            digits = str(abs(value))
        except ValueError:  # beyond the interpreter's limit of digits in a str
            return f"an integer of {value.bit_length()} bits"
        sign = "-" if value < 0 else ""
        return f"{sign}{digits[:4]}...{digits[-3:]} ({len(digits)} digits)"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def seconds(
    name: str,
    value: object,
    *,
    zero: bool = False,
    most: float = MAX_SECONDS,
    none: str | None = None,
) -> float:
    """``value`` as a duration in seconds, or ``ValueError`` naming ``name``: a finite number
    above 0 (``zero``: or 0) and at most ``most``. With ``none`` (what ``None`` means, e.g.
    ``"never"``) the sentence says ``None`` is accepted too; the caller handles ``None`` first.

    >>> seconds("idle_stop_after", -1, none="never")
    Traceback (most recent call last):
    ...
    ValueError: idle_stop_after must be a positive finite number of seconds or None (never), not -1
    >>> seconds("timeout", 7200, most=3600)
    Traceback (most recent call last):
    ...
    ValueError: timeout must be a positive finite number of seconds (at most 3600), not 7200
    """
    # The common case in one test (NaN and the infinities fail a comparison; a bool is no int here).
    if (type(value) is float or type(value) is int) and (value >= 0 if zero else value > 0) and value <= most:
        return float(value)
    if not isinstance(value, bool) and isinstance(value, int | float):
        number = _float(value)
        if number is not None and (number >= 0 if zero else number > 0) and number <= most:
            return number
    kind = "non-negative" if zero else "positive"
    bound = f" (at most {_plain(most)})" if _too_large(value, most) else ""  # news only to who broke it
    alternative = f" or None ({none})" if none is not None else ""
    raise ValueError(
        f"{name} must be a {kind} finite number of seconds{bound}{alternative}, not {_shown(value)}"
    )


def _float(value: int | float) -> float | None:
    """``value`` as a finite float, or ``None`` (NaN, an infinity, an int beyond a float)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _plain(number: float) -> str:
    """``3600`` rather than ``3600.0`` or ``3.6e+03``."""
    return str(int(number)) if float(number).is_integer() else repr(number)


def _too_large(value: object, most: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return value > most
    return math.isfinite(value) and value > most


def instant(name: str, value: object) -> float:
    """``value`` as a point in time (seconds since the epoch, or a virtual clock's reading):
    any finite number, negative too.

    >>> instant("start", float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: start must be a finite number of seconds, not inf
    """
    if not isinstance(value, bool) and isinstance(value, int | float):
        number = _float(value)
        if number is not None:
            return number
    raise ValueError(f"{name} must be a finite number of seconds, not {_shown(value)}")


def count(name: str, value: object, *, most: int = MAX_COUNT) -> int:
    """``value`` as a count (retries, lines): an integer from 0 to ``most``, not a bool.

    >>> count("retries", 3)
    3
    >>> count("retries", -1)
    Traceback (most recent call last):
    ...
    ValueError: retries must be a non-negative integer, not -1
    """
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= most:
        return value
    bound = (
        f" (at most {most})"
        if isinstance(value, int) and not isinstance(value, bool) and value > most
        else ""
    )
    raise ValueError(f"{name} must be a non-negative integer{bound}, not {_shown(value)}")


#: Ids :func:`identifier` accepted lately, at its default bound (whether a string is an id
#: depends on the string alone), up to :data:`_ACCEPTED_KEPT` of them, then forgotten at once.
_ACCEPTED: set[str] = set()
_ACCEPTED_KEPT = 4096


def identifier(kind: str, value: object, *, most: int = MAX_IDENTIFIER) -> str:
    """``value`` as an id (a chat id, an owner), or ``ValueError`` in the one sentence every face
    says: valid UTF-8 text of 1 to ``most`` characters without control characters.

    >>> identifier("chat_id", "chat-1")
    'chat-1'
    >>> identifier("owner", "alice\\nbob")
    Traceback (most recent call last):
    ...
    ValueError: owner must be valid UTF-8 text of 1 to 128 characters without control characters (such as a newline), not 'alice\\nbob'
    >>> identifier("chat_id", "x" * 100_000)
    Traceback (most recent call last):
    ...
    ValueError: chat_id must be valid UTF-8 text of 1 to 128 characters without control characters (such as a newline), not 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' (100000 characters)
    """
    if most == MAX_IDENTIFIER and type(value) is str and value in _ACCEPTED:
        return value  # accepted lately: one lookup (a chat's ids come back with every request)
    if (
        isinstance(value, str)
        and 0 < len(value) <= most
        # ASCII's only refused characters are its controls, the ones it does not print: one C
        # call instead of a category per character (every request checks two ids).
        and (
            value.isprintable()
            if value.isascii()
            else not any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in value)
        )
    ):
        if most == MAX_IDENTIFIER and type(value) is str:
            if len(_ACCEPTED) >= _ACCEPTED_KEPT:
                _ACCEPTED.clear()
            _ACCEPTED.add(value)
        return value
    raise ValueError(
        f"{kind} must be valid UTF-8 text of 1 to {most} characters without control characters"
        f" (such as a newline), not {_shown_text(value)}"
    )


def _shown_text(value: object) -> str:
    """``repr(value)`` (control characters escaped), a long string cut to its start."""
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:40]!r}... ({len(value)} characters)".replace("'...", "...'", 1)
    return _shown(value)


def workspace_name_valid(value: object) -> bool:
    """Whether ``value`` follows Coder's rule for workspace names.

    >>> workspace_name_valid("dev-2"), workspace_name_valid("bad name!!"), workspace_name_valid("a" * 33)
    (True, False, False)
    """
    return (
        isinstance(value, str)
        and len(value) <= MAX_WORKSPACE_NAME
        and _WORKSPACE_NAME_RE.fullmatch(value) is not None
    )


def workspace_name(kind: str, value: object) -> str:
    """``value`` as a workspace name, or ``ValueError`` saying Coder's rule and a valid name to
    try instead (:func:`suggested_workspace_name`). A name is never renamed behind its giver's
    back: whoever gave it, a person or a model, either gets it or is told why not.

    >>> workspace_name("name", "bad name!!")
    Traceback (most recent call last):
    ...
    ValueError: name must be 1 to 32 letters, digits and single hyphens between them (Coder's rule), such as 'dev-2', not 'bad name!!'; try 'bad-name'
    """
    if workspace_name_valid(value):
        assert isinstance(value, str)
        return value
    raise ValueError(
        f"{kind} must be {WORKSPACE_NAME_RULE}, not {_shown_text(value)};"
        f" try {suggested_workspace_name(value)!r}"
    )


def suggested_workspace_name(value: object) -> str:
    """A valid name close to ``value``, to offer whoever gave an invalid one: each run of other
    characters becomes one hyphen, cut to :data:`MAX_WORKSPACE_NAME`; ``'workspace'`` when
    nothing usable is left. Deterministic (only offered, never given silently). An
    ``owner/name`` (the form ``create_workspace`` answers in) is offered its own name: a model
    that passes back what it was answered means that workspace, not one named ``owner-name``.

    >>> suggested_workspace_name("Bad Name!!"), suggested_workspace_name("--"), suggested_workspace_name("dév")
    ('Bad-Name', 'workspace', 'd-v')
    >>> len(suggested_workspace_name("x" * 100))
    32
    >>> suggested_workspace_name("alice/dev"), suggested_workspace_name("a/b c")
    ('dev', 'a-b-c')
    """
    text = value if isinstance(value, str) else ""
    owner, slash, name = text.rpartition("/")
    if slash and owner and workspace_name_valid(name):
        return name
    base = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")
    base = base[:MAX_WORKSPACE_NAME].strip("-")
    return base or "workspace"


def _validator(
    *, zero: bool, most: float, none: str | None
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(instance: object, field: attrs.Attribute[Any], value: object) -> None:
        if value is None and none is not None:
            return
        seconds(field.name, value, zero=zero, most=most, none=none)

    return check


def positive_seconds(
    *, most: float = MAX_SECONDS, none: str | None = None
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator: a duration above 0 (see :func:`seconds`); with ``none`` (what
    ``None`` means), ``None`` too.

    >>> @attrs.frozen
    ... class Timeouts:
    ...     build: float = attrs.field(validator=positive_seconds())
    >>> Timeouts(float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: build must be a positive finite number of seconds, not inf
    """
    return _validator(zero=False, most=most, none=none)


def non_negative_seconds(
    *, most: float = MAX_SECONDS, none: str | None = None
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """An attrs validator: a duration of 0 or more (see :func:`seconds`)."""
    return _validator(zero=True, most=most, none=none)
