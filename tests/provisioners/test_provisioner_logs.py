"""The workspace's log is bounded (issue 29, item 5): a process printing as fast as it can
(hundreds of MB/s into a file before) leaves at most ``2 * log_max_bytes`` plus one read on
disk, the latest output kept; the provisioner's memory does not grow with it."""

from __future__ import annotations

import resource
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl

pytestmark = pytest.mark.anyio

HOSTILE = str(Path(__file__).parent.parent / "helpers" / "hostile_workspace.py")
OWNER = "alice"
LIMIT = 256 * 1024
#: One read of the log writer: the most a log can pass its limit by before it rotates.
CHUNK = 64 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store() -> AsyncIterator[wl.Store]:
    async with wl.open_store("memory://") as opened:
        yield opened


async def test_a_fast_printer_keeps_its_log_bounded(store: wl.Store, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with anyio.fail_after(30):
        async with (
            wl.Lifecycle(store) as lc,
            wl.ProcessProvisioner(
                store,
                root=root,
                command=[sys.executable, HOSTILE, "printer", "{port}"],
                spawn_grace=0.1,
                log_max_bytes=LIMIT,
            ),
        ):
            await lc.register_chat("c1", owner=OWNER)
            created = await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert created.data["created"] is True, created.text
            ws = root / (await store.get_chat("c1")).workspace_id  # type: ignore[operator, union-attr]
            log, older = ws / "workspace.log", ws / "workspace.log.1"
            largest = 0
            for _ in range(30):  # 1.5 s of printing, the sizes checked as it goes
                await anyio.sleep(0.05)
                sizes = [p.stat().st_size for p in (log, older) if p.exists()]
                largest = max(largest, *sizes)
            assert older.exists(), "the printer wrote more than the limit: the log has rotated"
            assert largest <= LIMIT + CHUNK + 4096, largest
            assert log.stat().st_size + older.stat().st_size <= 2 * (LIMIT + CHUNK + 4096)
            assert older.read_bytes().endswith(b"x\n")  # whole output lines, the latest kept
            assert (await lc.delete_workspace("c1", owner=OWNER)).data["deleted"] is True
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 64 * 1024, f"the provisioner's peak memory grew by {grown_kib} KiB"


def test_log_max_bytes_is_checked(tmp_path: Path) -> None:
    for bad in (0, 100, -1, 2.5, float("nan"), True):
        with pytest.raises(ValueError, match="log_max_bytes"):
            wl.ProcessProvisioner(None, root=tmp_path, command=["x"], log_max_bytes=bad)  # type: ignore[arg-type]
