"""Deadlines across real processes on SQLite and PostgreSQL, with real (short) deadlines.

Six workspaces are armed to stop for idleness a second after their start builds end. A first
replica fires one deadline and is killed with SIGKILL the moment that fire commits; then four
replicas, all started after the deadlines passed, race for the rest. Every passed deadline must
fire exactly one stop build: the dead replica's deadline is not fired again, and the four fire
each of the others once.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from multiproc import receive, replicas, send

import workspace_lifecycle as wl
from workspace_lifecycle import EventKind, JobStatus, Reason, Transition

IDLE = 1.0
WORKSPACES = 6


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-shards", marks=pytest.mark.postgres),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'deadlines.db'}"
    else:
        # By shard, the replicas hear of deadlines set by the others at their listener's poll.
        shards = "&shards=4" if request.param == "postgres-shards" else ""
        yield str(request.getfixturevalue("pg_schema_url")) + shards


async def armed_workspaces(url: str) -> tuple[list[str], float]:
    """Six running workspaces with idle deadlines; their ids and the latest deadline."""
    ids = []
    async with wl.open_store(url) as store:
        for i in range(WORKSPACES):
            chat = f"c{i}"
            await store.register_chat(chat, "alice", policy=wl.Policy(idle_stop_after=IDLE))
            ids.append(
                (await store.create_workspace(chat, "dev", expected_workspace_id=None)).facts.workspace_id
            )
        for _ in ids:
            build = await store.claim_build("setup")
            assert build is not None
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
        armed = await store.armed_deadlines()
    assert set(armed.deadlines) == set(ids)
    return ids, max(d.at for d in armed.deadlines.values())


async def until_disarmed(url: str, seconds: float = 20) -> list[wl.StoreEvent]:
    async with wl.open_store(url) as store:
        with anyio.fail_after(seconds):
            while True:
                head = await store.head()
                if not (await store.armed_deadlines()).deadlines:
                    return list(await store.read_events(0, 100_000))
                with anyio.move_on_after(0.5):
                    await store.wait_for_change(head)


def test_each_passed_deadline_fires_exactly_one_stop_across_processes(url: str) -> None:
    ids, last = anyio.run(armed_workspaces, url)
    # The first replica fires one deadline and dies with it, committed, before it hears back.
    with replicas(["deadlines", url, "1"]) as (killer,):
        assert receive(killer) == "ready"
        assert killer.wait(timeout=20) == -signal.SIGKILL
    time.sleep(max(0.0, last - time.time()) + 0.05)  # every deadline passed before the next start
    with replicas(*[["deadlines", url, "0"] for _ in range(4)]) as procs:
        for proc in procs:
            assert receive(proc) == "ready"
        events = anyio.run(until_disarmed, url)
        for proc in procs:
            send(proc, "exit")
        fired = [line.split()[1] for proc in procs for line in _rest(proc)]
        for proc in procs:
            assert proc.wait(timeout=20) == 0
    stops = [e for e in events if e.kind is EventKind.BUILD_QUEUED and e.transition is Transition.STOP]
    assert Counter(e.workspace_id for e in stops) == Counter(ids)  # one stop build per deadline
    assert {e.reason for e in stops} == {Reason.IDLE}
    # The four survivors fired the five deadlines the dead replica left (none twice).
    assert sorted(fired) == sorted(set(fired)) and len(fired) == WORKSPACES - 1


def _rest(proc: object) -> list[str]:
    out = getattr(proc, "stdout", None)
    assert out is not None
    return [line.strip() for line in out.read().splitlines() if line.startswith("fired ")]
