"""Ids and names on every face (issue 27, point 7): the runtime's public methods, the command
line's arguments and the MCP server's --chat/--owner refuse a bad id in the core's one sentence;
read-only commands create no PostgreSQL schema; a missing extra is named from the Python API;
the command line keeps a --name or refuses it with Coder's rule."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_cli import _one_line_error

import workspace_lifecycle as wl
from workspace_lifecycle import cli

SENTENCE = "must be valid UTF-8 text of 1 to 128 characters without control characters (such as a newline)"
BAD_IDS = ["", "a\nb", "\x1b[2J", "x" * 129, "a\ud800b"]


class TestTheRuntime:
    @pytest.mark.parametrize("bad", BAD_IDS)
    @pytest.mark.parametrize(
        "call",
        [
            lambda lc, c, o: lc.register_chat(c, owner=o),
            lambda lc, c, o: lc.create_workspace(c, owner=o, name="dev"),
            lambda lc, c, o: lc.start_workspace(c, owner=o),
            lambda lc, c, o: lc.stop_workspace(c, owner=o),
            lambda lc, c, o: lc.delete_workspace(c, owner=o),
            lambda lc, c, o: lc.ensure_running(c, owner=o),
            lambda lc, c, o: lc.status(c, owner=o),
            lambda lc, c, o: lc.touch(c, owner=o),
            lambda lc, c, o: lc.state(c, owner=o),
        ],
        ids=["register", "create", "start", "stop", "delete", "ensure_running", "status", "touch", "state"],
    )
    @pytest.mark.anyio
    async def test_every_public_method_refuses_a_bad_id(
        self, call: Callable[[wl.Lifecycle, Any, Any], Awaitable[object]], bad: str
    ) -> None:
        """As the chat id and as the owner: ``ValueError`` in the one sentence, nothing stored."""
        async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lc:
            for chat, owner, kind in ((bad, "alice", "chat_id"), ("c1", bad, "owner")):
                with pytest.raises(ValueError, match=rf"^{kind} {re.escape(SENTENCE)}, not "):
                    await call(lc, chat, owner)
            assert await store.list_chats() == []

    @pytest.mark.anyio
    async def test_watch_refuses_a_bad_id(self) -> None:
        async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lc:
            with pytest.raises(ValueError, match=rf"^chat_id {re.escape(SENTENCE)}"):
                lc.watch("a\nb")

    @pytest.mark.anyio
    async def test_create_on_another_owners_chat_answers_as_an_unknown_chat(self) -> None:
        """Existence is not leaked: bob's create on alice's chat is answered exactly as his
        create on a chat nobody registered."""
        async with wl.open_store("memory://") as store, wl.Lifecycle(store) as lc:
            await lc.register_chat("c1", owner="alice")
            theirs = await lc.create_workspace("c1", owner="bob", name="dev")
            unknown = await lc.create_workspace("nobody", owner="bob", name="dev")
            assert theirs.is_error and theirs == unknown


class TestTheCommandLine:
    @pytest.mark.parametrize(
        ("argv", "kind"),
        [
            (["start", "a\nb", "--owner", "o"], "chat_id"),
            (["stop", "c", "--owner", "x" * 100_000], "owner"),
            (["create", "c", "--owner", "\x07"], "owner"),
            (["watch", "--chat", "a\tb"], "chat_id"),
            (["mcp", "--owner", "a\nb"], "owner"),
            (["mcp", "--owner", "o", "--chat", ""], "chat_id"),
        ],
    )
    def test_arguments_refuse_a_bad_id_in_the_same_sentence(
        self, argv: list[str], kind: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A usage error (exit 2), one line, the core's sentence with the value escaped and cut."""
        assert cli.main([*argv, "--db", "memory://"]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert f"{kind} {SENTENCE}, not " in line and len(line) < 400

    def test_create_keeps_a_valid_name_or_refuses_with_coders_rule(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``--name "bad name!!"`` is refused (exit 2) saying the rule, and nothing is created;
        ``--name dev-2`` is the name the workspace gets."""
        store = wl.MemoryStore()
        monkeypatch.setattr(cli, "open_store", lambda url: store)
        argv = ["create", "c1", "--owner", "alice", "--db", "memory://", "--no-wait", "--json"]
        assert cli.main([*argv, "--name", "bad name!!"]) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert "--name must be 1 to 32 letters, digits and single hyphens between them (Coder's rule)" in line
        assert "not 'bad name!!'" in line
        assert cli.main([*argv, "--name", "dev-2"]) == 0
        assert '"workspace_name": "alice/dev-2"' in capsys.readouterr().out

    def test_help_says_the_name_rule(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["create", "--help"]) == 0
        assert "Coder's rule" in capsys.readouterr().out


def test_open_store_names_the_missing_extra() -> None:
    """Without psycopg, ``open_store("postgresql://...")`` says which extra to install (in a
    fresh interpreter, where psycopg was never imported)."""
    code = (
        "import importlib.abc, sys\n"
        "class No(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.partition('.')[0] in ('psycopg', 'psycopg_pool'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, No())\n"
        "import workspace_lifecycle as wl\n"
        "try:\n"
        "    wl.open_store('postgresql://me@db.example/app')\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc.name, '|', exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "psycopg | the PostgreSQL store needs psycopg, which is not installed:"
        " pip install 'workspace-lifecycle[postgres]'"
    )


@pytest.mark.postgres
class TestReadOnlyCommandsCreateNoSchema:
    @pytest.mark.parametrize(
        "argv",
        [
            ["status"],
            ["status", "--json"],
            ["watch"],
            ["start", "c1", "--owner", "a"],
            ["delete", "c1", "--owner", "a"],
        ],
    )
    def test_a_mistyped_schema_is_refused_and_not_created(
        self, pg_url: str, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        import psycopg

        schema = f"wl_typo_{uuid.uuid4().hex[:10]}"
        url = f"{pg_url}?schema={schema}"
        assert cli.main([*argv, "--db", url]) == 1
        line = _one_line_error(capsys.readouterr().err)
        assert line.startswith(f"workspace-lifecycle: no workspace-lifecycle schema at {url}; ")
        assert "'workspace-lifecycle create CHAT --owner OWNER' creates it" in line
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None

    def test_an_existing_schema_is_read(self, pg_schema_url: str, capsys: pytest.CaptureFixture[str]) -> None:
        """After ``create`` made it, ``status`` reads it (opened without migrating)."""
        argv = ["create", "c1", "--owner", "alice", "--name", "dev", "--no-wait", "--db", pg_schema_url]
        assert cli.main(argv) == 0
        capsys.readouterr()
        assert cli.main(["status", "--json", "--db", pg_schema_url]) == 0
        assert '"c1"' in capsys.readouterr().out

    @pytest.mark.anyio
    async def test_the_python_api_opens_without_migrating(self, pg_url: str) -> None:
        schema = f"wl_typo_{uuid.uuid4().hex[:10]}"
        store = wl.open_store(f"{pg_url}?schema={schema}", migrate=False)
        with pytest.raises(wl.errors.SchemaMissingError, match=r"^no workspace-lifecycle schema at "):
            async with store:
                pass
