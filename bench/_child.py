"""The other processes of the cross-process benchmarks: ``python -m bench._child ROLE URL ...``.

Each child prints ``ready`` when set up, then JSON lines; it exits when its stdin closes.

* ``provision URL [--delay LO HI] [--agent-delay S]``: the stamping provisioner; one JSON line
  per awaited commit (:class:`bench.common.Stamp`). A ``delay LO HI`` line on stdin sets the
  delay of the builds claimed after it, answered by a ``delay`` line.
* ``idle URL --chat C --waiter ours|poller --seconds S``: one caller waits on a start build
  nobody provisions; prints the process's CPU percent of one core over ``S`` seconds.
* ``contend URL --chat C --calls N``: on each ``go`` line, ``N`` concurrent ``start_workspace``
  (``go K``: ``K`` of them); prints their latencies (from the ``go``) and the build ids they were
  answered with.
* ``scale URL --n N [--idle S] [--tuned-gc]``: see :mod:`bench.scale`; prints one JSON object.
* ``sketch memory:// --n N [--tuned-gc]``: the lower-bound sketch of :mod:`bench.sketch`.
* ``replica URL --config JSON`` and ``builder URL --config JSON``: a replica and a provisioner
  of :mod:`bench.replicas`; each waits for a ``go`` line and prints one JSON object.
* ``peer URL --config JSON``: a worker of :mod:`bench.peers` (ours, procrastinate's, the
  hand-written loop's); prints ``ready``, then answers each ``stats`` line with one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from typing import Any

import anyio
import anyio.abc

import workspace_lifecycle as wl

from . import common


def _print(obj: Any) -> None:
    print(obj if isinstance(obj, str) else json.dumps(obj), flush=True)


async def _until_eof(cancel: anyio.CancelScope) -> None:
    while await anyio.to_thread.run_sync(sys.stdin.readline):
        pass
    cancel.cancel()


async def provision(url: str, delay: tuple[float, float], agent_delay: float) -> None:
    current = list(delay)

    async def commands(cancel: anyio.CancelScope) -> None:
        while line := await anyio.to_thread.run_sync(sys.stdin.readline):
            word, *values = line.split()
            if word == "delay":
                current[:] = [float(v) for v in values]
                _print("delay")
        cancel.cancel()

    async with wl.open_store(url) as store, anyio.create_task_group() as tg:
        tg.start_soon(commands, tg.cancel_scope)
        tg.start_soon(
            lambda: common.stamping_provisioner(
                store,
                lambda s: _print(dataclasses.asdict(s)),
                delay=current,
                agent_delay=agent_delay,
            )
        )
        await anyio.sleep(0.05)
        _print("ready")


async def idle(url: str, chat: str, waiter: str, seconds: float) -> None:
    async with wl.open_store(url) as store, anyio.create_task_group() as tg:
        if waiter == "ours":
            lc = await tg.start(_lifecycle, store)
            tg.start_soon(lambda: lc.start_workspace(chat, owner="bench"))
        else:  # the poller needs no Lifecycle: it only re-reads rows
            tg.start_soon(common.coder_start, store, chat)
        await anyio.sleep(common.settle(seconds))  # fired, asleep, and past any start-up work
        percent = await common.idle_cpu_percent(seconds)
        _print({"cpu_percent": percent, "seconds": seconds})
        tg.cancel_scope.cancel()


async def _lifecycle(store: wl.Store, *, task_status: anyio.abc.TaskStatus[wl.Lifecycle]) -> None:
    async with wl.Lifecycle(store) as lc:
        task_status.started(lc)
        await anyio.sleep_forever()


async def contend(url: str, chat: str, calls: int) -> None:
    async with (
        wl.open_store(url) as store,
        wl.Lifecycle(store, build_timeout=120, agent_timeout=120) as lc,
    ):
        _print("ready")
        while (words := (await anyio.to_thread.run_sync(sys.stdin.readline)).split())[:1] == ["go"]:
            t0 = time.monotonic()
            latencies: list[float] = []
            ids: list[Any] = []
            errors: list[str] = []

            async with anyio.create_task_group() as tg:
                for _ in range(int(words[1]) if len(words) > 1 else calls):
                    tg.start_soon(_timed_start, lc, chat, t0, latencies, ids, errors)
            _print({"latencies": latencies, "build_ids": ids, "errors": errors})


async def _timed_start(
    lc: wl.Lifecycle, chat: str, t0: float, latencies: list[float], ids: list[Any], errors: list[str]
) -> None:
    r = await lc.start_workspace(chat, owner="bench")
    latencies.append(time.monotonic() - t0)
    if r.is_error or "error" in r.data:
        errors.append(r.text)
        ids.append("error")
    else:  # the build this call fired or waited for, or none: it found the workspace running
        ids.append(r.data.get("build_id") or ("no_build" if r.data.get("no_build") else None))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._child")
    parser.add_argument(
        "role", choices=["provision", "idle", "contend", "scale", "sketch", "replica", "builder", "peer"]
    )
    parser.add_argument("url")
    parser.add_argument("--delay", type=float, nargs=2, default=(0.01, 0.01))
    parser.add_argument("--agent-delay", type=float, default=0.005)
    parser.add_argument("--chat", default="c0")
    parser.add_argument("--waiter", choices=["ours", "poller"], default="ours")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--calls", type=int, default=250)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--tuned-gc", action="store_true", help="set the GC as bench.scale.tune_gc")
    parser.add_argument(
        "--config", default="{}", help="JSON: the replica's, builder's or peer's configuration"
    )
    args = parser.parse_args(argv)
    if args.role == "provision":
        anyio.run(provision, args.url, tuple(args.delay), args.agent_delay)
    elif args.role == "idle":
        anyio.run(idle, args.url, args.chat, args.waiter, args.seconds)
    elif args.role == "contend":
        anyio.run(contend, args.url, args.chat, args.calls)
    elif args.role in ("replica", "builder"):
        from . import replicas

        child = replicas.replica_child if args.role == "replica" else replicas.builder_child
        anyio.run(child, args.url, json.loads(args.config))
    elif args.role == "peer":
        from . import peers

        anyio.run(peers.child, args.url, json.loads(args.config), backend="asyncio")
    elif args.role == "sketch":
        from . import scale

        _print(anyio.run(scale.sketch_child, args.n, args.tuned_gc))
    else:
        from . import scale

        _print(
            anyio.run(lambda: scale.child(args.url, args.n, args.seconds, args.delay[0], tuned=args.tuned_gc))
        )


if __name__ == "__main__":
    main()
    # Every figure is out: with the heap frozen the interpreter's shutdown does not walk every
    # object of the imports again (0.2-0.4 s a process, the most of a child's exit).
    gc.freeze()
