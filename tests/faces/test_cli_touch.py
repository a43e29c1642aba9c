"""``workspace-lifecycle touch CHAT --owner O``: activity from outside the chat pushes its idle
deadline (there is no ``extend --by``: the length is the chat's policy)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import pytest
from test_cli import _one_line_error, seed_chats

import workspace_lifecycle as wl
from workspace_lifecycle import cli

#: The seed's clock runs this far behind: its idle deadline is due an hour after a past moment.
EARLIER = 1000.0


def _seeded_file(tmp_path: Path, state: str) -> str:
    """A SQLite file with alice's chat c1 (idle stop after an hour; its workspace
    ``agent_ready`` or ``stopped``, written EARLIER seconds ago) and bob's c0."""
    url = f"sqlite:///{tmp_path / 'chats.db'}"

    async def seed() -> None:
        async with wl.open_store(url, clock=lambda: time.time() - EARLIER) as store:
            await seed_chats(store, state)

    anyio.run(seed)
    return url


def deadline_of(url: str) -> wl.Deadline | None:
    async def read() -> wl.Deadline | None:
        async with wl.open_store(url) as store:
            chat = await store.get_chat("c1")
            assert chat is not None and chat.workspace_id is not None
            return (await store.workspace_facts(chat.workspace_id)).workspace.deadline

    return anyio.run(read)


class TestTouch:
    def test_pushes_the_idle_deadline(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """The deadline armed EARLIER seconds ago moves to now + idle_stop_after (an hour), and
        the answer is the deadline as stored."""
        url = _seeded_file(tmp_path, "agent_ready")
        before = deadline_of(url)
        assert before is not None and before.at < time.time() + 3600 - EARLIER / 2
        started = time.time()
        assert cli.main(["touch", "c1", "--owner", "alice", "--json", "--db", url]) == 0
        answer = json.loads(capsys.readouterr().out)
        after = deadline_of(url)
        assert after is not None and after.reason is wl.Reason.IDLE
        assert started + 3600 <= after.at <= time.time() + 3600
        assert answer == {"deadline": {"at": after.at, "reason": "idle"}}
        assert cli.main(["touch", "c1", "--owner", "alice", "--db", url]) == 0
        assert capsys.readouterr().out.startswith("idle stop at ")

    def test_a_stopped_workspace_has_nothing_to_push(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = _seeded_file(tmp_path, "stopped")
        assert cli.main(["touch", "c1", "--owner", "alice", "--db", url]) == 0
        assert "not running" in capsys.readouterr().out

    def test_another_owners_chat_is_an_unknown_one(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = _seeded_file(tmp_path, "agent_ready")
        assert cli.main(["touch", "c1", "--owner", "bob", "--db", url]) == 1
        theirs = _one_line_error(capsys.readouterr().err)
        assert cli.main(["touch", "nobody", "--owner", "bob", "--db", url]) == 1
        unknown = _one_line_error(capsys.readouterr().err)
        assert theirs.replace("'c1'", "X") == unknown.replace("'nobody'", "X")

    def test_help_says_there_is_no_extend(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["touch", "--help"]) == 0
        assert "no 'extend --by S'" in " ".join(capsys.readouterr().out.split())
