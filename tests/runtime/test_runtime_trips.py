"""Store calls per request cycle: each call removed from the at-rest cycle stays removed.

An at-rest cycle: ``start_workspace`` (wait) on a stopped workspace, a provisioner claims the
build, finishes it and reports the agent, the caller is answered. The caller and the worker
each talk to the store through their own counting wrapper (every driver call, by method), as
two processes would; a read or a claim that comes back fails these tests.
"""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

import workspace_lifecycle as wl
from bench.common import CountingStore

pytestmark = pytest.mark.anyio

OWNER = "alice"


async def _cycle(request: str) -> tuple[Counter[str], Counter[str]]:
    """The caller's and the worker's driver calls for one at-rest cycle of ``request``."""
    async with wl.open_store("memory://") as raw:
        worker, caller = CountingStore(raw), CountingStore(raw)
        async with wl.SimulatedProvisioner(worker), wl.Lifecycle(caller) as lc:
            await lc.register_chat("c1", owner=OWNER)
            for call in (lc.create_workspace, lc.stop_workspace):
                assert "error" not in (await call("c1", owner=OWNER)).data
            if request == "stop":
                assert "error" not in (await lc.start_workspace("c1", owner=OWNER)).data
            await anyio.sleep(0.05)  # at rest: every wake-up of the last request has passed
            worker.calls.clear()
            caller.calls.clear()
            run = lc.start_workspace if request == "start" else lc.stop_workspace
            r = await run("c1", owner=OWNER)
            assert not r.is_error and "error" not in r.data and "build_id" in r.data, r.text
            await anyio.sleep(0.05)  # the worker's last wake-up (its own agent report)
            del caller.calls["wait_for_change"], worker.calls["wait_for_change"]
            return caller.calls, worker.calls


async def test_an_at_rest_start_makes_one_event_read_per_wake_up() -> None:
    """The caller: its chat, the facts and the head before its one write, then one log read
    per wake-up (its own build_queued, the claim, the finish, the agent report), not two."""
    caller, _ = await _cycle("start")
    assert caller["request_build"] == 1
    assert caller["get_chat"] == 1 and caller["workspace_facts"] == 1 and caller["head"] <= 1
    assert caller["read_events"] <= 4, caller  # 0.2 read 7 to 8 times (an empty read per batch)
    assert sum(caller.values()) <= 7, caller


async def test_the_worker_claims_once_and_reads_no_head() -> None:
    """The worker: one claim for the one build_queued, no head read around it, no empty claim
    after it or after its own writes, and its reaper reads the next lease once (the claim)."""
    _, worker = await _cycle("start")
    assert worker["claim_build"] == 1, worker
    assert worker["head"] == 0, worker
    assert worker["finish_build"] == 1 and worker["report_agent"] == 1
    assert worker["next_lease_expiry"] <= 1, worker
    assert worker["read_events"] <= 4, worker  # one per wake-up: the request, its own three writes
    assert sum(worker.values()) <= 8, worker  # 0.2 (and main before this change): 18


async def test_an_at_rest_stop_cycle_is_as_lean() -> None:
    """A stop (no agent): three wake-ups for the caller, three for the worker."""
    caller, worker = await _cycle("stop")
    assert caller["read_events"] <= 3 and sum(caller.values()) <= 6, caller
    assert worker["claim_build"] == 1 and worker["head"] == 0, worker
    assert sum(worker.values()) <= 6, worker
