"""The library leaves the process's garbage collector alone (issue 15, part 5).

Raising the thresholds or freezing the heap is the embedding runtime's call (the scale
benchmark measures what it buys); a library that changed them would change them for every other
library in the process.
"""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

import workspace_lifecycle as wl

pytestmark = pytest.mark.anyio


def _settings() -> tuple[object, ...]:
    return (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count())


async def test_a_whole_flow_leaves_the_gc_settings_as_it_found_them() -> None:
    before = _settings()
    async with (
        wl.open_store("memory://") as store,
        wl.SimulatedProvisioner(store),
        wl.Lifecycle(store) as lc,
    ):
        await lc.register_chat("c", owner="alice")
        for call in (lc.create_workspace, lc.stop_workspace, lc.start_workspace):
            r = await call("c", owner="alice")
            assert not r.is_error and "error" not in r.data, r.text
    assert _settings() == before


def test_importing_the_library_leaves_the_gc_settings_alone() -> None:
    code = (
        "import gc; before = (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count());"
        " import workspace_lifecycle, workspace_lifecycle.cli, workspace_lifecycle.adapters.sqlite;"
        " print(before == (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
