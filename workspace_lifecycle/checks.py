"""Configuration numbers, checked in one place: durations in seconds, counts. Pure.

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

Rules for this module: no I/O, no awaits, no clocks, no anyio.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

__all__ = [
    "MAX_COUNT",
    "MAX_SECONDS",
    "count",
    "instant",
    "non_negative_seconds",
    "positive_seconds",
    "seconds",
]

#: The longest duration any parameter takes: a hundred years of seconds.
MAX_SECONDS = 100 * 365 * 24 * 3600
#: The largest count (retries, lines) any parameter takes.
MAX_COUNT = 1_000_000


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
