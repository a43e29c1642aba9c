"""Clock skew made visible (issue 29 item 11): each store measures its clock against the
server's, and a runtime whose clock is off by more than a tenth of the lease says so in a
warning and in telemetry. PostgreSQL has a clock of its own; SQLite and memory have one
machine's clock, the replicas' own, and nothing to measure."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl

pytestmark = pytest.mark.anyio


class SkewedClock:
    """The wall clock, ``by`` seconds ahead (a host whose clock drifted)."""

    def __init__(self, by: float) -> None:
        self.by = by

    def __call__(self) -> float:
        return time.time() + self.by

    async def sleep_until(self, when: float) -> None:
        delay = when - self()
        if delay > 0:
            await anyio.sleep(delay)


@pytest.mark.postgres
@pytest.mark.parametrize("ahead", [0.0, 5.0, -5.0])
async def test_postgres_measures_a_replica_clock_against_the_servers(
    pg_schema_url: str, ahead: float
) -> None:
    """The server's ``clock_timestamp()`` against the store's clock, around one round trip: a
    clock 5 s ahead reads as an offset of -5 s (the same host: the true skew is the clock's)."""
    async with wl.open_store(pg_schema_url, clock=SkewedClock(ahead)) as store:
        measured = await store.measure_clock_skew()
    assert measured is not None
    assert abs(measured.offset + ahead) <= measured.uncertainty + 0.05, measured
    assert measured.uncertainty < 0.5


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_one_machine_clock_has_nothing_to_measure(kind: str, tmp_path: Path) -> None:
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'store.db'}"
    async with wl.open_store(url, clock=SkewedClock(5.0)) as store, wl.Lifecycle(store) as lc:
        assert await store.measure_clock_skew() is None
        await anyio.sleep(0.05)
        assert lc.clock_skew is None


@pytest.mark.postgres
@pytest.mark.parametrize("ahead", [0.0, 5.0])
async def test_a_skewed_runtime_warns_and_reports_it(
    pg_schema_url: str, ahead: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A runtime 5 s ahead of the server (above a tenth of the default 30 s lease) logs one
    warning on ``workspace_lifecycle.clock`` with the skew as a record attribute, and exposes
    the measurement as ``Lifecycle.clock_skew``; one in sync measures and stays silent."""
    caplog.set_level(logging.WARNING, logger="workspace_lifecycle.clock")
    async with wl.open_store(pg_schema_url, clock=SkewedClock(ahead)) as store, wl.Lifecycle(store) as lc:
        with anyio.fail_after(5):
            while lc.clock_skew is None:  # noqa: ASYNC110 - measured by the runtime's own task
                await anyio.sleep(0.02)
        assert abs(lc.clock_skew.offset + ahead) <= lc.clock_skew.uncertainty + 0.05
    records = [r for r in caplog.records if r.name == "workspace_lifecycle.clock"]
    if ahead:
        assert len(records) == 1 and records[0].levelno == logging.WARNING
        assert records[0].skew == pytest.approx(-ahead, abs=0.1)
        assert records[0].bound == pytest.approx(0.1 * wl.DEFAULT_LEASE_SECONDS)
        assert "ahead of the store's" in records[0].getMessage()
    else:
        assert records == []
