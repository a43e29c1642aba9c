"""Readiness that follows the agent: what a provisioner reports as its probe keeps watching a
ready agent. Pure.

Theory of operation
-------------------
A provisioner reports an agent ``ready`` when its probe first passes. From then on the probe
keeps watching, once per interval, for as long as the process runs; each look is one
:class:`Look` (it answered, or not). An agent that misses ``misses`` looks in a row (one failed
connect may be a full backlog or a slow accept) is reported ``disconnected``: the workspace
leaves ``agent_ready`` and the tools answer that its agent is not ready. One that answers again
is reported ``ready`` again. Nothing is reported while the answer does not change, so a healthy
agent costs one connect per interval and no store write.

Rules for this module: no I/O, no awaits, no clocks, no anyio.
"""

from __future__ import annotations

import attrs

from .values import AgentLifecycle

__all__ = ["MISSES", "Followed", "follow"]

#: Looks in a row an agent may miss before it is reported ``disconnected``.
MISSES = 2


@attrs.frozen
class Followed:
    """What the watch knows of one ready agent: whether it was last reported answering, and how
    many looks in a row it has missed."""

    answering: bool = True
    missed: int = 0


def follow(
    known: Followed, answered: bool, *, misses: int = MISSES
) -> tuple[Followed, AgentLifecycle | None]:
    """The watch after one more look (``answered`` or not), and the report it calls for, if any.

    >>> known, report = follow(Followed(), answered=False)
    >>> known, report
    (Followed(answering=True, missed=1), None)
    >>> known, report = follow(known, answered=False)
    >>> known, report
    (Followed(answering=False, missed=2), <AgentLifecycle.DISCONNECTED: 'disconnected'>)
    >>> follow(known, answered=True)
    (Followed(answering=True, missed=0), <AgentLifecycle.READY: 'ready'>)
    """
    if misses < 1:
        raise ValueError(f"misses must be at least 1, not {misses}")
    if answered:
        return Followed(True, 0), (None if known.answering else AgentLifecycle.READY)
    missed = known.missed + 1
    if known.answering and missed >= misses:
        return Followed(False, missed), AgentLifecycle.DISCONNECTED
    return Followed(known.answering, missed), None
