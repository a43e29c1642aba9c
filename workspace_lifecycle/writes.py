"""What each store write changes, decided from the rows it read. Pure: the stores persist it.

Theory of operation
-------------------
Every write of the store interface is a read, a decision and a write inside one transaction.
The read and the write are the adapter's (SQL, dictionaries); the decision is here, once, for
every adapter: whether a compare-and-set holds, which rows a finished build changes, which
events the write appends. An adapter reads the rows its transaction locked, calls one function
of this module, and persists the :class:`Write` it returns, numbering the events in commit
order. It repeats no rule.

The functions take everything as values: the ids of the rows to insert (the adapter makes
them) and the wall-clock time to stamp on the events. No I/O, no clocks, no awaits.

The decisions live by concern, and this module re-exports every one of them (its ``__all__``):
:mod:`~workspace_lifecycle.write` (the :class:`Write` and what the others share),
:mod:`~workspace_lifecycle.request_writes` (chats, workspaces, requested and deferred builds,
pools, limits), :mod:`~workspace_lifecycle.build_writes` (a build's worker: claim, lease,
finish, agent reports, log) and :mod:`~workspace_lifecycle.deadline_writes` (between turns:
deadlines, activity, holds).
"""

from __future__ import annotations

from .build_writes import (
    append_log,
    check_lease_seconds,
    claim_build,
    expire_lease,
    finish_build,
    parse_lifecycle,
    parse_status,
    renew_lease,
    report_agent,
)
from .build_writes import needs_usage as needs_usage
from .deadline_writes import fire_deadline, hold_turn, release_turn, touch, warn_deadline
from .request_writes import (
    build_moved_on,
    check_quota,
    claim_pooled,
    create_landed,
    create_workspace,
    defer_request,
    deferral_holds,
    fill_pool,
    rebound,
    register_chat,
    request_build,
    set_limits,
)
from .write import Write, applied

__all__ = [
    "Write",
    "append_log",
    "applied",
    "build_moved_on",
    "check_lease_seconds",
    "claim_build",
    "claim_pooled",
    "create_landed",
    "create_workspace",
    "defer_request",
    "deferral_holds",
    "expire_lease",
    "fill_pool",
    "finish_build",
    "fire_deadline",
    "hold_turn",
    "parse_lifecycle",
    "parse_status",
    "check_quota",
    "rebound",
    "register_chat",
    "release_turn",
    "renew_lease",
    "report_agent",
    "request_build",
    "set_limits",
    "touch",
    "warn_deadline",
]
