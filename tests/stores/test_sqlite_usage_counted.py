"""SQLite counts an owner's workspaces only where a limit may refuse the write: with no limit of
the caller's and none stored for the owner, a create or a start counts nothing (a count per write
over an owner's every workspace made 10,000 creates quadratic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sqlite_batch_savepoints import traced

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, Transition
from workspace_lifecycle.adapters.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # SQLite is asyncio-only


def counts(statements: list[str]) -> int:
    return sum("select count(" in s.lower() for s in statements)


async def test_no_limits_no_count_and_stored_limits_counted(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "x.db", inline=False) as store:
        statements = traced(store)
        await store.register_chat("c1", "alice")
        out = await store.create_workspace("c1", "dev", expected_workspace_id=None)
        build = await store.claim_build("w")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED)
        ws = out.facts.workspace_id
        await store.request_build(ws, Transition.STOP, expected_build_number=1)
        build = await store.claim_build("w")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED)
        await store.request_build(ws, Transition.START, expected_build_number=2)
        assert counts(statements) == 0, [s for s in statements if "count" in s.lower()]
        # The caller's limits, or limits stored for the owner: counted, in the write's transaction.
        await store.register_chat("c2", "alice")
        await store.create_workspace("c2", "dev", expected_workspace_id=None, limits=wl.Limits(workspaces=5))
        assert counts(statements) == 1
        await store.set_limits("alice", wl.Limits(running=5))
        await store.register_chat("c3", "alice")
        await store.create_workspace("c3", "dev", expected_workspace_id=None)
        assert counts(statements) >= 2
