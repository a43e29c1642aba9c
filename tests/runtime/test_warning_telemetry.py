"""Each expiry warning is one structured record on the ``workspace_lifecycle.deadlines`` logger,
from the replica that wrote it: two replicas, one record."""

from __future__ import annotations

import logging

import anyio
import pytest
from test_expiry_warnings import CHAT, WARN, _count, until, world

pytestmark = pytest.mark.anyio


async def test_one_record_per_warning_across_replicas(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="workspace_lifecycle.deadlines")
    async with world(store_url, replicas=2) as (store, lcs, clock):
        deadline = lcs[0].next_deadline()
        assert deadline is not None
        clock.advance(deadline - WARN - clock())
        await until(store, lambda: _count(store, 1))
        await anyio.sleep(0.1)  # the other replica had its chance to warn too
    records = [r for r in caplog.records if r.name == "workspace_lifecycle.deadlines"]
    assert len(records) == 1, [r.getMessage() for r in records]
    record = records[0]
    assert (record.chat, record.reason, record.deadline) == (CHAT, "idle", deadline)  # type: ignore[attr-defined]
    assert record.left == pytest.approx(WARN)  # type: ignore[attr-defined]
    assert "idle stop in 60 s" in record.getMessage()
