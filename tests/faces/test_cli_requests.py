"""The CLI's requests (create, start, stop, delete), their progress and --json, and the
mistakes a new user meets in the first hour: each one sentence on stderr, never a traceback.

Commands run in-process through ``main([...])``; one test runs ``watch --json`` as a process.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest
from test_cli import _ctrl_c, _interruptible, _one_line_error, _seeded_store, needs_sqlite

import workspace_lifecycle as wl
from workspace_lifecycle import cli
from workspace_lifecycle.answers import NO_WORKSPACE
from workspace_lifecycle.tools import unknown_chat

FAST = ["--build-seconds", "0.01", "--agent-seconds", "0.01"]


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> wl.MemoryStore:
    """Every command in the test opens this one memory store (--db memory://)."""
    store = wl.MemoryStore()
    monkeypatch.setattr(cli, "open_store", lambda url: store)
    return store


class TestRequests:
    @needs_sqlite
    def test_create_registers_a_new_chat(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """create on a fresh database file creates it, registers the chat for the owner, then
        creates its workspace; another owner cannot take the chat, and is answered exactly as
        the create_workspace tool answers an unknown chat (as start/stop/delete answer it)."""
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
        argv = ["create", "c1", "--owner", "alice", "--name", "dev", "--db", url]
        assert cli.main([*argv, "--no-wait", "--json"]) == 0
        captured = capsys.readouterr()
        answer = json.loads(captured.out)
        assert answer["status"] == "building" and answer["workspace_name"] == "alice/dev"
        assert "no_workspace -> building" in captured.err
        assert cli.main(["create", "c1", "--owner", "bob", "--db", url, "--no-wait"]) == 1
        line = _one_line_error(capsys.readouterr().err)
        assert line == f"workspace-lifecycle: {unknown_chat('create_workspace').text}", line
        assert "owner" not in line
        assert cli.main(["start", "c1", "--owner", "bob", "--db", url, "--no-wait"]) == 1
        assert _one_line_error(capsys.readouterr().err) == f"workspace-lifecycle: {NO_WORKSPACE}"
        assert cli.main(["status", "--json", "--db", url]) == 0
        row = json.loads(capsys.readouterr().out)  # one chat, still alice's, its build untouched
        assert (row["chat_id"], row["owner"], row["latest_build"]["number"]) == ("c1", "alice", 1), row

    @pytest.mark.parametrize(
        ("tool", "state", "key"),
        [
            ("stop", "agent_ready", "stopped"),
            ("delete", "stopped", "deleted"),
            ("start", "stopped", "started"),
        ],
    )
    def test_stop_delete_start_no_wait(
        self,
        tool: str,
        state: str,
        key: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Each request fires its build; --no-wait answers at once; --json is one JSON object."""
        store = _seeded_store(state)
        monkeypatch.setattr(cli, "open_store", lambda url: store)
        assert cli.main([tool, "c1", "--owner", "alice", "--db", "memory://", "--no-wait", "--json"]) == 0
        out = capsys.readouterr().out
        assert len(out.splitlines()) == 1
        answer = json.loads(out)
        assert answer["status"] == "building" and answer["request"] == tool

    def test_create_no_wait_during_a_stop_build_stores_nothing(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A create during a stop build is answered and not stored (once the stop ends there is
        nothing to create: the workspace exists, stopped), so the command leaves at once and
        says nothing about a stored request; a start would be stored."""
        store = _seeded_store("stopping")
        monkeypatch.setattr(cli, "open_store", lambda url: store)
        argv = ["create", "c1", "--owner", "alice", "--db", "memory://", "--no-wait", "--timeout", "0.2"]
        assert cli.main(argv) == 0
        captured = capsys.readouterr()
        assert "building" in captured.out and "request=create" in captured.out
        assert "stored" not in captured.err

    def test_human_answer_without_json(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without --json the answer is one line for a person."""
        store = _seeded_store("agent_ready")
        monkeypatch.setattr(cli, "open_store", lambda url: store)
        assert cli.main(["start", "c1", "--owner", "alice", "--db", "memory://"]) == 0
        # The answer carries the armed idle stop in words (issue 28's warnings): a model can keep it.
        assert (
            capsys.readouterr().out.strip()
            == "c1: started  next_deadline=idle stop in 60 min  no_build=true  workspace_name=dev"
        )

    def test_error_answer_with_json(self, shared: wl.MemoryStore, capsys: pytest.CaptureFixture[str]) -> None:
        """With --json an error answer is a JSON object too, and the exit status 1."""
        assert cli.main(["stop", "nobody", "--owner", "alice", "--db", "memory://", "--json"]) == 1
        assert json.loads(capsys.readouterr().out) == {"error": NO_WORKSPACE}


class TestProgress:
    def test_pending_hint_and_plain_lines(
        self, shared: wl.MemoryStore, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With no provisioner, a waiting request says so once the build has been pending a while;
        on a pipe, progress is plain lines (no live line)."""
        argv = ["create", "c1", "--owner", "alice", "--db", "memory://", "--timeout", "0.8"]
        assert cli.main([*argv, "--pending-hint-after", "0.2"]) == 3
        err = capsys.readouterr().err
        assert "\x1b" not in err and "\r" not in err
        lines = err.strip().splitlines()
        assert "no_workspace -> building" in lines[0]
        assert lines[1] == (
            "no provisioner has claimed build #1 (start) of c1 after 0 s; run "
            "'workspace-lifecycle provision --simulate --db memory://' in another terminal (the same --db)"
        )

    def test_pending_hint_delay_from_the_environment(
        self, shared: wl.MemoryStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv(cli.PENDING_HINT_ENV, "0.1")
        assert cli.main(["create", "c1", "--owner", "alice", "--db", "memory://", "--timeout", "0.5"]) == 3
        assert "no provisioner has claimed build #1" in capsys.readouterr().err

    @needs_sqlite
    def test_no_hint_when_a_provisioner_claims(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A claimed build, even a slow one, gets no hint."""
        url = f"sqlite:///{tmp_path / 'p.db'}"
        argv = ["create", "c1", "--owner", "alice", "--db", url, "--pending-hint-after", "0.1"]

        async def provisioned() -> int:
            async with wl.open_store(url) as store, wl.SimulatedProvisioner(store, build_seconds=0.4):
                code: int = await anyio.to_thread.run_sync(cli.main, argv)
                return code

        assert anyio.run(provisioned) == 0
        captured = capsys.readouterr()
        assert "no provisioner" not in captured.err and "-> agent_ready" in captured.err
        assert captured.out.startswith("c1: created")

    def test_live_line_on_a_terminal(
        self, shared: wl.MemoryStore, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """On a terminal, a live line shows the state and the time waited, and is cleared at the end."""
        monkeypatch.setattr(cli, "_is_tty", lambda stream: True)
        assert cli.main(["create", "c1", "--owner", "alice", "--db", "memory://", "--timeout", "0.4"]) == 3
        err = capsys.readouterr().err
        assert "\r\x1b[Kc1: building  0.3 s" in err
        assert err.endswith("\r\x1b[K")


class TestEnvironment:
    def test_db_from_the_environment_and_the_flag_wins(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv(cli.DB_ENV, "memory://")
        assert cli.main(["status"]) == 0
        assert capsys.readouterr().out.strip() == "no chats in memory://"
        monkeypatch.setenv(cli.DB_ENV, "mysql://nope")
        assert cli.main(["status", "--db", "memory://"]) == 0
        assert cli.main(["status"]) == 2
        assert "accepted forms" in _one_line_error(capsys.readouterr().err)

    def test_db_env_in_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["create", "--help"]) == 0
        assert "WORKSPACE_LIFECYCLE_DB" in capsys.readouterr().out


class TestMistakes:
    def test_non_utf8_chat_id(self, capsys: pytest.CaptureFixture[str]) -> None:
        """start $'\\xff' (argv decodes it to a lone surrogate): one sentence, exit 2."""
        assert cli.main(["start", "\udcff", "--owner", "o", "--db", "memory://"]) == 2
        assert "must be valid UTF-8 text" in _one_line_error(capsys.readouterr().err)

    @needs_sqlite
    def test_corrupt_latest_build(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """start on a chat whose latest build row holds an unknown status: one sentence, exit 1."""
        path = tmp_path / "x.db"
        url = f"sqlite:///{path}"
        assert cli.main(["create", "c1", "--owner", "alice", "--db", url, "--no-wait"]) == 0
        with sqlite3.connect(path) as db:
            db.execute("UPDATE builds SET status = 'bogus'")
        db.close()
        capsys.readouterr()
        assert cli.main(["start", "c1", "--owner", "alice", "--db", url]) == 1
        line = _one_line_error(capsys.readouterr().err)
        assert "corrupt row in builds" in line and "'bogus'" in line

    def test_mcp_without_the_sdk(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Any part of the SDK missing (mcp_types here) is the pip install sentence."""
        monkeypatch.delitem(sys.modules, "workspace_lifecycle.mcp_server", raising=False)
        monkeypatch.setitem(sys.modules, "mcp_types", None)
        assert cli.main(["mcp", "--owner", "alice", "--db", "memory://"]) == 1
        line = _one_line_error(capsys.readouterr().err)
        assert "pip install 'workspace-lifecycle[mcp]'" in line

    @needs_sqlite
    @pytest.mark.parametrize("what", ["directory", "no-parent"])
    @pytest.mark.parametrize(
        "command",
        [["mcp", "--owner", "a"], ["create", "c1", "--owner", "a"], ["provision", "--simulate"]],
        ids=lambda c: c[0],
    )
    def test_unusable_path_for_a_new_database(
        self, command: list[str], what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "db"
        if what == "directory":
            path.mkdir()
            fragment = "is a directory, not a database file"
        else:
            path = tmp_path / "missing" / "x.db"
            fragment = "does not exist"
        assert cli.main([*command, "--db", f"sqlite:///{path}"]) == 1
        assert fragment in _one_line_error(capsys.readouterr().err)

    @needs_sqlite
    def test_watch_and_status_agree_on_a_missing_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = f"sqlite:///{tmp_path / 'nope.db'}"
        assert cli.main(["status", "--db", url]) == 1
        status = _one_line_error(capsys.readouterr().err)
        assert cli.main(["watch", "--db", url]) == 1
        assert _one_line_error(capsys.readouterr().err) == status
        assert not (tmp_path / "nope.db").exists()


class TestPolicy:
    def test_create_stores_the_chats_policy(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        url = f"sqlite:///{tmp_path / 'p.db'}"
        argv = ["create", "c1", "--owner", "alice", "--db", url, "--no-wait"]
        assert cli.main([*argv, "--idle-stop-after", "900", "--delete-after-stopped", "86400"]) == 0
        capsys.readouterr()
        assert cli.main(["status", "--db", url, "--json"]) == 0
        [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert row["policy"] == {
            "idle_stop_after": 900.0,
            "delete_after_stopped": 86400.0,
            "warn_before": None,
        }

    @pytest.mark.parametrize("bad", ["-1", "0", "nan", "soon"])
    def test_a_bad_duration_is_a_usage_error(self, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
        argv = ["create", "c1", "--owner", "alice", "--db", "memory://", "--idle-stop-after", bad]
        assert cli.main(argv) == 2
        assert "--idle-stop-after" in _one_line_error(capsys.readouterr().err)


class TestJson:
    def test_status_json(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        store = _seeded_store("agent_ready")
        monkeypatch.setattr(cli, "open_store", lambda url: store)
        assert cli.main(["status", "--db", "memory://", "--json"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(r["chat_id"], r["owner"], r["state"], r["agent"]) for r in rows] == [
            ("c0", "bob", "no_workspace", None),
            ("c1", "alice", "agent_ready", "ready"),
        ]
        assert rows[1]["latest_build"]["number"] == 1 and rows[1]["latest_build"]["status"] == "succeeded"
        assert rows[0]["deadline"] is None and rows[0]["policy"] == {
            "idle_stop_after": None,
            "delete_after_stopped": None,
            "warn_before": None,
        }
        assert rows[1]["policy"] == {
            "idle_stop_after": 3600,
            "delete_after_stopped": None,
            "warn_before": None,
        }
        deadline = rows[1]["deadline"]
        assert (deadline["reason"], deadline["transition"]) == ("idle", "stop") and isinstance(
            deadline["at"], float
        )

    @needs_sqlite
    def test_watch_json(self, tmp_path: Path) -> None:
        """watch --json prints one JSON object per state change (a real process on a shared file)."""
        url = f"sqlite:///{tmp_path / 'w.db'}"
        assert cli.main(["create", "c1", "--owner", "alice", "--db", url, "--no-wait"]) == 0
        proc = _interruptible("watch", "--db", url, "--json")
        try:
            assert proc.stderr is not None and proc.stdout is not None
            assert "Ctrl-C" in proc.stderr.readline()
            assert cli.main(["create", "c2", "--owner", "alice", "--db", url, "--no-wait"]) == 0
            change = json.loads(proc.stdout.readline())
        finally:
            _ctrl_c(proc)
        assert change["chat_id"] == "c2" and change["build_number"] == 1
        assert (change["from"], change["to"], change["event"]) == ("no_workspace", "building", "build_queued")
        assert set(change) == {
            "at",
            "chat_id",
            "workspace_id",
            "build_number",
            "from",
            "to",
            "event",
            "reason",
            "seq",
        }
        assert change["reason"] == "request"
