"""Events per second: the in-memory runtime's pump against bare python-statemachine ``send``
and against the bare compiled table.

Run ``python -m bench.engine`` (or ``python bench/engine.py``) from the repository root.

* bare: one :class:`~workspace_lifecycle.machine.WorkspaceMachine` and ``sm.send(event, ev=...)``
  for a cycle of start/agent/stop events, with no filtering and no I/O;
* compiled: the same cycle looked up in :data:`~workspace_lifecycle.machine.TABLE` (what the
  pump uses instead of ``send``), also with no filtering and no I/O;
* runtime: the same cycle written to a memory store in bursts, then applied by a
  :class:`~workspace_lifecycle.Lifecycle`'s pump (read the log, stale/duplicate filter,
  machine, publish each state change to a ``watch`` subscriber). Timed from the end of the
  burst until the watcher has seen the last change.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import cast

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, EventKind, JobStatus, StoreEvent, Transition
from workspace_lifecycle.machine import TABLE, WorkspaceMachine, select


class _Model:
    """What the guards read: the agent through ``model.tracker`` (as the runtime binds it)."""

    agent: AgentLifecycle | None = None
    state: wl.WorkspaceState | None = None

    @property
    def tracker(self) -> _Model:
        return self


def _plan() -> list[tuple[str, StoreEvent]]:
    def event(transition: Transition) -> StoreEvent:
        return StoreEvent(
            seq=1, kind=EventKind.BUILD_QUEUED, workspace_id="w", chat_id="c", transition=transition
        )

    start, stop = event(Transition.START), event(Transition.STOP)
    return [
        ("build_queued", start),
        ("build_succeeded", start),
        ("agent_ready", start),
        ("agent_not_ready", start),
        ("build_queued", stop),
        ("build_succeeded", stop),
    ]


def bare(cycles: int) -> float:
    """Events/s of WorkspaceMachine.send over ``cycles`` cycles of 6 events."""
    model = _Model()
    sm = WorkspaceMachine(model=model, state_field="state")
    plan = _plan()
    t0 = time.perf_counter()
    for _ in range(cycles):
        for name, ev in plan:
            sm.send(name, ev=ev)
    elapsed = time.perf_counter() - t0
    assert model.state is wl.WorkspaceState.STOPPED
    return cycles * len(plan) / elapsed


def compiled(cycles: int) -> float:
    """Events/s of the compiled table's lookup (``select``) over the same cycles as :func:`bare`."""
    tracker = wl.Tracker("w", "c")
    plan = _plan()
    t0 = time.perf_counter()
    for _ in range(cycles):
        for name, ev in plan:
            arc = select(TABLE, tracker, name, ev)
            assert arc is not None
            tracker.state = arc.target
    elapsed = time.perf_counter() - t0
    assert tracker.state is wl.WorkspaceState.STOPPED
    return cycles * len(plan) / elapsed


async def runtime(cycles: int, burst: int = 200) -> float:
    """Events/s applied by the Lifecycle's pump (7 events and 5 state changes per cycle)."""
    async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lc:
        await lc.register_chat("c1", owner="bench")
        await lc.create_workspace("c1", owner="bench", name="dev", wait=False)
        build = await store.claim_build("bench")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
        await lc.stop_workspace("c1", owner="bench", wait=False)
        build = await store.claim_build("bench")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED)
        chat = await store.get_chat("c1")
        assert chat is not None and chat.workspace_id is not None
        ws = chat.workspace_id
        seen = 0
        wanted = 0
        caught_up = anyio.Event()

        async def watch() -> None:
            nonlocal seen
            stream = cast(AsyncGenerator[wl.StateChange, None], lc.watch("c1"))
            async with aclosing(stream) as changes:
                async for _ in changes:
                    seen += 1
                    if seen == wanted:
                        caught_up.set()

        applied_before = 0
        total = 0.0
        events = 0
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.wait_all_tasks_blocked()
            applied_before = lc.events_applied
            done = 0
            while done < cycles:
                n = min(burst, cycles - done)
                caught_up = anyio.Event()
                head = await store.head()
                latest = (await store.workspace_facts(ws)).latest_build
                assert latest is not None
                number = latest.number
                for _ in range(n):  # the memory store never yields: the pump sleeps meanwhile
                    await store.request_build(ws, Transition.START, expected_build_number=number)
                    b = await store.claim_build("bench")
                    assert b is not None
                    await store.finish_build(b.build_id, JobStatus.SUCCEEDED, has_agent=True)
                    await store.report_agent(ws, AgentLifecycle.READY)
                    await store.request_build(ws, Transition.STOP, expected_build_number=number + 1)
                    b = await store.claim_build("bench")
                    assert b is not None
                    await store.finish_build(b.build_id, JobStatus.SUCCEEDED)
                    number += 2
                wanted = seen + 5 * n
                events += await store.head() - head
                t0 = time.perf_counter()
                await caught_up.wait()
                total += time.perf_counter() - t0
                done += n
            tg.cancel_scope.cancel()
        assert lc.events_applied - applied_before == events
        return events / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=3000, help="start/stop cycles per measurement")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    args = parser.parse_args(argv)
    bare_rate = bare(args.cycles)
    compiled_rate = compiled(args.cycles * 10)
    runtime_rate = anyio.run(runtime, args.cycles, backend=args.backend)
    print(f"bare python-statemachine send: {bare_rate:>10,.0f} events/s")
    print(f"bare compiled table:           {compiled_rate:>10,.0f} events/s")
    print(f"Lifecycle pump (memory store): {runtime_rate:>10,.0f} events/s ({args.backend})")
    print(f"ratio runtime/bare send:       {runtime_rate / bare_rate:>10.2f}")
    print(f"ratio runtime/compiled table:  {runtime_rate / compiled_rate:>10.2f}")


if __name__ == "__main__":
    main()
