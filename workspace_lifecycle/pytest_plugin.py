"""pytest fixtures for testing *your* chat runtime: a store, one virtual clock, a simulated
provisioner and a :class:`~workspace_lifecycle.runtime.Lifecycle`, fresh for every test.

Installed with the package (a ``pytest11`` entry point named as this module), so a project
that depends on ``workspace-lifecycle`` gets them without a line of ``conftest.py``;
``-p no:workspace_lifecycle.pytest_plugin`` turns them off. (The entry point's name is the
module's, so a ``conftest.py`` that also lists it in ``pytest_plugins`` registers it once.) The async fixtures run under anyio's pytest
plugin (shipped with anyio): mark the test ``@pytest.mark.anyio``. It needs nothing else
(not Hypothesis).

* ``wl_clock``: a :class:`~workspace_lifecycle.clock.VirtualClock`, the one every other
  fixture runs on; ``wl_clock.advance(3600)`` steps an hour in a millisecond.
* ``wl_store``: a fresh, empty store on ``wl_clock``, closed after the test. The memory store
  by default; ``@pytest.mark.wl_store("sqlite")`` (a file in the test's ``tmp_path``) or
  ``@pytest.mark.wl_store("postgresql")`` (a schema of its own on the server named by
  ``--wl-postgres-url`` or ``$WORKSPACE_LIFECYCLE_PG_URL``, dropped afterwards) choose another,
  for one test, a class or a module; ``--wl-store=sqlite`` for the whole run. A marker naming
  several kinds runs the test once on each.
* ``wl_provisioner``: a :class:`~workspace_lifecycle.provisioner.SimulatedProvisioner` on
  ``wl_store`` and ``wl_clock`` (builds and agents instant unless
  ``@pytest.mark.wl_provisioner(build_seconds=60, ...)`` gives its keyword arguments).
* ``wl_lifecycle``: a :class:`~workspace_lifecycle.runtime.Lifecycle` on ``wl_store`` and
  ``wl_clock`` (``@pytest.mark.wl_lifecycle(policy=..., ...)`` gives its keyword arguments).
  It does not start a provisioner: ask for ``wl_provisioner`` too to have builds completed,
  or play the provisioner yourself with the store's calls.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from .adapters import open_store
from .adapters.base import Store
from .clock import VirtualClock
from .provisioner import SimulatedProvisioner
from .runtime import Lifecycle

__all__ = ["KINDS", "PG_URL_ENV"]

#: The store kinds ``wl_store`` opens.
KINDS = ("memory", "sqlite", "postgresql")
#: The environment variable naming the PostgreSQL server (a database URL) for ``postgresql``.
PG_URL_ENV = "WORKSPACE_LIFECYCLE_PG_URL"

_MARKERS = (
    "wl_store(*kinds): the store kind(s) wl_store opens: memory, sqlite or postgresql "
    "(several: the test runs on each)",
    "wl_provisioner(**options): keyword arguments of the SimulatedProvisioner wl_provisioner starts",
    "wl_lifecycle(**options): keyword arguments of the Lifecycle wl_lifecycle starts",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("workspace_lifecycle", "workspace-lifecycle fixtures")
    group.addoption(
        "--wl-store",
        choices=KINDS,
        default=None,
        help="the store kind wl_store opens unless a wl_store marker says otherwise (default: memory)",
    )
    group.addoption(
        "--wl-postgres-url",
        default=None,
        help=f"the PostgreSQL database wl_store uses for 'postgresql' (default: ${PG_URL_ENV})",
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in _MARKERS:
        config.addinivalue_line("markers", line)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A ``wl_store`` marker naming several kinds runs the test once on each."""
    marker = metafunc.definition.get_closest_marker("wl_store")
    if marker is not None and len(marker.args) > 1 and "wl_store_kind" in metafunc.fixturenames:
        metafunc.parametrize("wl_store_kind", marker.args, ids=[str(a) for a in marker.args], indirect=True)


@pytest.fixture
def wl_store_kind(request: pytest.FixtureRequest) -> str:
    """The kind of store ``wl_store`` opens: the test's ``wl_store`` marker, else ``--wl-store``,
    else ``memory``. A kind it does not know fails the test, naming the kinds it knows."""
    marker = request.node.get_closest_marker("wl_store")
    if hasattr(request, "param"):
        kind = request.param
    elif marker is not None:
        kind = marker.args[0] if marker.args else None
    else:
        kind = request.config.getoption("--wl-store") or "memory"
    if kind not in KINDS:
        pytest.fail(f"wl_store takes one of {', '.join(KINDS)}, not {kind!r}", pytrace=False)
    return str(kind)


@pytest.fixture
def wl_clock() -> VirtualClock:
    """The virtual clock of this test's store, provisioner and runtime."""
    return VirtualClock()


@pytest.fixture
def wl_postgres_url(request: pytest.FixtureRequest) -> str:
    """The PostgreSQL database ``wl_store`` makes its schemas in (``--wl-postgres-url``, else
    ``$WORKSPACE_LIFECYCLE_PG_URL``); a test that needs one fails when neither is set."""
    url = request.config.getoption("--wl-postgres-url") or os.environ.get(PG_URL_ENV)
    if not url:
        pytest.fail(
            f"wl_store('postgresql') needs a database: set ${PG_URL_ENV} or pass --wl-postgres-url",
            pytrace=False,
        )
    return str(url)


@pytest.fixture
async def wl_store(
    wl_store_kind: str,
    wl_clock: VirtualClock,
    tmp_path: Path,
    anyio_backend: str | tuple[str, dict[str, Any]],
    request: pytest.FixtureRequest,
) -> AsyncIterator[Store]:
    """A fresh, empty store on ``wl_clock``, closed (and a PostgreSQL schema dropped) after.

    SQLite and PostgreSQL run on asyncio only: under another anyio backend the test is skipped
    (saying so), so a suite parametrised over asyncio and trio runs the memory store on both."""
    backend = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if wl_store_kind != "memory" and backend != "asyncio":
        pytest.skip(f"the {wl_store_kind} store runs on asyncio only, not {backend}")
    if wl_store_kind == "memory":
        async with open_store("memory://", clock=wl_clock) as store:
            yield store
    elif wl_store_kind == "sqlite":
        async with open_store(f"sqlite:///{tmp_path / 'workspaces.db'}", clock=wl_clock) as store:
            yield store
    else:
        url = str(request.getfixturevalue("wl_postgres_url"))
        schema = f"wl_test_{uuid.uuid4().hex[:12]}"
        try:
            async with open_store(url, schema=schema, clock=wl_clock) as store:
                yield store
        finally:
            await anyio.to_thread.run_sync(_drop_schema, url, schema)


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    from .adapters.postgres.url import parse_url

    conninfo, _ = parse_url(url, {})
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _options(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    marker = request.node.get_closest_marker(name)
    if marker is None:
        return {}
    if marker.args:
        pytest.fail(f"{name} takes keyword arguments only, not {marker.args!r}", pytrace=False)
    return dict(marker.kwargs)


@pytest.fixture
async def wl_provisioner(
    wl_store: Store, request: pytest.FixtureRequest
) -> AsyncIterator[SimulatedProvisioner]:
    """A running :class:`SimulatedProvisioner` on ``wl_store`` (and so on its clock, ``wl_clock``)."""
    async with SimulatedProvisioner(wl_store, **_options(request, "wl_provisioner")) as p:
        yield p


@pytest.fixture
async def wl_lifecycle(wl_store: Store, request: pytest.FixtureRequest) -> AsyncIterator[Lifecycle]:
    """A running :class:`Lifecycle` on ``wl_store`` (and so on its clock, ``wl_clock``)."""
    async with Lifecycle(wl_store, **_options(request, "wl_lifecycle")) as lc:
        yield lc
