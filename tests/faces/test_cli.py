"""The command line: the demo, the diagram, status/start on a database, help and user mistakes.

Commands run in-process through ``main([...])`` (each runs its own event loop, as the console
script does); one test runs ``python -m workspace_lifecycle`` and one interrupts ``watch``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import cli
from workspace_lifecycle.answers import NO_WORKSPACE

COMMANDS = ["demo", "diagram", "status", "watch", "create", "start", "stop", "delete", "provision", "mcp"]
STORE_COMMANDS = [
    ["demo"],
    ["status"],
    ["watch"],
    ["create", "c1", "--owner", "alice"],
    ["start", "c1", "--owner", "alice"],
    ["stop", "c1", "--owner", "alice"],
    ["delete", "c1", "--owner", "alice"],
    ["provision", "--simulate"],
    ["mcp", "--owner", "alice"],
]
FAST = ["--build-seconds", "0.01", "--agent-seconds", "0.01"]
DEMO_FAST = [*FAST, "--idle-seconds", "0.05"]

SQLITE = importlib.util.find_spec("workspace_lifecycle.adapters.sqlite") is not None
needs_sqlite = pytest.mark.skipif(not SQLITE, reason="workspace_lifecycle.adapters.sqlite is not there yet")


def _one_line_error(err: str) -> str:
    """stderr holds exactly one line, the error sentence, and no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _answers(out: str) -> list[dict[str, object]]:
    """The JSON answers the demo prints last, parsed."""
    tail = out.split("The tools' JSON answers, as the model sees them:", 1)[1]
    return [
        json.loads(line[line.index("{") :].removesuffix(" (is_error)")) for line in tail.strip().splitlines()
    ]


class TestDemo:
    def test_memory(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The scripted chat runs on the memory store: live changes with latency, then the answers."""
        assert cli.main(["demo", "--db", "memory://", *DEMO_FAST]) == 0
        out = capsys.readouterr().out
        for change in [
            "no_workspace -> building",
            "building -> running",
            "running -> agent_ready",
            "agent_ready -> building",
            "building -> stopped",
            "stopped -> building",
            "building -> failed",
            "failed -> building",
        ]:
            assert change in out, change
        assert "latency" in out and " ms" in out
        assert "3 answers, 1 build" in out
        answers = _answers(out)
        assert len(answers) == 9
        assert answers[0]["created"] is True
        starts = answers[2:5]
        assert all(a["started"] is True for a in starts)
        assert len({a["build_id"] for a in starts}) == 1
        assert answers[6]["error"] == "workspace start build failed: insufficient quota"
        assert answers[6]["error_code"] == "INSUFFICIENT_QUOTA"  # Coder's structured failure
        assert answers[6]["quota"] == {"credits_consumed": 12, "budget": 10}
        # Between turns: the idle deadline fires a stop build, and the next turn starts it again.
        idle = [line for line in out.splitlines() if "build_queued" in line and " idle " in line]
        assert len(idle) == 1 and "agent_ready -> building" in idle[0]
        assert "building -> stopped" in out.split(idle[0], 1)[1]
        assert answers[8]["started"] is True and answers[8]["build_id"] != answers[7]["build_id"]
        assert answers[7]["started"] is True
        assert "final state of 'demo': agent_ready" in out

    @needs_sqlite
    def test_sqlite_default_file_and_rerun(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --db the demo uses ./workspace-lifecycle.db; a rerun takes a new chat id; --fresh starts over."""
        monkeypatch.chdir(tmp_path)
        assert cli.main(["demo", *DEMO_FAST]) == 0
        assert (tmp_path / "workspace-lifecycle.db").exists()
        assert "chat 'demo'" in capsys.readouterr().out
        assert cli.main(["demo", *DEMO_FAST]) == 0
        out = capsys.readouterr().out
        assert "chat 'demo-2'" in out and len(_answers(out)) == 9
        assert cli.main(["demo", "--fresh", *DEMO_FAST]) == 0
        assert "chat 'demo'" in capsys.readouterr().out

    @needs_sqlite
    def test_sqlite_url(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """--db sqlite:////absolute/path works, and status then lists the demo's chat."""
        url = f"sqlite:///{tmp_path / 'demo.db'}"
        assert cli.main(["demo", "--db", url, *DEMO_FAST]) == 0
        assert "3 answers, 1 build" in capsys.readouterr().out
        assert cli.main(["status", "--db", url]) == 0
        out = capsys.readouterr().out
        assert (
            "demo" in out and "agent_ready" in out and "#8 start succeeded" in out and "idle stop at" in out
        )

    def test_process(self, capsys: pytest.CaptureFixture[str]) -> None:
        """demo --process: real HTTP servers; a real port answers, a kill -9 turns the agent off,
        and every process is gone at the end."""
        assert cli.main(["demo", "--process", "--db", "memory://"]) == 0
        out = capsys.readouterr().out
        answers = [line for line in out.splitlines() if "answers at http://127.0.0.1:" in line]
        assert len(answers) == 2 and all(line.endswith(": HTTP/1.0 200 OK") for line in answers)
        for change in ["running -> agent_ready", "agent_ready -> running", "building -> no_workspace"]:
            assert change in out, change
        pids = [int(line.split("(pid ", 1)[1].split(")", 1)[0]) for line in answers]
        assert pids[0] != pids[1] and out.count("is gone") == 2
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert "final state of 'demo': no_workspace" in out


class TestDiagram:
    def test_mermaid_has_all_states(self, capsys: pytest.CaptureFixture[str]) -> None:
        """diagram --format mermaid prints the Mermaid state diagram with all six states."""
        assert cli.main(["diagram", "--format", "mermaid"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("stateDiagram-v2")
        for state in wl.WorkspaceState:
            assert state.value in out

    def test_output_file(self, tmp_path: Path) -> None:
        """-o writes the file (the committed diagrams are made this way)."""
        target = tmp_path / "m.dot"
        assert cli.main(["diagram", "--format", "dot", "-o", str(target)]) == 0
        assert target.read_text().startswith("digraph WorkspaceMachine {")

    def test_missing_dot_is_one_sentence(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without Graphviz, svg is one clear sentence and exit 1."""
        monkeypatch.setenv("PATH", "")
        assert cli.main(["diagram", "--format", "svg"]) == 1
        assert "Graphviz" in _one_line_error(capsys.readouterr().err)


class TestHelp:
    @pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
    def test_help(self, command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """--help works on the program and on every command."""
        assert cli.main([*command, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: workspace-lifecycle")
        assert len(out.splitlines()) > 3

    def test_python_dash_m(self) -> None:
        """python -m workspace_lifecycle is the same command line."""
        done = subprocess.run(
            [sys.executable, "-m", "workspace_lifecycle", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        for command in COMMANDS:
            assert command in done.stdout


class TestMistakes:
    @pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda c: c[0])
    @pytest.mark.parametrize("url", ["mysql://x", "memory", "memory://somewhere"])
    def test_bad_db_url(self, command: list[str], url: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A bad --db URL is one sentence naming the accepted forms, exit 2, no traceback."""
        assert cli.main([*command, "--db", url]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert line.startswith("workspace-lifecycle: ") and "accepted forms" in line

    @pytest.mark.parametrize(
        "argv",
        [
            ["frob"],
            [],
            ["start", "c1"],
            ["demo", "--build-seconds", "soon"],
            ["provision", "--fail-rate", "2"],
        ],
        ids=["unknown-command", "no-command", "start-without-owner", "bad-seconds", "bad-rate"],
    )
    def test_usage_errors(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """argparse's mistakes are one line too (not the usage block), exit 2."""
        assert cli.main(argv) == 2
        assert "workspace-lifecycle" in _one_line_error(capsys.readouterr().err)

    def test_provision_needs_a_provisioner(self, capsys: pytest.CaptureFixture[str]) -> None:
        """provision without --simulate or --process names both, and exits 2."""
        assert cli.main(["provision", "--db", "memory://"]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert "choose a provisioner" in line and "--simulate" in line and "--process -- CMD ARGS" in line

    @pytest.mark.parametrize(
        ("argv", "sentence"),
        [
            (["--simulate", "--process", "--", "true"], "use exactly one of --simulate and --process"),
            (["--process"], "--process needs the workspace command after --"),
            (["--process", "--"], "--process needs the workspace command after --"),
            (["--simulate", "--", "python", "x.py"], "--simulate takes no command"),
        ],
        ids=["both", "process-without-command", "process-empty-command", "simulate-with-command"],
    )
    def test_provision_process_usage(
        self, argv: list[str], sentence: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert cli.main(["provision", "--db", "memory://", *argv]) == 2
        assert sentence in _one_line_error(capsys.readouterr().err)

    @pytest.mark.parametrize(
        "command",
        [["status"], ["watch"], *([tool, "c1", "--owner", "alice"] for tool in ("start", "stop", "delete"))],
        ids=lambda c: c[0],
    )
    def test_missing_database_file(
        self, command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Commands that read or act on an existing chat refuse a missing SQLite file, all with
        one sentence, and do not create an empty one as a side effect of a typo."""
        url = f"sqlite:///{tmp_path / 'nope.db'}"
        assert cli.main([*command, "--db", url]) == 1
        line = _one_line_error(capsys.readouterr().err)
        assert line.startswith(f"workspace-lifecycle: no database at {tmp_path / 'nope.db'}; ")
        assert "'workspace-lifecycle create CHAT --owner OWNER' creates it" in line
        assert not (tmp_path / "nope.db").exists()

    @needs_sqlite
    @pytest.mark.parametrize(
        "command",
        [
            ["status"],
            ["demo", *DEMO_FAST],
            ["start", "c1", "--owner", "alice"],
            ["create", "c1", "--owner", "alice"],
            ["mcp", "--owner", "alice"],
            ["watch"],
        ],
        ids=lambda c: c[0],
    )
    @pytest.mark.parametrize("what", ["not-a-database", "directory", "no-parent"])
    def test_unusable_database(
        self, command: list[str], what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A file that is not a database, a directory, a missing directory: one sentence, exit 1."""
        path = tmp_path / "db"
        if what == "not-a-database":
            path.write_bytes(b"this is not a database" * 100)
        elif what == "directory":
            path.mkdir()
        else:
            path = tmp_path / "missing" / "x.db"
        code = cli.main([*command, "--db", f"sqlite:///{path}"])
        assert code == 1
        line = _one_line_error(capsys.readouterr().err)
        assert line.startswith("workspace-lifecycle: ")


def _seeded_store(state: str) -> wl.MemoryStore:
    """A memory store with chat 'c1' of alice whose workspace is ``agent_ready``, ``stopped`` or
    ``stopping`` (a stop build running),
    and chat 'c0' of bob without one.

    Written with the store's own calls, as a provisioner would, so that no task is left waiting
    on the store in this event loop; the command under test runs its own.
    """
    store = wl.MemoryStore()
    anyio.run(seed_chats, store, state)
    return store


async def seed_chats(store: wl.Store, state: str) -> None:
    """What :func:`_seeded_store` writes, on any open store."""
    await store.register_chat("c0", "bob")
    await store.register_chat("c1", "alice", policy=wl.Policy(idle_stop_after=3600))
    await store.create_workspace("c1", "dev", expected_workspace_id=None)
    build = await store.claim_build("seed")
    assert build is not None
    await store.finish_build(build.build_id, wl.JobStatus.SUCCEEDED)
    await store.report_agent(build.workspace_id, wl.AgentLifecycle.READY)
    if state in ("stopped", "stopping"):
        await store.request_build(build.workspace_id, wl.Transition.STOP, expected_build_number=1)
        stop = await store.claim_build("seed")
        assert stop is not None
        if state == "stopped":
            await store.finish_build(stop.build_id, wl.JobStatus.SUCCEEDED)


class TestOnAStore:
    def test_status_table(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        """status prints one row per chat: owner, state, latest build, agent."""
        store = _seeded_store("agent_ready")
        monkeypatch.setattr(cli, "open_store", lambda url: store)
        assert cli.main(["status", "--db", "memory://"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["CHAT", "OWNER", "STATE", "LATEST", "BUILD", "AGENT", "NEXT", "DEADLINE"]
        assert lines[1].split() == ["c0", "bob", "no_workspace", "-", "-", "-"]
        cells = lines[2].split()
        assert cells[:7] == ["c1", "alice", "agent_ready", "#1", "start", "succeeded", "ready"]
        assert cells[7:10] == ["idle", "stop", "at"] and cells[-2:] == ["(in", "60m)"]

    def test_status_empty(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An empty database says so."""
        assert cli.main(["status", "--db", "memory://"]) == 0
        assert capsys.readouterr().out.strip() == "no chats in memory://"

    def test_start_unknown_chat(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown chat: the tool's error sentence on stderr, exit 1."""
        assert cli.main(["start", "nobody", "--owner", "alice", "--db", "memory://"]) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert _one_line_error(captured.err) == f"workspace-lifecycle: {NO_WORKSPACE}"

    def test_start_running_prints_json(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A running workspace: the tool's JSON on stdout, exit 0."""
        store = _seeded_store("agent_ready")
        monkeypatch.setattr(cli, "open_store", lambda url: store)
        assert cli.main(["start", "c1", "--owner", "alice", "--db", "memory://", "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["started"] is True and answer["no_build"] is True

    def test_start_no_wait_shows_progress(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--no-wait fires the build and answers at once; the change is progress on stderr."""
        store = _seeded_store("stopped")
        monkeypatch.setattr(cli, "open_store", lambda url: store)
        assert cli.main(["start", "c1", "--owner", "alice", "--db", "memory://", "--no-wait", "--json"]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["status"] == "building"
        assert "c1" in captured.err and "stopped -> building" in captured.err

    def test_start_no_wait_during_a_stop_build_is_stored(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """During a stop build, --no-wait answers at once and leaves at once: the start is
        stored on the workspace (the stop build's finish fires it), and stderr says so."""
        url = f"sqlite:///{tmp_path / 'c.db'}"

        async def seed() -> None:
            async with wl.open_store(url) as store:
                await seed_chats(store, "stopping")

        async def stored() -> object:
            async with wl.open_store(url) as store:
                chat = await store.get_chat("c1")
                assert chat is not None and chat.workspace_id is not None
                return (await store.workspace_facts(chat.workspace_id)).workspace.deferred

        anyio.run(seed)
        argv = ["start", "c1", "--owner", "alice", "--db", url, "--no-wait", "--json"]
        assert cli.main(argv) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["status"] == "building"
        assert "the start is stored: it is requested when the stop build in progress ends" in captured.err
        deferred = anyio.run(stored)
        assert isinstance(deferred, wl.Deferred) and deferred.transition is wl.Transition.START


def _interruptible(*argv: str) -> subprocess.Popen[str]:
    """``python -m workspace_lifecycle ARGV`` as a child that Ctrl-C (SIGINT) can stop."""
    return subprocess.Popen(
        [sys.executable, "-m", "workspace_lifecycle", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell may start background children with SIGINT ignored; restore Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _ctrl_c(proc: subprocess.Popen[str]) -> str:
    """Interrupt ``proc``; it exits 0 without a traceback. Returns its remaining stderr."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


@needs_sqlite
@pytest.mark.parametrize("kind", ["--simulate", "--process"])
def test_sigterm_stops_a_provisioner_as_ctrl_c_does(tmp_path: Path, kind: str) -> None:
    """A service manager stops ``provision`` with SIGTERM (systemd, Docker, Kubernetes): it exits
    0 after the same shutdown as Ctrl-C, not killed by the signal's default action (found by an
    independent attack: exit -15, its cgroup left behind)."""
    url = f"sqlite:///{tmp_path / 'term.db'}"
    extra = (
        ["--root", str(tmp_path / "ws"), "--", sys.executable, "-c", "pass"]
        if kind == "--process"
        else list(FAST)
    )
    provisioner = _interruptible("provision", kind, "--db", url, *extra)
    assert provisioner.stderr is not None
    assert "Ctrl-C" in provisioner.stderr.readline()  # up: its handlers are in place
    provisioner.send_signal(signal.SIGTERM)
    _, err = provisioner.communicate(timeout=20)
    assert provisioner.returncode == 0, err
    assert "Traceback" not in err


@needs_sqlite
def test_two_terminals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """provision --simulate in one process, start in another, on one SQLite file (issue 3)."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    provisioner = _interruptible("provision", "--simulate", "--db", url, *FAST)
    try:
        assert provisioner.stderr is not None
        assert "Ctrl-C" in provisioner.stderr.readline()  # up and watching the file

        async def stopped_workspace() -> None:
            async with wl.open_store(url) as store, wl.Lifecycle(store) as lc:
                await lc.register_chat("c1", owner="alice")
                assert (await lc.create_workspace("c1", owner="alice", name="dev")).data["created"]
                assert (await lc.stop_workspace("c1", owner="alice")).data["stopped"]

        anyio.run(stopped_workspace)
        assert cli.main(["start", "c1", "--owner", "alice", "--db", url, "--timeout", "20", "--json"]) == 0
        captured = capsys.readouterr()
        answer = json.loads(captured.out)
        assert answer["started"] is True and answer["build_id"]
        assert "stopped -> building" in captured.err and "-> agent_ready" in captured.err
    finally:
        err = _ctrl_c(provisioner)
    assert "c1" in err and "building -> running" in err


@needs_sqlite
def test_provision_process_in_another_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """provision --process -- CMD in one process, create and delete in others: the workspace
    is a real server in a directory under --root, and a delete ends it."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    root = tmp_path / "ws"
    server = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
    provisioner = _interruptible("provision", "--process", "--db", url, "--root", str(root), "--", *server)
    try:
        assert provisioner.stderr is not None
        assert "Ctrl-C" in provisioner.stderr.readline()
        assert cli.main(["create", "c1", "--owner", "alice", "--db", url, "--timeout", "20", "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["created"] is True and "startup_scripts" not in answer, answer
        (directory,) = root.iterdir()
        state = json.loads((directory / "workspace.json").read_text())
        assert Path(f"/proc/{state['pid']}").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{state['port']}/", timeout=10) as response:
            assert response.status == 200
        assert cli.main(["delete", "c1", "--owner", "alice", "--db", url, "--timeout", "20", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["deleted"] is True
        assert not directory.exists() and not Path(f"/proc/{state['pid']}").exists()
    finally:
        err = _ctrl_c(provisioner)
    assert "running -> agent_ready" in err


def test_watch_stops_cleanly_on_ctrl_c() -> None:
    """watch runs until Ctrl-C, then exits 0 without a traceback."""
    proc = _interruptible("watch", "--db", "memory://")
    assert proc.stderr is not None
    # The "watching ...; Ctrl-C to stop" banner says the event loop is up.
    assert "Ctrl-C" in proc.stderr.readline()
    _ctrl_c(proc)
