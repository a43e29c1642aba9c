"""The random histories (``testing.LifecycleMachine``, with its rule that sets an owner's limits
and its invariant "no owner ever above its limits") on PostgreSQL too: memory and SQLite run
them in ``tests/core/test_properties.py``."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from hypothesis import settings

import workspace_lifecycle as wl
from workspace_lifecycle.testing import make_lifecycle_machine

pytestmark = pytest.mark.postgres


def test_postgres_histories_keep_every_owner_within_its_limits(pg_url: str) -> None:
    """A fresh schema per example; every schema made is dropped afterwards."""
    schemas: list[str] = []

    def fresh() -> wl.Store:
        schemas.append(f"wl_hist_{uuid.uuid4().hex[:12]}")
        return wl.open_store(f"{pg_url}?schema={schemas[-1]}")

    machine = make_lifecycle_machine(fresh, name="PostgresLimitsMachine")
    machine.TestCase.settings = settings(max_examples=6, stateful_step_count=15, deadline=None)
    try:
        machine.TestCase().runTest()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
