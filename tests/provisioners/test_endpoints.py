"""Endpoints (issue 26, item 1): where a workspace's agent is reached, reported by its
provisioner with the agent, fenced by the build's lease, cleared when the workspace stops, and
answered wherever the agent is."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.endpoints import MAX_ENDPOINTS, MAX_URL_LENGTH, check_endpoints
from workspace_lifecycle.tools import dispatch_tool

pytestmark = pytest.mark.anyio

OWNER = "alice"
URL = "http://127.0.0.1:41237"
SCRIPT = str(Path(__file__).parent.parent / "helpers" / "process_workspace.py")


class TestCheck:
    @pytest.mark.parametrize(
        "endpoints",
        [
            {"http": URL},
            {"vscode-web": "https://example.com/path?q=1", "db": "tcp://10.0.0.1:5432"},
            {"ws_1": "wss://[::1]:8443/socket"},
        ],
    )
    def test_accepted(self, endpoints: dict[str, str]) -> None:
        """Short names and URLs with an allowed scheme and a host are kept as given."""
        assert check_endpoints(endpoints) == endpoints

    @pytest.mark.parametrize(
        ("endpoints", "words"),
        [
            ([("http", URL)], "must be an object"),
            ({"": URL}, "endpoint name"),
            ({"1http": URL}, "endpoint name"),
            ({"x" * 33: URL}, "endpoint name"),
            ({"http": 8080}, "must be a URL string"),
            ({"http": "file:///etc/passwd"}, "scheme 'file'"),
            ({"http": "javascript:alert(1)"}, "scheme 'javascript'"),
            ({"http": "http://"}, "names no host"),
            ({"db": "tcp://10.0.0.1"}, "names no port"),
            ({"http": "http://h:99999"}, "is not a URL"),
            ({"http": "http://h/a b"}, "whitespace or control"),
            ({"http": "http://h/\x1b[2J"}, "whitespace or control"),
            ({"http": "http://h/" + "a" * MAX_URL_LENGTH}, f"longer than {MAX_URL_LENGTH}"),
            ({f"e{i}": URL for i in range(MAX_ENDPOINTS + 1)}, f"at most {MAX_ENDPOINTS}"),
        ],
    )
    def test_refused(self, endpoints: object, words: str) -> None:
        """Anything else is a ValueError naming what is wrong."""
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("?", r"\?")):
            check_endpoints(endpoints)


async def _ready(store: wl.Store, chat: str = "c1") -> tuple[str, str]:
    """A chat whose start build succeeded under a lease: (workspace id, lease token)."""
    await store.register_chat(chat, OWNER)
    created = await store.create_workspace(chat, "dev", expected_workspace_id=None)
    build = await store.claim_build("worker")
    assert build is not None and build.lease_token is not None and created.build is not None
    await store.finish_build(build.build_id, "succeeded", lease=build.lease_token)
    return build.workspace_id, build.lease_token


class TestStore:
    async def test_reported_stored_answered_and_cleared(self, store: wl.Store) -> None:
        """Reported with the agent, answered by status, kept by a report that names none,
        cleared by a stop; a stale build's report is refused by its lease and changes nothing."""
        ws, token = await _ready(store)
        with pytest.raises(ValueError, match="scheme 'ftp'"):
            await store.report_agent(ws, "ready", lease=token, endpoints={"http": "ftp://h/"})
        await store.report_agent(ws, "ready", lease=token, endpoints={"http": URL})
        assert (await store.workspace_facts(ws)).agent.endpoints == {"http": URL}  # type: ignore[union-attr]
        async with wl.Lifecycle(store) as lc:
            r = await lc.status("c1", owner=OWNER)
            assert r.data["status"] == "agent_ready" and r.data["endpoints"] == {"http": URL}
            await store.report_agent(ws, "ready", lease=token)  # names none: keeps them
            assert (await lc.status("c1", owner=OWNER)).data["endpoints"] == {"http": URL}
            started = await lc.start_workspace("c1", owner=OWNER)
            assert started.data["no_build"] is True and started.data["endpoints"] == {"http": URL}
            stopping = await lc.stop_workspace("c1", owner=OWNER, wait=False)
            assert "endpoints" not in stopping.data
            assert (await store.workspace_facts(ws)).agent.endpoints == {}  # type: ignore[union-attr]
            with pytest.raises(wl.LeaseLostError):
                await store.report_agent(ws, "ready", lease=token, endpoints={"http": "http://stale:1"})
            stop = await store.claim_build("worker")
            assert stop is not None
            await store.finish_build(stop.build_id, "succeeded", lease=stop.lease_token)
            r = await lc.status("c1", owner=OWNER, wait_ms=2000)
            assert r.data["status"] == "stopped" and "endpoints" not in r.data
        assert (await store.workspace_facts(ws)).agent.endpoints == {}  # type: ignore[union-attr]


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        loaded: dict[str, Any] = json.loads(response.read())
        return loaded


class TestProvisioners:
    @pytest.fixture(
        params=[
            pytest.param(("memory", "asyncio"), id="memory-asyncio"),
            pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
        ]
    )
    def store_backend(self, request: pytest.FixtureRequest) -> tuple[str, str]:
        """The simulated and process provisioners: a memory and a SQLite store are enough."""
        kind, backend = request.param
        return kind, backend

    async def test_simulated_reports_a_well_formed_endpoint(self, store: wl.Store) -> None:
        """The simulated agent is reached nowhere, but says so in a well-formed URL."""
        seen: list[wl.StateChange] = []
        ready = anyio.Event()

        async def watch(lc: wl.Lifecycle, *, task_status: anyio.abc.TaskStatus[None]) -> None:
            changes = lc.watch("c1")
            task_status.started()
            async for change in changes:
                seen.append(change)
                if change.to_state is wl.WorkspaceState.AGENT_READY:
                    ready.set()

        async with wl.SimulatedProvisioner(store), wl.Lifecycle(store, build_timeout=10) as lc:
            await lc.register_chat("c1", owner=OWNER)
            async with anyio.create_task_group() as tg:
                await tg.start(watch, lc)
                r = await lc.create_workspace("c1", owner=OWNER, name="dev")
                with anyio.fail_after(5):
                    await ready.wait()
                tg.cancel_scope.cancel()
            assert check_endpoints(r.data["endpoints"]) == r.data["endpoints"]
            assert r.data["endpoints"] == {"http": "http://workspace.simulated.invalid"}
            assert seen[-1].endpoints == r.data["endpoints"]

    async def test_process_workspace_reached_through_the_tool_answer(
        self, store: wl.Store, tmp_path: Path
    ) -> None:
        """create_workspace's answer names the workspace's HTTP server, which answers there; the
        status says the same; after a stop no answer names it."""
        command = [sys.executable, SCRIPT, "serve", "{port}"]
        async with (
            wl.ProcessProvisioner(store, root=tmp_path / "ws", command=command, spawn_grace=0.1),
            wl.Lifecycle(store, build_timeout=20, agent_timeout=20) as lc,
        ):
            await lc.register_chat("c1", owner=OWNER)
            with anyio.fail_after(30):
                r = await dispatch_tool(lc, "create_workspace", '{"name": "dev"}', chat_id="c1", owner=OWNER)
                assert not r.is_error and "endpoints" in r.data, r.data
                url = r.data["endpoints"]["http"]
                served = await anyio.to_thread.run_sync(_get, url)
                assert url == f"http://127.0.0.1:{served['env']['PORT']}"
                status = await dispatch_tool(lc, "workspace_status", None, chat_id="c1", owner=OWNER)
                assert status.data["endpoints"] == {"http": url}
                stopped = await lc.stop_workspace("c1", owner=OWNER)
                assert stopped.data["stopped"] is True and "endpoints" not in stopped.data
                assert "endpoints" not in (await lc.status("c1", owner=OWNER)).data
                created = await lc.create_workspace("c1", owner=OWNER, name="dev")
                assert "endpoints" not in created.data  # stopped: use start_workspace
