"""``workspace-lifecycle list --owner O``: that owner's chats only, with state, next deadline and
endpoint; read-only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import _one_line_error, _seeded_store
from test_cli_touch import _seeded_file, deadline_of

import workspace_lifecycle as wl
from workspace_lifecycle import cli
from workspace_lifecycle.cli.status import endpoints_of


def _list(monkeypatch: pytest.MonkeyPatch, store: wl.Store, *args: str) -> int:
    monkeypatch.setattr(cli, "open_store", lambda url: store)
    return cli.main(["list", *args, "--db", "memory://"])


class TestList:
    def test_a_table_of_the_owners_chats(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """alice sees c1 (agent_ready, its idle stop an hour away), not bob's c0."""
        store = _seeded_store("agent_ready")
        assert _list(monkeypatch, store, "--owner", "alice") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["CHAT", "STATE", "NEXT", "DEADLINE", "ENDPOINT"]
        assert len(lines) == 2 and lines[1].startswith("c1") and "agent_ready" in lines[1]
        assert "idle stop at " in lines[1] and "(in 60m)" in lines[1] and lines[1].endswith("-")
        assert "c0" not in "\n".join(lines)

    def test_json_one_object_per_chat(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        store = _seeded_store("stopped")
        assert _list(monkeypatch, store, "--owner", "alice", "--json") == 0
        (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert row["chat_id"] == "c1" and row["state"] == "stopped" and row["endpoints"] == {}
        assert set(row) == {"chat_id", "state", "deadline", "endpoints"}

    def test_an_owner_without_chats(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert _list(monkeypatch, _seeded_store("stopped"), "--owner", "carol") == 0
        assert capsys.readouterr().out.strip() == "no chats of 'carol' in memory://"

    def test_listing_is_not_activity(self, tmp_path: Path) -> None:
        """list writes nothing: the idle deadline stays where it was armed."""
        url = _seeded_file(tmp_path, "agent_ready")
        before = deadline_of(url)
        assert before is not None
        assert cli.main(["list", "--owner", "alice", "--db", url]) == 0
        assert deadline_of(url) == before

    def test_owner_is_required_and_checked(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["list", "--db", "memory://"]) == 2
        assert "--owner" in _one_line_error(capsys.readouterr().err)
        assert cli.main(["list", "--owner", "a\nb", "--db", "memory://"]) == 2
        assert "owner must be valid UTF-8 text" in _one_line_error(capsys.readouterr().err)

    def test_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["list", "--help"]) == 0
        assert "OWNER's chats" in capsys.readouterr().out


AT = {"http": "http://127.0.0.1:41237"}


class TestEndpoints:
    """``list`` and ``status`` show endpoints through one helper, the core's ``reached``."""

    def _facts(self, latest: wl.Build) -> wl.WorkspaceFacts:
        """The start build's agent, ready and reporting ``AT``, under ``latest``."""
        agent = wl.Agent("w1", 1, wl.AgentLifecycle.READY, endpoints=AT)
        return wl.WorkspaceFacts(wl.Workspace("w1", "c1", "alice", "dev"), latest, agent, seq=3)

    def test_shown_while_it_runs_and_nowhere_once_stopped(self) -> None:
        start = wl.Build("b1", "w1", 1, wl.Transition.START, wl.JobStatus.SUCCEEDED, has_agent=True)
        stop = wl.Build("b2", "w1", 2, wl.Transition.STOP, wl.JobStatus.SUCCEEDED)
        assert endpoints_of(self._facts(start)) == AT
        # The agent row still holds what it reported; a stopped workspace is reached nowhere.
        assert endpoints_of(self._facts(stop)) == {}
        assert endpoints_of(None) == {}

    def test_status_and_list_share_the_helper(self) -> None:
        from workspace_lifecycle.cli import listing, status

        assert listing.endpoints_of is status.endpoints_of
