"""Honest timeouts (issue 26, item 4): a wait that runs out answers what is true, the build's
status and that it timed out, never that the build failed."""

from __future__ import annotations

import json

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import cli
from workspace_lifecycle.cli import requests as cli_requests

pytestmark = pytest.mark.anyio

OWNER = "alice"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class TestAnswers:
    async def test_no_provisioner_answers_timed_out_and_pending(self) -> None:
        """No provisioner and a 1 s build_timeout: timed_out, pending, no error; the build is
        still pending afterwards (it was never failed)."""
        async with wl.open_store("memory://") as store, wl.Lifecycle(store, build_timeout=1.0) as lc:
            await lc.register_chat("c1", owner=OWNER)
            with anyio.fail_after(10):
                r = await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert not r.is_error and "error" not in r.data
            assert r.data["timed_out"] is True and r.data["build_status"] == "pending"
            assert "no provisioner has claimed it" in r.data["message"]
            build = await store.get_build(r.data["build_id"])
            assert build.status is wl.JobStatus.PENDING

    async def test_claimed_build_answers_running(self) -> None:
        """A provisioner claimed the build and never finished it: the provisioner is still working."""
        async with wl.open_store("memory://") as store, wl.Lifecycle(store, build_timeout=0.3) as lc:
            await lc.register_chat("c1", owner=OWNER)
            first = await lc.create_workspace("c1", owner=OWNER, name="dev", wait=False)
            claimed = await store.claim_build("slow-worker")
            assert claimed is not None and claimed.build_id == first.data["build_id"]
            with anyio.fail_after(10):
                r = await lc.start_workspace("c1", owner=OWNER)
            assert r.data["timed_out"] is True and r.data["build_status"] == "running", r.data
            assert "the provisioner is still working on it" in r.data["message"]
            assert "error" not in r.data


class TestCli:
    def test_exit_status_and_sentence(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The CLI says it timed out (not failed) and exits with its own status."""
        monkeypatch.setattr(cli, "open_store", lambda url: wl.MemoryStore())
        argv = ["create", "c1", "--owner", OWNER, "--db", "memory://", "--timeout", "0.3"]
        assert cli.main([*argv, "--pending-hint-after", "60"]) == cli_requests.TIMED_OUT == 3
        out = capsys.readouterr().out
        assert out.startswith("c1: timed out after") or out.startswith("c1: timed out waiting"), out
        assert "failed" not in out and "build_status=pending" in out
        assert cli.main([*argv, "--json", "--pending-hint-after", "60"]) == 3
        answer = json.loads(capsys.readouterr().out)
        assert answer["timed_out"] is True and answer["build_status"] == "pending"
