"""Clock skew between a replica and its store: one measurement, and when it is too much. Pure.

Every replica stamps its writes (events, deadlines, lease expiries) with its own wall clock, so
two replicas whose clocks disagree by ``s`` seconds disagree by ``s`` on every deadline and
lease: a reaper ahead by ``s`` expires a lease ``s`` early, a runtime ahead by ``s`` fires an
idle stop ``s`` before a touch's deadline. The store's clock is the common reference each
replica measures itself against (PostgreSQL's ``clock_timestamp()``; a SQLite or memory store
has one machine clock, the replicas' own, and nothing to measure).

**One measurement** (:func:`measure`) is a round trip, as NTP's: the replica reads its clock
(``sent``), the store reads its own (``store``), the replica reads its clock again
(``received``). The store read its clock somewhere in between, so the offset (store minus
replica) is ``store - (sent + received) / 2`` give or take half the round trip, its
``uncertainty``.

**The margin.** A lease is renewed every third of it (:data:`~.leases.RENEW_EVERY`), so a skew
below ``(1 - RENEW_EVERY) * lease_seconds`` (20 s of the default 30 s) never expires a live
worker whose renewals land, and one below a third of it survives one failed renewal. A skew
known to exceed :data:`WARN_FRACTION` of the lease (3 s of 30 s) is reported
(:func:`excessive`): well inside the margin of a failed renewal, it is time to fix the hosts'
clocks. Deadlines keep no margin of their own: they fire up to the skew early or late (the
runtime's warning says by how much).

>>> skew = measure(sent=100.0, store=105.2, received=100.4)
>>> round(skew.offset, 3), round(skew.uncertainty, 3)
(5.0, 0.2)
>>> excessive(skew, lease_seconds=30.0)
True
>>> excessive(measure(sent=100.0, store=100.5, received=100.4), lease_seconds=30.0)
False
"""

from __future__ import annotations

import math

import attrs

from .leases import RENEW_EVERY

__all__ = ["WARN_FRACTION", "ClockSkew", "excessive", "lease_margin", "measure", "warn_above"]

#: The fraction of a lease above which a measured skew is reported.
WARN_FRACTION = 0.1


@attrs.frozen
class ClockSkew:
    """One measurement: the store's clock minus the replica's (``offset``, positive when the
    replica is behind), known within ``uncertainty`` (half the round trip), taken at
    ``at`` on the replica's clock."""

    offset: float
    uncertainty: float
    at: float

    @property
    def at_least(self) -> float:
        """The smallest skew this measurement proves (0 when the round trip hides it)."""
        return max(0.0, abs(self.offset) - self.uncertainty)


def measure(*, sent: float, store: float, received: float) -> ClockSkew:
    """The skew a round trip shows (see the module docstring); a clock that went back during
    it counts as no round trip."""
    if not all(math.isfinite(x) for x in (sent, store, received)):
        raise ValueError(f"clock readings must be finite, not {(sent, store, received)!r}")
    half = max(0.0, received - sent) / 2
    return ClockSkew(offset=store - (sent + half), uncertainty=half, at=received)


def warn_above(lease_seconds: float) -> float:
    """The skew above which :func:`excessive` reports: :data:`WARN_FRACTION` of the lease."""
    return WARN_FRACTION * lease_seconds


def lease_margin(lease_seconds: float, failed_renewals: int = 0) -> float:
    """The skew a live worker's lease survives with ``failed_renewals`` renewals in a row
    lost: its lease less the time until the first renewal that lands.

    >>> round(lease_margin(30.0), 9), round(lease_margin(30.0, failed_renewals=1), 9)
    (20.0, 10.0)
    """
    return max(0.0, lease_seconds * (1 - RENEW_EVERY * (1 + failed_renewals)))


def excessive(skew: ClockSkew, *, lease_seconds: float) -> bool:
    """Whether ``skew`` surely exceeds :func:`warn_above` of ``lease_seconds``."""
    return skew.at_least > warn_above(lease_seconds)
