"""The runtime's watch on its clock against the store's (see :mod:`.skew` for the measurement
and the margin): at start, then every ``interval`` on the store's clock, since no event says
that a host's clock drifted. A skew above a fraction of the lease is logged as a warning and
reported to the telemetry; every measurement is kept as :attr:`SkewWatch.latest`.

A store with no clock of its own (SQLite, memory: one machine's clock) has nothing to measure,
and neither has a :class:`~.clock.VirtualClock` (a test's time, not a host's).
"""

from __future__ import annotations

import logging

from . import skew, telemetry
from .adapters.base import DEFAULT_LEASE_SECONDS, Store
from .clock import Clock, VirtualClock
from .errors import StoreError
from .skew import ClockSkew

__all__ = ["SKEW_CHECK_INTERVAL", "SkewWatch"]

log = logging.getLogger("workspace_lifecycle.runtime")

#: Seconds between two measurements: clocks drift by milliseconds a day, jump rarely.
SKEW_CHECK_INTERVAL = 300.0


class SkewWatch:
    """Measures ``store``'s clock against ``clock`` (the store's clock as this replica reads it)."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        interval: float = SKEW_CHECK_INTERVAL,
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.interval = interval
        #: The last measurement (``None`` before the first, or for a store with no clock).
        self.latest: ClockSkew | None = None

    async def run(self) -> None:
        if isinstance(self.clock, VirtualClock):
            return
        while True:
            if await self.check() is None and self.latest is None:
                return  # a store with no clock of its own: nothing will ever differ
            await self.clock.sleep_until(self.clock() + self.interval)

    async def check(self) -> ClockSkew | None:
        """One measurement, reported if excessive; ``None`` if the store has no clock (or did
        not answer: the next check tries again)."""
        try:
            measured = await self.store.measure_clock_skew()
        except StoreError as exc:
            log.info("could not measure the clock skew against the store: %s", exc)
            return self.latest
        if measured is None:
            return None
        self.latest = measured
        if skew.excessive(measured, lease_seconds=self.lease_seconds):
            telemetry.report_skew(measured, bound=skew.warn_above(self.lease_seconds))
        return measured
