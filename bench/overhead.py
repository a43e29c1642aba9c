"""3. Engine overhead: events/s of the in-memory Lifecycle pump applying events into Trackers,
against bare python-statemachine ``send`` on the same WorkspaceMachine and against the bare
compiled table the pump looks events up in.

Reuses :mod:`bench.engine` (``bare``, ``compiled`` and ``runtime``); each is measured
``repeats`` times, interleaved, and the median is kept.
"""

from __future__ import annotations

import statistics

import anyio

from . import engine
from .common import Context, Result, Row


def run(ctx: Context) -> Result:
    result = Result("engine", ctx.quick)
    cycles, repeats = (50, 1) if ctx.quick else (3000, 3)
    bare, table, ours = [], [], []
    for _ in range(repeats):
        bare.append(engine.bare(cycles))
        table.append(engine.compiled(cycles * 10))
        ours.append(anyio.run(engine.runtime, cycles, backend="asyncio"))
    b, c, o = statistics.median(bare), statistics.median(table), statistics.median(ours)
    result.data.update({"bare": bare, "compiled": table, "runtime": ours, "cycles": cycles})
    result.add(
        Row(
            "events/s, Lifecycle pump on the memory store, against python-statemachine",
            o,
            "events/s",
            b,
            "bare sm.send",
            o / b,
            "ours/bare",
            "≥ 5x",
            o / b >= 5,
            note=f"median of {repeats} x {cycles} start/stop cycles; the pump reads the log, filters"
            " stale and repeated events, applies them and publishes each state change to a watcher",
        )
    )
    result.add(
        Row(
            "events/s, Lifecycle pump on the memory store, against its own compiled table",
            o,
            "events/s",
            c,
            "bare compiled table",
            o / c,
            "ours/bare",
            note=f"median of {repeats} x {cycles * 10} cycles of bare lookups: what the pump adds"
            " around the table (log, filter, tracker, wake-ups, watcher)",
        )
    )
    return result
