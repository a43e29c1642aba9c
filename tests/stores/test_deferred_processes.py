"""A deferred request survives the process that accepted it, on SQLite and PostgreSQL (issue 29
item 9). A replica answers a ``wait=False`` start made during a stop build (``status:
building``) and is killed with SIGKILL at once; when the stop build ends, in this process, the
start build is there: the store fired it in the write that finished the stop."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from multiproc import receive, replicas

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, Transition

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'deferred.db'}"
    else:
        yield str(request.getfixturevalue("pg_schema_url"))


async def stop_in_flight(url: str) -> wl.Build:
    """Chat c1's workspace, running, with its stop build (2) claimed by this process."""
    async with wl.open_store(url) as store:
        await store.register_chat("c1", "alice")
        await store.create_workspace("c1", "dev", expected_workspace_id=None)
        start = await store.claim_build("setup")
        assert start is not None
        await store.finish_build(start.build_id, JobStatus.SUCCEEDED, has_agent=False)
        await store.request_build(start.workspace_id, Transition.STOP, expected_build_number=1)
        stop = await store.claim_build("setup")
        assert stop is not None and stop.transition is Transition.STOP
        return stop


async def finish_and_read(url: str, stop: wl.Build) -> tuple[wl.Build | None, wl.Build | None]:
    """The latest build before and after this process finishes the stop build."""
    async with wl.open_store(url) as store:
        before = (await store.workspace_facts(stop.workspace_id)).latest_build
        await store.finish_build(stop.build_id, JobStatus.SUCCEEDED, lease=stop.lease_token)
        return before, (await store.workspace_facts(stop.workspace_id)).latest_build


def test_a_deferred_start_survives_a_sigkilled_replica(url: str) -> None:
    """Accepted, the replica killed, the stop ended by another process: the start fires."""
    stop = anyio.run(stop_in_flight, url)
    with replicas(["defer", url, "c1", "alice"]) as (proc,):
        answer = json.loads(receive(proc))
        assert not answer["is_error"] and answer["data"]["status"] == "building", answer
        assert answer["data"]["request"] == "start" and answer["data"]["build_id"] == stop.build_id
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    before, after = anyio.run(finish_and_read, url, stop)
    assert before is not None and before.build_id == stop.build_id  # nothing fired before the end
    assert after is not None and after.number == 3, after
    assert after.transition is Transition.START and after.status is JobStatus.PENDING
