"""A replica process for the multi-process tests on SQLite and PostgreSQL (a script, not collected).

Modes (argv[1]):

* ``race URL CHAT OWNER N PROVISION``: open the store and a Lifecycle (and a
  SimulatedProvisioner if PROVISION is ``1``), print ``ready``, wait for ``go`` on stdin, run N
  concurrent ``start_workspace`` calls, print their results as one JSON line, then wait for
  ``exit`` on stdin (so a provisioner outlives every caller).
* ``wait URL ROUNDS``: open the store (PostgreSQL: with a one-minute fallback poll, so only
  NOTIFY can wake it quickly); for each round print ``ready HEAD``, sleep in
  ``wait_for_change(HEAD)`` and print ``woke SEQ MONOTONIC`` the moment it returns.
* ``start URL CHAT OWNER``: print ``ready``, then call ``start_workspace`` (with no provisioner
  it waits for the build until killed) and print the answer as JSON.
* ``defer URL CHAT OWNER``: call ``start_workspace`` with ``wait=False``, print the answer as
  JSON, then wait to be killed (the parent SIGKILLs it while the start is deferred).
* ``deadlines URL DIE``: run a Lifecycle that fires the store's deadlines; print ``ready`` and
  then ``fired WORKSPACE`` for each deadline it fires, until ``exit`` on stdin. With DIE ``1`` it
  kills itself with SIGKILL the moment its first fire has committed (before it learns the answer).

The parent talks to it through stdin/stdout, one line per message.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import anyio

import workspace_lifecycle as wl
import workspace_lifecycle.faults
from workspace_lifecycle.adapters.base import Topic


async def _line() -> str:
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


def _say(*parts: object) -> None:
    print(*parts, flush=True)


async def race(url: str, chat: str, owner: str, n: int, provision: bool) -> None:
    async with (
        wl.open_store(url) as store,
        wl.Lifecycle(store, build_timeout=60, agent_timeout=60) as lc,
        anyio.create_task_group() as outer,
    ):
        if provision:
            outer.start_soon(wl.SimulatedProvisioner(store, build_seconds=0.2, worker=f"p{n}").run)
        _say("ready")
        assert await _line() == "go"
        results: list[dict[str, object]] = []

        async def one() -> None:
            r = await lc.start_workspace(chat, owner=owner)
            results.append({"is_error": r.is_error, "data": r.data})

        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(one)
        _say(json.dumps(results))
        assert await _line() == "exit"
        outer.cancel_scope.cancel()


async def wait(url: str, rounds: int) -> None:
    options = {"poll_interval": 60.0} if url.startswith("postgres") else {}
    async with wl.open_store(url, **options) as store:
        with store.interest(Topic.EVERY_WORKSPACE):  # it waits for news of any workspace
            for _ in range(rounds):
                head = await store.head()
                _say("ready", head)
                await store.wait_for_change(head)
                woke = time.monotonic()
                _say("woke", await store.head(), woke)


async def start(url: str, chat: str, owner: str) -> None:
    async with wl.open_store(url) as store, wl.Lifecycle(store) as lc:
        _say("ready")
        r = await lc.start_workspace(chat, owner=owner)
        _say(json.dumps({"is_error": r.is_error, "data": r.data}))


async def defer(url: str, chat: str, owner: str) -> None:
    async with wl.open_store(url) as store, wl.Lifecycle(store) as lc:
        r = await lc.start_workspace(chat, owner=owner, wait=False)
        _say(json.dumps({"is_error": r.is_error, "data": r.data}))
        await anyio.sleep_forever()


class _DieAfterFire(wl.faults.FaultyStore):
    """Passes everything through; SIGKILLs this process right after a fire commits."""

    async def fire_deadline(self, workspace_id: str, expected: wl.Deadline) -> wl.Outcome:
        outcome = await self.inner.fire_deadline(workspace_id, expected)
        if outcome.fired:
            os.kill(os.getpid(), signal.SIGKILL)
        return outcome


class _Announcing(wl.faults.FaultyStore):
    async def fire_deadline(self, workspace_id: str, expected: wl.Deadline) -> wl.Outcome:
        outcome = await self.inner.fire_deadline(workspace_id, expected)
        if outcome.fired:
            _say("fired", workspace_id)
        return outcome


async def deadlines(url: str, die: bool) -> None:
    async with wl.open_store(url) as raw:
        store = (_DieAfterFire if die else _Announcing)(raw)
        async with wl.Lifecycle(store):
            _say("ready")
            assert await _line() == "exit"


def main(argv: list[str]) -> None:
    mode = argv[1]
    if mode == "race":
        anyio.run(race, argv[2], argv[3], argv[4], int(argv[5]), argv[6] == "1", backend="asyncio")
    elif mode == "start":
        anyio.run(start, argv[2], argv[3], argv[4], backend="asyncio")
    elif mode == "defer":
        anyio.run(defer, argv[2], argv[3], argv[4], backend="asyncio")
    elif mode == "deadlines":
        anyio.run(deadlines, argv[2], argv[3] == "1", backend="asyncio")
    elif mode == "wait":
        anyio.run(wait, argv[2], int(argv[3]), backend="asyncio")
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
