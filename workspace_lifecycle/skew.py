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
clocks.

**The margin of deadlines and leases** (:func:`act_margin`): a replica acts on a deadline (fires
it) or on a lease's end (the reaper expires it) only ``margin`` seconds after that time on its
own clock. The margin is ``skew_margin`` (a setting, 0 by default: see
:class:`~workspace_lifecycle.Lifecycle` and :class:`~workspace_lifecycle.reaper.LeaseReaper`),
which stands for how far behind the store the replicas that stamped the time may run (no
replica can measure another's clock), plus how far this replica's own clock may run ahead of
the store's by its last measurement (``uncertainty - offset``, 0 when it is behind or nothing
was measured; only a :class:`~workspace_lifecycle.Lifecycle` measures, so a ``LeaseReaper``'s
margin is its ``skew_margin`` alone). So a deadline never fires early by the store's clock unless the replica that
stamped it ran behind the store by more than ``skew_margin``; it may fire that much late.

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

__all__ = ["WARN_FRACTION", "ClockSkew", "act_margin", "excessive", "lease_margin", "measure", "warn_above"]

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


def act_margin(skew_margin: float, measured: ClockSkew | None) -> float:
    """How long after a deadline or a lease's end, on this replica's clock, it is acted on:
    ``skew_margin`` plus the most ``measured`` says this replica's clock may run ahead of the
    store's (``uncertainty - offset``, 0 for a replica behind or with nothing measured).

    >>> act_margin(0.0, None), act_margin(1.0, None)
    (0.0, 1.0)
    >>> round(act_margin(1.0, measure(sent=100.0, store=95.0, received=100.2)), 9)  # 5.1 s ahead, +- 0.1
    6.2
    >>> act_margin(0.0, measure(sent=100.0, store=105.0, received=100.2))  # behind: late anyway
    0.0
    """
    ahead = 0.0 if measured is None else max(0.0, measured.uncertainty - measured.offset)
    return skew_margin + ahead
