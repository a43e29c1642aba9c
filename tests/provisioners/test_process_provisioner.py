"""ProcessProvisioner with real processes (no mock of subprocess): tests/helpers/process_workspace.py
is the workspace command. Every test is bounded (``fail_after``) and checks, when it ends, that
every process a provisioner spawned or adopted is gone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.process_provisioner import STATE_FILE
from workspace_lifecycle.testing import check_provisioner

pytestmark = pytest.mark.anyio

SCRIPT = str(Path(__file__).parents[1] / "helpers" / "process_workspace.py")
OWNER = "alice"


@pytest.fixture(
    params=[
        pytest.param(("memory", "asyncio"), id="memory-asyncio"),
        pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
        pytest.param(("postgres", "asyncio"), id="postgres-asyncio", marks=pytest.mark.postgres),
    ]
)
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """These tests spawn processes: every store on asyncio (trio is one test of its own)."""
    kind, backend = request.param
    return kind, backend


def command(*args: str) -> list[str]:
    return [sys.executable, SCRIPT, *args]


async def dead(pid: int) -> None:
    """Wait until a killed process has ended (a zombie, or reaped): a signal is not instant."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with anyio.fail_after(5):
            await anyio.wait_readable(fd)
    finally:
        os.close(fd)


def running(pid: int) -> bool:
    """Not ended: a zombie has ended (one that is not this process's child waits for init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


Factory = Callable[..., wl.ProcessProvisioner]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "workspaces"


@pytest.fixture
def provisioner(root: Path) -> Iterator[Factory]:
    """Makes provisioners on ``root``; afterwards, every process they spawned or adopted must
    be gone (any left is killed, and the test fails)."""
    made: list[wl.ProcessProvisioner] = []

    def make(store: wl.Store, cmd: list[str], **kwargs: Any) -> wl.ProcessProvisioner:
        kwargs.setdefault("spawn_grace", 0.1)
        kwargs.setdefault("ready_timeout", 10.0)
        kwargs.setdefault("stop_grace", 2.0)
        p = wl.ProcessProvisioner(store, root=root, command=cmd, **kwargs)
        made.append(p)
        return p

    yield make
    left = sorted({pid for p in made for pid in p.pids if running(pid)})
    for pid in left:
        os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert not left, f"processes still running after the test: {left}"


def state_of(root: Path, workspace_id: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((root / workspace_id / STATE_FILE).read_text())
    return loaded


def get(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        loaded: dict[str, Any] = json.loads(response.read())
        return loaded


async def workspace_id(store: wl.Store, chat: str) -> str:
    row = await store.get_chat(chat)
    assert row is not None and row.workspace_id is not None
    return row.workspace_id


async def state_leaves(
    lc: wl.Lifecycle, store: wl.Store, chat: str, state: wl.WorkspaceState
) -> wl.WorkspaceState:
    """Wait until the runtime's state of ``chat`` is not ``state``, woken by the store's log
    (the head is read before the state, so no change is missed; nothing polls)."""
    while True:
        cursor = await store.head()
        now = await lc.state(chat)
        if now is not state:
            return now
        await store.wait_for_change(cursor)


@pytest.fixture
async def lc(store: wl.Store) -> AsyncIterator[wl.Lifecycle]:
    async with wl.Lifecycle(store, build_timeout=20, agent_timeout=20) as lifecycle:
        await lifecycle.register_chat("c1", owner=OWNER)
        yield lifecycle


async def test_ready_only_after_the_port_answers_then_stop_start_delete(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory, root: Path
) -> None:
    with anyio.fail_after(20):
        async with provisioner(store, command("serve", "{port}", "0.8")) as p:
            t0 = anyio.current_time()
            created = await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert created.data["created"] is True and "startup_scripts" not in created.data, created.text
            assert anyio.current_time() - t0 >= 0.8  # the server listens 0.8 s after its start
            assert await lc.state("c1") is wl.WorkspaceState.AGENT_READY
            ws = await workspace_id(store, "c1")
            first = state_of(root, ws)
            answer = get(first["port"])
            assert answer["pid"] == first["pid"] and answer["env"]["PORT"] == str(first["port"])
            assert answer["cwd"] == str(p.workspace_dir(ws))
            assert "serving on" in (root / ws / "workspace.log").read_text()

            stopped = await lc.stop_workspace("c1", owner=OWNER)
            assert stopped.data["stopped"] is True, stopped.text
            assert await lc.state("c1") is wl.WorkspaceState.STOPPED
            assert gone(first["pid"])
            assert (root / ws).is_dir()  # a stop keeps the directory

            started = await lc.start_workspace("c1", owner=OWNER)
            assert started.data["started"] is True and "startup_scripts" not in started.data, started.text
            second = state_of(root, ws)
            assert second["pid"] != first["pid"] and not gone(second["pid"])
            assert get(second["port"])["pid"] == second["pid"]

            deleted = await lc.delete_workspace("c1", owner=OWNER)
            assert deleted.data["deleted"] is True, deleted.text
            assert gone(second["pid"]) and not (root / ws).exists()


async def test_a_command_that_exits_fails_the_build_with_its_status_and_output(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory
) -> None:
    with anyio.fail_after(20):
        async with provisioner(store, command("exit", "1"), spawn_grace=10.0):
            answer = await lc.create_workspace("c1", owner=OWNER, name="dev")
        error = answer.data["error"]
        assert error.startswith("workspace build failed: the workspace process exited with status 1"), error
        assert "fatal: cannot start (exit 1)" in error and answer.data["exit_status"] == 1
        assert await lc.state("c1") is wl.WorkspaceState.FAILED


async def test_an_exit_after_the_build_is_the_agent_start_error(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory
) -> None:
    with anyio.fail_after(20):
        async with provisioner(store, command("exit", "3", "1.0"), spawn_grace=0.1) as p:
            answer = await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert answer.data["startup_scripts"] == "startup_scripts_failed", answer.text
            assert answer.data["lifecycle_state"] == "start_error"
            assert await lc.state("c1") is wl.WorkspaceState.RUNNING
            assert all(gone(pid) for pid in p.pids)


async def test_a_command_that_never_listens_times_out(
    store: wl.Store, provisioner: Factory, root: Path
) -> None:
    """The runtime's agent_timeout passes first: ``startup_scripts_timeout``; then the
    provisioner's ready_timeout: the agent is ``start_timeout``. The stop ends the process."""
    with anyio.fail_after(20):
        async with (
            wl.Lifecycle(store, agent_timeout=0.5) as lc,
            provisioner(store, command("idle"), ready_timeout=1.0) as p,
        ):
            await lc.register_chat("c1", owner=OWNER)
            answer = await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert answer.data["startup_scripts"] == "startup_scripts_timeout", answer.text
            ws = await workspace_id(store, "c1")
            while (agent := (await store.workspace_facts(ws)).agent) is None or agent.lifecycle.pending:
                await store.wait_for_change((await store.workspace_facts(ws)).seq)
            assert agent.lifecycle is wl.AgentLifecycle.START_TIMEOUT
            again = await lc.start_workspace("c1", owner=OWNER)  # Coder's answer for it
            assert again.data["startup_scripts"] == "startup_scripts_failed", again.text
            assert again.data["lifecycle_state"] == "start_timeout"
            pid = state_of(root, ws)["pid"]
            assert (await lc.stop_workspace("c1", owner=OWNER)).data["stopped"] is True
            assert gone(pid) and p.pids == [pid]


async def test_an_agent_late_past_its_timeout_still_becomes_ready(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory
) -> None:
    """start_timeout is reported, and the machine still follows the agent to agent_ready."""
    with anyio.fail_after(20):
        async with provisioner(store, command("serve", "{port}", "1.2"), ready_timeout=0.4):
            answer = await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert answer.data["lifecycle_state"] == "start_timeout", answer.text
            assert (
                await state_leaves(lc, store, "c1", wl.WorkspaceState.RUNNING)
                is wl.WorkspaceState.AGENT_READY
            )
            assert (await lc.delete_workspace("c1", owner=OWNER)).data["deleted"] is True


async def test_kill_9_of_a_ready_workspace_turns_its_agent_off(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory, root: Path
) -> None:
    with anyio.fail_after(20):
        async with provisioner(store, command("serve", "{port}")):
            await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert await lc.state("c1") is wl.WorkspaceState.AGENT_READY
            ws = await workspace_id(store, "c1")
            pid = state_of(root, ws)["pid"]
            os.kill(pid, signal.SIGKILL)
            assert (
                await state_leaves(lc, store, "c1", wl.WorkspaceState.AGENT_READY)
                is wl.WorkspaceState.RUNNING
            )
            facts = await store.workspace_facts(ws)
            assert facts.agent is not None and facts.agent.lifecycle is wl.AgentLifecycle.OFF
            assert gone(pid)
            assert "killed by signal 9 (SIGKILL)" in (root / ws / "workspace.log").read_text()
            # The way back: a stop (nothing left to end) and a start, a new process.
            assert (await lc.stop_workspace("c1", owner=OWNER)).data["stopped"] is True
            started = await lc.start_workspace("c1", owner=OWNER)
            assert "startup_scripts" not in started.data, started.text
            assert state_of(root, ws)["pid"] != pid
            assert (await lc.delete_workspace("c1", owner=OWNER)).data["deleted"] is True


async def test_a_stop_whose_lease_is_lost_still_kills_a_process_deaf_to_sigterm(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory, root: Path
) -> None:
    """The stop build's lease is lost while it waits out the SIGTERM grace (its renewals cut
    off, as a partition would): the work is cancelled, but the process it was ending must not
    outlive it: the SIGKILL after the grace still comes."""
    from workspace_lifecycle._provisioner_kit import _Observed

    observed = _Observed(store)
    prov = provisioner(observed, command("deaf", "{port}"), lease_seconds=0.6, stop_grace=2.0)
    with anyio.fail_after(30):
        async with prov:
            await lc.create_workspace("c1", owner=OWNER, name="dev")
            assert await lc.state("c1") is wl.WorkspaceState.AGENT_READY
            ws = await workspace_id(store, "c1")
            pid = state_of(root, ws)["pid"]
            stop = await lc.stop_workspace("c1", owner=OWNER, wait=False)
            build_id = stop.data["build_id"]
            observed.cut_off.add(build_id)
            while (stored := await store.get_build(build_id)).status is not wl.JobStatus.FAILED:
                head = await store.head()  # the expiry is a write: it moves the log
                if (await store.get_build(build_id)).status is not wl.JobStatus.FAILED:
                    await store.wait_for_change(head)
            assert "lost its lease" in (stored.error or "")
            await dead(pid)  # within the grace and the kill: dead() waits up to 5 s
            assert not running(pid) and prov.leases_lost == 1


async def test_a_restarted_provisioner_adopts_what_runs_and_reports_what_died(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory, root: Path
) -> None:
    with anyio.fail_after(30):
        await lc.register_chat("c2", owner=OWNER)
        async with provisioner(store, command("serve", "{port}")):
            await lc.create_workspace("c1", owner=OWNER, name="one")
            await lc.create_workspace("c2", owner=OWNER, name="two")
        # The provisioner is gone; its processes run on. One of them dies meanwhile.
        ws1, ws2 = await workspace_id(store, "c1"), await workspace_id(store, "c2")
        pid1, pid2 = state_of(root, ws1)["pid"], state_of(root, ws2)["pid"]
        assert not gone(pid1) and not gone(pid2)
        latest = (await store.workspace_facts(ws1)).latest_build
        assert latest is not None and state_of(root, ws1)["lease"] == latest.lease_token  # kept for adoption
        os.kill(pid2, signal.SIGKILL)
        await dead(pid2)
        assert await lc.state("c2") is wl.WorkspaceState.AGENT_READY  # nobody watches: not yet known

        async with provisioner(store, command("serve", "{port}")) as second:
            assert (
                await state_leaves(lc, store, "c2", wl.WorkspaceState.AGENT_READY)
                is wl.WorkspaceState.RUNNING
            )
            assert gone(pid2) and state_of(root, ws2)["ended"] is not None
            assert await lc.state("c1") is wl.WorkspaceState.AGENT_READY
            assert second.pids == [pid1]  # adopted, and watched: its end is noticed
            os.kill(pid1, signal.SIGKILL)
            assert (
                await state_leaves(lc, store, "c1", wl.WorkspaceState.AGENT_READY)
                is wl.WorkspaceState.RUNNING
            )
            assert gone(pid1)


async def test_a_restarted_provisioner_honours_the_builds_made_while_it_was_away(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory, root: Path
) -> None:
    """c1's stop build is pending: the adopted process is ended by it. c2's stop was finished
    by another party: the store says stopped, so the process found running is ended."""
    with anyio.fail_after(30):
        await lc.register_chat("c2", owner=OWNER)
        async with provisioner(store, command("serve", "{port}")):
            await lc.create_workspace("c1", owner=OWNER, name="one")
            await lc.create_workspace("c2", owner=OWNER, name="two")
        ws1, ws2 = await workspace_id(store, "c1"), await workspace_id(store, "c2")
        pid1, pid2 = state_of(root, ws1)["pid"], state_of(root, ws2)["pid"]
        await lc.stop_workspace("c2", owner=OWNER, wait=False)
        await lc.stop_workspace("c1", owner=OWNER, wait=False)
        other = await store.claim_build("another-worker")  # the oldest pending build: c2's stop
        assert other is not None and other.workspace_id == ws2
        await store.finish_build(other.build_id, "succeeded", has_agent=False)
        assert await lc.state("c2") is wl.WorkspaceState.STOPPED and not gone(pid2)
        assert await lc.state("c1") is wl.WorkspaceState.BUILDING

        async with provisioner(store, command("serve", "{port}")) as second:
            await dead(pid2)  # ended at start-up: the store says its workspace is stopped
            assert sorted(second.pids) == sorted([pid1, pid2])  # both adopted first
            assert (
                await state_leaves(lc, store, "c1", wl.WorkspaceState.BUILDING) is wl.WorkspaceState.STOPPED
            )
            assert gone(pid1)  # the adopted process was ended by the stop build
        assert gone(pid1) and gone(pid2)


async def test_a_restarted_provisioner_adopts_a_process_it_did_not_spawn(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory, root: Path
) -> None:
    """A process of another interpreter (as after a real restart): watched by its pidfd; its exit
    status is not this process's to read, and the reason says so."""
    with anyio.fail_after(30):
        async with provisioner(store, command("serve", "{port}")):
            await lc.create_workspace("c1", owner=OWNER, name="dev")
        ws = await workspace_id(store, "c1")
        old = state_of(root, ws)
        os.kill(old["pid"], signal.SIGKILL)
        await dead(old["pid"])
        # A stranger's process in its place: started by a short-lived parent, so not our child.
        launcher = await anyio.run_process(
            [
                sys.executable,
                "-c",
                "import subprocess, sys; p = subprocess.Popen(sys.argv[1:], start_new_session=True, "
                "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print(p.pid)",
                *command("serve", str(old["port"])),
            ]
        )
        pid = int(launcher.stdout)
        try:
            ticks = (await anyio.Path(f"/proc/{pid}/stat").read_text()).rsplit(")", 1)[1].split()[19]
            (root / ws / STATE_FILE).write_text(json.dumps({**old, "pid": pid, "start_ticks": int(ticks)}))
            async with provisioner(store, command("serve", "{port}")) as second:
                assert second.pids == [pid]
                os.kill(pid, signal.SIGKILL)
                assert (
                    await state_leaves(lc, store, "c1", wl.WorkspaceState.AGENT_READY)
                    is wl.WorkspaceState.RUNNING
                )
            assert "exit status is unknown" in (root / ws / "workspace.log").read_text()
        finally:
            if running(pid):  # the test failed before the provisioner ended it
                os.kill(pid, signal.SIGKILL)


async def test_names_that_escape_the_root_are_refused(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory, root: Path, tmp_path: Path
) -> None:
    p = provisioner(store, command("serve", "{port}"))
    outside = tmp_path / "outside"
    for made in (root, outside):
        await anyio.Path(made).mkdir()
    for name in ("../x", "..", ".", "", "a/b", str(outside), "/etc", "x\x00y"):
        with pytest.raises(wl.WorkspaceRefused, match="would leave the root"):
            p.workspace_dir(name)
    assert p.workspace_dir("ok-id") == await anyio.Path(root).resolve() / "ok-id"
    await anyio.Path(root / "real").mkdir()
    await anyio.Path(root / "link").symlink_to(root / "real", target_is_directory=True)
    with pytest.raises(wl.WorkspaceRefused):  # a symlink, even to a directory in the root
        p.workspace_dir("link")

    # A workspace directory that is a symlink out of the root: its build fails, nothing is written.
    with anyio.fail_after(20):
        await lc.create_workspace("c1", owner=OWNER, name="dev", wait=False)
        ws = await workspace_id(store, "c1")
        (root / ws).symlink_to(outside, target_is_directory=True)
        async with p:
            answer = await lc.start_workspace("c1", owner=OWNER)
        assert "would leave the root" in answer.data["error"], answer.text
        assert list(outside.iterdir()) == [] and p.pids == []


async def test_parameters_arrive_as_environment_variables(
    store: wl.Store, lc: wl.Lifecycle, provisioner: Factory, root: Path
) -> None:
    with anyio.fail_after(20):
        async with provisioner(store, command("serve", "{port}")):
            bad = await lc.create_workspace("c1", owner=OWNER, name="dev", parameters={"bad-name": "x"})
            assert "parameter 'bad-name' cannot be an environment variable" in bad.data["error"], bad.text
            good = await lc.start_workspace("c1", owner=OWNER, parameters={"region": "eu", "size": "s m"})
            assert "startup_scripts" not in good.data, good.text
            ws = await workspace_id(store, "c1")
            env = get(state_of(root, ws)["port"])["env"]
            assert env["WL_PARAM_region"] == "eu" and env["WL_PARAM_size"] == "s m"
            assert (await lc.delete_workspace("c1", owner=OWNER)).data["deleted"] is True


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_on_trio(anyio_backend: str, provisioner: Factory, root: Path) -> None:
    """The provisioner is anyio throughout: on trio, with the memory store."""
    with anyio.fail_after(20):
        async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lc:
            await lc.register_chat("c1", owner=OWNER)
            async with provisioner(store, command("serve", "{port}")) as p:
                created = await lc.create_workspace("c1", owner=OWNER, name="dev")
                assert "startup_scripts" not in created.data, created.text
                pid = p.pids[0]
                os.kill(pid, signal.SIGKILL)
                assert (
                    await state_leaves(lc, store, "c1", wl.WorkspaceState.AGENT_READY)
                    is wl.WorkspaceState.RUNNING
                )
                assert (await lc.delete_workspace("c1", owner=OWNER)).data["deleted"] is True


async def test_it_passes_the_provisioner_kit(store: wl.Store, provisioner: Factory) -> None:
    """The provisioner conformance kit (claims once, finishes and reports with the lease
    token, renews while a finish waits, gives up on a build whose lease it lost and ends its
    process, honours stop and delete); the fixture checks every process it spawned is gone."""

    def factory(store: wl.Store, *, worker: str, lease_seconds: float) -> wl.ProcessProvisioner:
        return provisioner(store, command("serve", "{port}"), worker=worker, lease_seconds=lease_seconds)

    # Bounded as a whole (each of its steps is bounded by the kit): once, on a loaded machine,
    # the sqlite run sat for over 15 minutes with the machine idle; a failure with a traceback
    # says where, a hang says nothing.
    with anyio.fail_after(180):
        report = await check_provisioner(factory, store, lease_seconds=0.6)
    assert len(report.builds) == 8, report


def test_command_must_be_an_argv_list(root: Path) -> None:
    with pytest.raises(TypeError, match="argv list"):
        wl.ProcessProvisioner(None, root=root, command="python -m http.server")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        wl.ProcessProvisioner(None, root=root, command=[])  # type: ignore[arg-type]
