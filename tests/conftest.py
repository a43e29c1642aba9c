"""Shared fixtures: the anyio backends, and one ``store`` fixture over every adapter.

Each store runs on the backends it supports: the memory store on asyncio and trio, SQLite and
PostgreSQL on asyncio. PostgreSQL tests read ``WORKSPACE_LIFECYCLE_PG_URL`` (default: the local
server); when it is unreachable they skip, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import workspace_lifecycle as wl

settings.register_profile(
    "default", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "large", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

PG_URL = os.environ.get("WORKSPACE_LIFECYCLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: (store kind, anyio backend) pairs every store test runs on.
STORE_BACKENDS = [
    pytest.param(("memory", "asyncio"), id="memory-asyncio"),
    pytest.param(("memory", "trio"), id="memory-trio"),
    pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
    pytest.param(("postgres", "asyncio"), id="postgres-asyncio", marks=pytest.mark.postgres),
]
#: PostgreSQL notifying by workspace shard (``?shards=4``): the suites that must hold in that
#: mode too add it to their ``store_backend`` (not every store test: it would double their time).
SHARDED_POSTGRES = pytest.param(
    ("postgres-shards", "asyncio"), id="postgres-shards-asyncio", marks=pytest.mark.postgres
)


def pg_available() -> bool:
    """True if the PostgreSQL server answers; under CI a missing server fails the run."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3):
            return True
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL at {PG_URL} is unreachable: {exc}")
        return False


@pytest.fixture(scope="session")
def pg_url() -> str:
    if not pg_available():
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable (set WORKSPACE_LIFECYCLE_PG_URL)")
    return PG_URL


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """A URL of the test database with a fresh schema of its own, dropped afterwards."""
    import psycopg

    schema = f"wl_test_{uuid.uuid4().hex[:12]}"
    yield f"{pg_url}?schema={schema}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    kind, backend = request.param
    return kind, backend


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Tests that take ``store_backend`` run on that store's backend; others on asyncio."""
    if "store_backend" in request.fixturenames:
        return str(request.getfixturevalue("store_backend")[1])
    return "asyncio"


@pytest.fixture
def store_url(store_backend: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest) -> str:
    kind = store_backend[0]
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url = str(request.getfixturevalue("pg_schema_url"))
    return f"{url}&shards=4" if kind == "postgres-shards" else url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[wl.Store]:
    async with wl.open_store(store_url) as s:
        yield s
