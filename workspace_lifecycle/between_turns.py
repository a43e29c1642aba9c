"""Between turns, as values: a chat's :class:`Policy`, a workspace's armed :class:`Deadline`,
the request :class:`Deferred` behind a build in flight and the :class:`Hold` of a turn, each
with the parser of its stored columns (a bad value is a
:class:`~workspace_lifecycle.errors.CorruptStateError` naming the row).

Frozen attrs classes; nothing here does I/O. :mod:`~workspace_lifecycle.values` re-exports
every name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from .checks import positive_seconds
from .errors import CorruptStateError
from .vocabulary import Reason, Transition, parse_enum

__all__ = [
    "DEADLINE_TRANSITION",
    "Deadline",
    "Deferred",
    "Hold",
    "Policy",
    "dump_holds",
    "parse_deadline",
    "parse_deferred",
    "parse_holds",
    "parse_policy",
]

_str = attrs.validators.instance_of(str)


#: A duration of a policy: positive seconds, or ``None`` for never.
_seconds_or_none = positive_seconds(none="never")


@attrs.frozen
class Policy:
    """What happens to a chat's workspace between turns (seconds; ``None`` means never).

    ``warn_before``: a ``deadline_approaching`` event that many seconds before each idle stop
    and retention delete (shorter than both, so a warning always comes after the deadline was
    set); ``None``: no warning.

    >>> Policy(idle_stop_after=900)
    Policy(idle_stop_after=900, delete_after_stopped=None, warn_before=None)
    >>> Policy(idle_stop_after=-1)
    Traceback (most recent call last):
    ...
    ValueError: idle_stop_after must be a positive finite number of seconds or None (never), not -1
    >>> Policy(idle_stop_after=60, warn_before=60)
    Traceback (most recent call last):
    ...
    ValueError: warn_before (60) must be shorter than idle_stop_after (60)
    """

    idle_stop_after: float | None = attrs.field(default=None, validator=_seconds_or_none)
    delete_after_stopped: float | None = attrs.field(default=None, validator=_seconds_or_none)
    warn_before: float | None = attrs.field(default=None, validator=_seconds_or_none)

    @warn_before.validator
    def _shorter(self, attribute: attrs.Attribute[float | None], value: float | None) -> None:
        if value is None:
            return
        for name in ("idle_stop_after", "delete_after_stopped"):
            duration = getattr(self, name)
            if duration is not None and value >= duration:
                raise ValueError(f"{attribute.name} ({value!r}) must be shorter than {name} ({duration!r})")

    @property
    def never(self) -> bool:
        """Nothing ever happens automatically."""
        return self.idle_stop_after is None and self.delete_after_stopped is None


#: The build each deadline's reason fires: idle stops, retention deletes. The one table of it:
#: a reason missing here arms no deadline.
DEADLINE_TRANSITION: Mapping[Reason, Transition] = {
    Reason.IDLE: Transition.STOP,
    Reason.RETENTION: Transition.DELETE,
}


@attrs.frozen
class Deadline:
    """A workspace's next automatic action: at wall-clock time ``at``, for ``reason``.

    ``warn_at``: when a ``deadline_approaching`` event is due (``None``: never), computed from
    the chat's ``warn_before`` when the deadline was armed; ``warned``: that event was written
    (a pushed deadline is a new value, not warned yet).
    """

    at: float
    reason: Reason = attrs.field(validator=attrs.validators.in_(tuple(DEADLINE_TRANSITION)))
    warn_at: float | None = None
    warned: bool = False

    @property
    def transition(self) -> Transition:
        """The build the deadline fires (:data:`DEADLINE_TRANSITION`)."""
        return DEADLINE_TRANSITION[self.reason]

    def due(self, now: float) -> bool:
        """Has the deadline passed at ``now``? (At the deadline itself it has.)"""
        return self.at <= now


def parse_policy(
    idle_stop_after: object, delete_after_stopped: object, warn_before: object = None, *, key: object
) -> Policy:
    """A chat's policy from its stored columns; a bad value is a :class:`CorruptStateError`."""
    try:
        return Policy(
            idle_stop_after=idle_stop_after,  # type: ignore[arg-type]
            delete_after_stopped=delete_after_stopped,  # type: ignore[arg-type]
            warn_before=warn_before,  # type: ignore[arg-type]
        )
    except ValueError:
        raise CorruptStateError(
            "chats",
            key,
            "idle_stop_after/delete_after_stopped/warn_before",
            (idle_stop_after, delete_after_stopped, warn_before),
        ) from None


def finite(value: object) -> bool:
    """A stored number: an ``int`` or a ``float``, finite, and not a ``bool``."""
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def parse_deadline(
    at: object, reason: object, warn_at: object = None, warned: object = False, *, key: object
) -> Deadline | None:
    """A workspace's armed deadline from its stored columns (``at`` and ``reason`` both set, or
    neither; ``warn_at`` and ``warned`` only with them)."""
    if at is None and reason is None:
        return None
    if not finite(at):
        raise CorruptStateError("workspaces", key, "deadline_at", at)
    kind = parse_enum(Reason, reason, table="workspaces", key=key, column="deadline_reason")
    if kind not in DEADLINE_TRANSITION:
        raise CorruptStateError("workspaces", key, "deadline_reason", reason)
    if warn_at is not None and not finite(warn_at):
        raise CorruptStateError("workspaces", key, "deadline_warn_at", warn_at)
    if warned not in (True, False, 0, 1):  # SQLite stores booleans as integers
        raise CorruptStateError("workspaces", key, "deadline_warned", warned)
    return Deadline(
        float(at),  # type: ignore[arg-type]
        kind,
        None if warn_at is None else float(warn_at),  # type: ignore[arg-type]
        bool(warned),
    )


@attrs.frozen
class Deferred:
    """A request answered ``wait=False`` while another kind of build ran, stored on its
    workspace as intent: fire a ``transition`` build once build ``behind`` ends, if the table
    still allows it then. The write that finishes build ``behind`` acts on it (and clears it)
    in its own transaction, so no process needs to be alive to carry it out.
    ``requested_by`` is the owner whose request it is; ``running_limit`` the runtime's default
    limit of running workspaces when it was asked (the runtime that carries it out may be gone:
    the limit travels with the request), checked with the owner's stored limits when it fires.
    """

    transition: Transition = attrs.field(validator=attrs.validators.instance_of(Transition))
    behind: int = attrs.field(validator=attrs.validators.instance_of(int))
    requested_by: str = attrs.field(validator=_str)
    running_limit: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(int))
    )

    def record(self) -> dict[str, Any]:
        """The JSON object a store keeps (:func:`parse_deferred` reads it back)."""
        record: dict[str, Any] = {
            "transition": self.transition.value,
            "behind": self.behind,
            "by": self.requested_by,
        }
        if self.running_limit is not None:
            record["running"] = self.running_limit
        return record

    def stored(self) -> str:
        """:meth:`record` as JSON text."""
        return json.dumps(self.record())


def parse_deferred(value: object, *, key: object) -> Deferred | None:
    """A workspace's deferred request from its stored column (JSON text, or an already parsed
    object); a bad value is a :class:`CorruptStateError` naming the row.

    >>> parse_deferred(Deferred(Transition.START, 2, "alice").stored(), key="w1")
    Deferred(transition=<Transition.START: 'start'>, behind=2, requested_by='alice', running_limit=None)
    """
    if value is None:
        return None
    try:
        data = json.loads(value) if isinstance(value, str) else value
        if not isinstance(data, dict) or isinstance(data.get("behind"), bool):
            raise ValueError(value)
        running = data.get("running")
        if isinstance(running, bool):
            raise ValueError(value)
        return Deferred(Transition(data["transition"]), data["behind"], data["by"], running)
    except (ValueError, TypeError, KeyError):
        raise CorruptStateError("workspaces", key, "deferred", value) from None


@attrs.frozen
class Hold:
    """A turn holding a workspace (:meth:`~workspace_lifecycle.Lifecycle.turn`): its fencing
    ``token`` and when it lapses (``expires_at``, store time) unless its holder renews it.

    While a hold is live no idle stop fires; a hold whose holder died lapses at its expiry.
    """

    token: str = attrs.field(validator=_str)
    expires_at: float = attrs.field(converter=float)

    def due(self, now: float) -> bool:
        """Has the hold lapsed at ``now``? (At its expiry itself it has, as a lease.)

        >>> Hold("t", 100.0).due(99.9), Hold("t", 100.0).due(100.0)
        (False, True)
        """
        return self.expires_at <= now


def parse_holds(value: object, *, key: object) -> tuple[Hold, ...]:
    """A workspace's holds from their stored column: ``None`` (none) or a JSON array (text, or
    already decoded by the driver) of ``[token, expires_at]`` pairs; anything else is a
    :class:`CorruptStateError` naming the row."""
    if value is None:
        return ()
    try:
        pairs = json.loads(value) if isinstance(value, str) else value
        if not isinstance(pairs, list):
            raise ValueError(pairs)
        holds = []
        for pair in pairs:
            token, expires_at = pair
            if not isinstance(token, str) or isinstance(expires_at, bool):
                raise ValueError(pair)
            if not isinstance(expires_at, int | float) or not math.isfinite(expires_at):
                raise ValueError(pair)
            holds.append(Hold(token, expires_at))
        return tuple(holds)
    except (ValueError, TypeError):
        raise CorruptStateError("workspaces", key, "holds", value) from None


def dump_holds(holds: tuple[Hold, ...]) -> str | None:
    """The stored column of ``holds`` (:func:`parse_holds` reads it back); ``None`` for none."""
    if not holds:
        return None
    return json.dumps([[hold.token, hold.expires_at] for hold in holds])
