"""The shipped store conformance kit (``workspace_lifecycle.testing.check_store``): our three
stores pass it (memory, SQLite on a file, PostgreSQL on a fresh schema), and it names the check
a broken store fails."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.adapters.memory import MemoryStore
from workspace_lifecycle.testing import StoreCheckError, check_store
from workspace_lifecycle.values import Chat, Policy

pytestmark = pytest.mark.anyio


async def test_the_memory_store_passes() -> None:
    report = await check_store(lambda clock: wl.open_store("memory://", clock=clock))
    assert len(report.checks) >= 25


async def test_the_sqlite_store_passes_on_a_file(tmp_path: Path) -> None:
    await check_store(lambda clock: wl.open_store(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db", clock=clock))


@pytest.mark.postgres
async def test_the_postgres_store_passes_on_a_fresh_schema(pg_url: str) -> None:
    @asynccontextmanager
    async def fresh(clock: wl.VirtualClock) -> AsyncIterator[wl.Store]:
        schema = f"wl_kit_{uuid.uuid4().hex[:12]}"
        try:
            async with wl.open_store(f"{pg_url}?schema={schema}", clock=clock) as store:
                yield store
        finally:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    await check_store(fresh)


class _Squatter(MemoryStore):
    """A store that lets a second owner take a chat over (the rule: a chat keeps its owner)."""

    async def register_chat(
        self, chat_id: str, owner: str, *, policy: Policy | None = None, default_policy: Policy | None = None
    ) -> Chat:
        try:
            return await super().register_chat(chat_id, owner, policy=policy, default_policy=default_policy)
        except wl.OwnershipError:
            return Chat(chat_id, owner, None)


async def test_a_broken_store_is_named_with_the_rule_it_broke() -> None:
    with pytest.raises(StoreCheckError, match="register_is_idempotent") as caught:
        await check_store(lambda clock: _Squatter(clock=clock))
    assert caught.value.check == "register_is_idempotent"
    assert "another owner is refused" in str(caught.value)
    assert "expected OwnershipError, the call succeeded" in str(caught.value)
    assert isinstance(caught.value, AssertionError)


async def test_only_runs_the_named_checks_and_refuses_unknown_names() -> None:
    report = await check_store(lambda clock: _Squatter(clock=clock), only={"a_claim_is_a_lease"})
    assert report.checks == ("a_claim_is_a_lease",)
    with pytest.raises(ValueError, match="unknown store checks: no_such_check"):
        await check_store(lambda clock: _Squatter(clock=clock), only={"no_such_check"})
