"""One workspace cannot take the ProcessProvisioner down (issue 29, item 1): any error of one
build fails that build, with the error in its answer, and the provisioner (and its host's
``async with``) goes on serving the others. Real directories and real processes throughout;
and an unusable root is one clear error at open (item 2)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle.adapters import store as store_module

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
HELPERS = HERE.parent / "helpers"
ROOT = HERE.parent.parent
HOSTILE = str(HELPERS / "hostile_workspace.py")
OWNER = "alice"


@pytest.fixture(
    params=[
        pytest.param(("memory", "asyncio"), id="memory-asyncio"),
        pytest.param(("sqlite", "asyncio"), id="sqlite-asyncio"),
    ]
)
def store_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    kind, backend = request.param
    return kind, backend


def hostile(mode: str, *args: str) -> list[str]:
    return [sys.executable, HOSTILE, mode, "{port}", *args]


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
async def lc(store: wl.Store) -> AsyncIterator[wl.Lifecycle]:
    async with wl.Lifecycle(store, build_timeout=20, agent_timeout=20) as lifecycle:
        for chat in ("c1", "c2", "c3"):
            await lifecycle.register_chat(chat, owner=OWNER)
        yield lifecycle


async def workspace_id(store: wl.Store, chat: str) -> str:
    row = await store.get_chat(chat)
    assert row is not None and row.workspace_id is not None
    return row.workspace_id


async def still_serves(lc: wl.Lifecycle, chat: str) -> None:
    """The provisioner is alive: another workspace is built, ready, and deleted."""
    made = await lc.create_workspace(chat, owner=OWNER, name=f"other-{chat}")
    assert made.data.get("created") is True and "startup_scripts" not in made.data, made.text
    assert (await lc.delete_workspace(chat, owner=OWNER)).data["deleted"] is True


def unprivileged() -> tuple[list[str], dict[str, str]]:
    """How to run this suite's Python as ``nobody``: setpriv, and an interpreter of the same
    version that ``nobody`` can execute (a virtualenv's may link into ``/root``), given this
    environment's packages and the checkout on its path."""
    system = "/usr/bin/python3"
    if shutil.which("setpriv") is None or not os.path.exists(system):
        pytest.skip("running as root without setpriv or /usr/bin/python3: cannot drop privileges")
    version = subprocess.run(
        [system, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True
    )
    if version.stdout.strip() != str(sys.version_info[:2]):
        pytest.skip(f"/usr/bin/python3 is not Python {sys.version_info[:2]}")
    paths = [str(ROOT), *site.getsitepackages()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", system], env


class TestOneWorkspaceCannotStopTheProvisioner:
    async def test_a_directory_replaced_by_a_file(
        self, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path
    ) -> None:
        """Another workspace's code replaced this one's directory with a file: its start fails
        with the error in its answer; the provisioner serves on; its delete removes the file."""
        root = tmp_path / "ws"
        with anyio.fail_after(30):
            async with wl.ProcessProvisioner(store, root=root, command=hostile("serve"), spawn_grace=0.1):
                await lc.create_workspace("c1", owner=OWNER, name="dev")
                await lc.stop_workspace("c1", owner=OWNER)
                victim = root / await workspace_id(store, "c1")
                shutil.rmtree(victim)
                victim.write_text("not a directory any more")
                answer = await lc.start_workspace("c1", owner=OWNER)
                assert answer.data["error"].startswith("workspace start build failed: "), answer.text
                assert "File exists" in answer.data["error"] or "Not a directory" in answer.data["error"]
                await still_serves(lc, "c2")
                assert (await lc.delete_workspace("c1", owner=OWNER)).data["deleted"] is True
                assert not victim.exists()

    async def test_a_workspace_id_too_long_for_a_file_name(
        self, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A store whose ids are longer than a file name may be (300 bytes): ENAMETOOLONG fails
        that build, not the provisioner."""
        root = tmp_path / "ws"
        with anyio.fail_after(30):
            async with wl.ProcessProvisioner(store, root=root, command=hostile("serve"), spawn_grace=0.1):
                with monkeypatch.context() as m:
                    m.setattr(store_module, "_new_id", lambda: "w" * 300 + os.urandom(4).hex())
                    answer = await lc.create_workspace("c1", owner=OWNER, name="dev")
                assert "File name too long" in answer.data["error"], answer.text
                await still_serves(lc, "c2")
                deleted = await lc.delete_workspace("c1", owner=OWNER)
                assert deleted.is_error or "File name too long" in deleted.text, deleted.text
                await still_serves(lc, "c3")

    async def test_a_daemon_still_writing_during_a_delete(
        self, store: wl.Store, lc: wl.Lifecycle, tmp_path: Path
    ) -> None:
        """A daemonised child keeps refilling the directory a delete removes (ENOTEMPTY): the
        delete answers (never an exception out of the provisioner) and the others are served."""
        root = tmp_path / "ws"
        daemon = None
        try:
            with anyio.fail_after(30):
                async with wl.ProcessProvisioner(
                    store, root=root, command=hostile("daemon"), spawn_grace=0.1
                ):
                    await lc.create_workspace("c1", owner=OWNER, name="dev")
                    ws = root / await workspace_id(store, "c1")
                    daemon = int((ws / "daemon.pid").read_text())
                    deleted = await lc.delete_workspace("c1", owner=OWNER)
                    assert deleted.data.get("deleted") is True or "error" in deleted.data, deleted.text
                    await still_serves(lc, "c2")
        finally:
            if daemon is not None and running(daemon):
                os.kill(daemon, signal.SIGKILL)

    def test_a_read_only_directory_when_not_root(self) -> None:
        """The workspace made a read-only directory (chmod 555): as an unprivileged user the
        delete still removes it (the workspace's files are the provisioner's user's), and the
        provisioner serves on. Run as ``nobody`` when the suite runs as root."""
        top = tempfile.mkdtemp(prefix="wl-unprivileged-")
        try:
            argv, env = [sys.executable], dict(os.environ)
            if os.geteuid() == 0:
                argv, env = unprivileged()
                os.chown(top, 65534, 65534)
            done = subprocess.run(
                [*argv, str(HELPERS / "unprivileged_delete.py"), os.path.join(top, "ws")],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=top,
                env=env,
            )
            assert done.returncode == 0, done.stderr
            seen = json.loads(done.stdout)
            assert seen["made_ro"] and seen["created"]["created"] is True, seen
            assert seen["deleted"].get("deleted") is True and seen["gone"], seen
            assert seen["other"]["created"] is True, seen
        finally:
            shutil.rmtree(top, ignore_errors=True)


class TestAnUnusableRoot:
    # A read-only root is unusable only to a user other than root (root writes it anyway): that
    # case exists only when the suite runs unprivileged.
    @pytest.mark.parametrize("kind", ["a file", "under a file"] + (["read-only"] if os.geteuid() else []))
    async def test_is_one_clear_error_at_open(self, kind: str, tmp_path: Path) -> None:
        """Not ``CancelledError``: :class:`~workspace_lifecycle.UnusableRoot` (an ``OSError``)
        naming the path and the reason, and the host's next await is not cancelled."""
        afile = tmp_path / "afile"
        afile.write_text("x")
        root = {"a file": afile, "under a file": afile / "ws", "read-only": tmp_path / "ro"}[kind]
        if kind == "read-only":
            root.mkdir(mode=0o555)
        async with wl.open_store("memory://") as store:
            with pytest.raises(wl.UnusableRoot, match=r"root '.*' cannot be used: ") as caught:
                async with wl.ProcessProvisioner(store, root=root, command=hostile("serve")):
                    pass
            assert str(root) in str(caught.value) and isinstance(caught.value, OSError)
            await anyio.lowlevel.checkpoint()  # the host is not cancelled

    def test_an_empty_root_is_refused(self) -> None:
        with pytest.raises(ValueError, match="root must name a directory"):
            wl.ProcessProvisioner(None, root="", command=["x"])  # type: ignore[arg-type]

    @pytest.mark.parametrize("root", ["", "FILE"])
    def test_the_cli_says_one_sentence(self, root: str, tmp_path: Path) -> None:
        afile = tmp_path / "afile"
        afile.write_text("x")
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "workspace_lifecycle",
                "provision",
                "--db",
                f"sqlite:///{tmp_path}/x.db",
                "--process",
                "--root",
                str(afile) if root == "FILE" else root,
                "--",
                sys.executable,
                HOSTILE,
                "serve",
                "{port}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert "Traceback" not in done.stderr and "Cancelled" not in done.stderr, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "root" in lines[0], done.stderr
