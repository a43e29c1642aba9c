"""3. Engine overhead: events/s of the in-memory Lifecycle pump applying events into Trackers,
against bare python-statemachine ``send`` on the same WorkspaceMachine.

Reuses :mod:`bench.engine` (``bare`` and ``runtime``); each is measured ``repeats`` times,
interleaved, and the median is kept.
"""

from __future__ import annotations

import statistics

import anyio

from . import engine
from .common import Context, Result, Row


def run(ctx: Context) -> Result:
    result = Result("engine", ctx.quick)
    cycles, repeats = (50, 1) if ctx.quick else (3000, 3)
    bare, ours = [], []
    for _ in range(repeats):
        bare.append(engine.bare(cycles))
        ours.append(anyio.run(engine.runtime, cycles, backend="asyncio"))
    b, o = statistics.median(bare), statistics.median(ours)
    result.data.update({"bare": bare, "runtime": ours, "cycles": cycles})
    result.add(
        Row(
            "events/s, Lifecycle pump on the memory store",
            o,
            "events/s",
            b,
            "bare sm.send",
            o / b,
            "ours/bare",
            "≥ 0.8x",
            o / b >= 0.8,
            note=f"median of {repeats} x {cycles} start/stop cycles",
        )
    )
    return result
