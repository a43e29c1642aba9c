"""When a worker renews the lease it holds, and when its claim loop claims. Pure.

A claim is a lease (:meth:`~workspace_lifecycle.adapters.base.Store.claim_build`): the worker
renews it every third of ``lease_seconds`` while it works, so that two renewals in a row may
fail and the lease still never runs out under a live worker. The renewals are decided here, as
plain arithmetic on times the caller read from its clock: a build whose work ends before a third
of its lease has passed is never renewed at all (most builds of a fast provisioner), and one
heartbeat serves every build a provisioner holds, sleeping until the earliest renewal due.

A claim loop claims when the log says a build was queued (:func:`claims_owed`), not at every
wake-up: a provisioner's own claim, finish and agent report wake it too.

Rules for this module: no I/O, no awaits, no clocks, no anyio.
"""

from __future__ import annotations

from collections.abc import Iterable

from .values import EventKind, JobStatus, Lease, StoreEvent

__all__ = [
    "RENEW_EVERY",
    "claims_owed",
    "expiry_due",
    "needs_renewal",
    "renewal_due",
    "retry_due",
    "sooner_lease",
]

#: The fraction of a lease after which its holder renews it.
RENEW_EVERY = 1 / 3


def renewal_due(held_since: float, lease_seconds: float, expires_at: float) -> float:
    """When the holder renews a lease it holds since ``held_since`` (the claim, or the sending of
    the last renewal that landed): a third of the lease later, and never after it runs out.

    >>> renewal_due(100.0, 30.0, 130.0)
    110.0
    """
    return min(held_since + lease_seconds * RENEW_EVERY, expires_at)


def needs_renewal(claimed_at: float, lease_seconds: float, work_seconds: float) -> bool:
    """Whether work of ``work_seconds`` begun at ``claimed_at`` outlives the first renewal due.

    A build that completes before a third of its lease needs no renewal at all:

    >>> needs_renewal(100.0, 30.0, 0.05), needs_renewal(100.0, 30.0, 12.0)
    (False, True)
    """
    return claimed_at + work_seconds >= renewal_due(claimed_at, lease_seconds, claimed_at + lease_seconds)


def retry_due(now: float, lease_seconds: float, expires_at: float) -> float:
    """When to try again after a renewal failed on a store error: half an interval later (a
    third renewal a whole interval later would come as the lease runs out), at the latest when
    the lease runs out (the holder then stops).

    >>> retry_due(110.0, 30.0, 130.0)
    115.0
    """
    return min(now + lease_seconds * RENEW_EVERY / 2, expires_at)


def expiry_due(lease: Lease, margin: float = 0.0) -> float:
    """When a reaper expires ``lease``: its end plus ``margin`` (the skew margin, see
    :func:`~workspace_lifecycle.skew.act_margin`), on the reaper's clock.

    >>> expiry_due(Lease("b1", "w1", "worker", "t", expires_at=130.0), margin=1.5)
    131.5
    """
    return lease.expires_at + margin


def claims_owed(events: Iterable[StoreEvent]) -> int:
    """How many claims the log's news call for: one per ``build_queued`` (each is at most one
    more pending build; a claim that finds nothing ends them early)."""
    return sum(1 for event in events if event.kind is EventKind.BUILD_QUEUED)


def sooner_lease(events: Iterable[StoreEvent]) -> bool:
    """Whether the news may hold a lease that runs out sooner than the one a reaper knows: a
    claim (a build moved to ``running``). Renewals append no event and only postpone; a build
    that ended frees its lease (the reaper finds it gone at the old time, and reads on)."""
    return any(
        event.kind is EventKind.BUILD_UPDATED and event.status is JobStatus.RUNNING for event in events
    )
