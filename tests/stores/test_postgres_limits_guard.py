"""PostgreSQL: a start decided without counting (the runtime sets no limits) holds only while
the owner has no stored limits: limits another replica stored since are still enforced, and
with none stored the start stays one guarded statement."""

from __future__ import annotations

import functools

import pytest
from test_postgres_round_trips import opened, stopped_workspace, trips

import workspace_lifecycle as wl
from workspace_lifecycle import Transition

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]


async def test_limits_stored_by_another_replica_refuse_a_start_decided_on_known_rows(
    pg_schema_url: str,
) -> None:
    async with opened(pg_schema_url) as a, opened(pg_schema_url) as b:
        first, n1 = await stopped_workspace(b, "c1")
        second, n2 = await stopped_workspace(b, "c2")
        await a.workspace_facts(second)  # a knows the rows: its start would be one statement
        started = await b.request_build(first, Transition.START, expected_build_number=n1)
        assert started.fired
        await b.set_limits("alice", wl.Limits(running=1))  # stored by the other replica
        with pytest.raises(wl.QuotaExceededError) as refused:
            await a.request_build(second, Transition.START, expected_build_number=n2)
        assert (refused.value.limit, refused.value.used, refused.value.allowed) == ("running", 1, 1)
        facts = await b.workspace_facts(second)
        assert facts.latest_build is not None and facts.latest_build.number == n2  # nothing written


async def test_without_stored_limits_a_start_is_one_statement(pg_schema_url: str) -> None:
    async with opened(pg_schema_url) as a:
        one, n1 = await stopped_workspace(a, "c1")
        two, n2 = await stopped_workspace(a, "c2")
        await a.set_limits("bob", wl.Limits(running=5))  # another owner's limits change nothing here
        for ws, number in ((one, n1), (two, n2)):
            await a.workspace_facts(ws)
            out, n = await trips(
                a, functools.partial(a.request_build, ws, Transition.START, expected_build_number=number)
            )
            assert out.fired and n == 1
