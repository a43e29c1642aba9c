"""docs/mcp.md works as written: each configuration it shows, run through the official MCP SDK's
stdio client, answers the tool calls of its table as the table says.

The page is read, not restated: each ``## `` section's ```json configuration is started as the
client would start it (the console script, in a directory of its own, the ``/abs/path.db`` of
the page replaced by a temporary file), the ``workspace-lifecycle`` lines of its ```sh blocks
run in order (``provision`` in the background, until the end of the page), and each row of its
``| tool | arguments | answer |`` table is one call whose answer must hold the JSON pairs, or be
the error sentence, that the row shows.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

import workspace_lifecycle as wl

pytestmark = pytest.mark.anyio

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
PAGE = (ROOT / "docs" / "mcp.md").read_text(encoding="utf-8")
PLACEHOLDER = "/abs/path.db"
ROW = re.compile(r"^\| `(\w+)` \| `(\{.*?\})` \| (.+) \|$", re.M)


def _sections() -> list[tuple[str, str]]:
    """(title, text) of each ``## `` section of the page that shows a configuration."""
    parts = re.split(r"^## (.+)$", PAGE, flags=re.M)
    return [(title, text) for title, text in zip(parts[1::2], parts[2::2], strict=True) if "```json" in text]


def _program() -> list[str]:
    """The console script next to this interpreter, as the page's ``command`` names it."""
    script = Path(sys.executable).parent / "workspace-lifecycle"
    found = str(script) if script.exists() else shutil.which("workspace-lifecycle")
    return [found] if found else [sys.executable, "-m", "workspace_lifecycle"]


def _text(result: types.CallToolResult) -> str:
    assert len(result.content) == 1
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


def _expected(answer: str) -> tuple[bool, str | dict[str, Any]]:
    """(is_error, the error sentence or the JSON pairs) that a table row's answer cell shows."""
    if answer.startswith("error: "):
        sentence = re.fullmatch(r"error: `(.+)`", answer)
        assert sentence is not None, answer
        return True, sentence.group(1)
    pairs = re.findall(r"`(\"\w+\": [^`]+)`", answer)
    assert pairs, answer
    return False, json.loads("{" + ", ".join(pairs) + "}")


class Page:
    """The page's configurations and commands, run against one temporary database."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "path.db"
        self.cwd = tmp_path / "terminal"
        self.client_dir = tmp_path / "client"  # the client starts the server somewhere else
        self.cwd.mkdir()
        self.client_dir.mkdir()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.env.pop("WORKSPACE_LIFECYCLE_DB", None)
        self.background: list[subprocess.Popen[str]] = []

    def argv(self, words: list[str]) -> list[str]:
        assert words[0] == "workspace-lifecycle", words
        return [*_program(), *(w.replace(PLACEHOLDER, str(self.db)) for w in words[1:])]

    def run_shell_lines(self, section: str) -> None:
        for block in re.findall(r"```sh\n(.*?)\n```", section, re.S):
            for line in block.splitlines():
                words = shlex.split(line, comments=True)
                if not words or words[0] != "workspace-lifecycle":
                    continue  # pip install ...
                if words[1] == "provision":
                    self._start(words)
                    continue
                done = subprocess.run(
                    self.argv(words), cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=60
                )
                assert done.returncode == 0 and "Traceback" not in done.stderr, (line, done.stderr)

    def _start(self, words: list[str]) -> None:
        process = subprocess.Popen(
            self.argv(words),
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.background.append(process)
        assert process.stderr is not None
        assert "Ctrl-C" in process.stderr.readline(), words  # up: it printed its banner

    def server(self, section: str) -> StdioServerParameters:
        block = re.search(r"```json\n(.*?)\n```", section, re.S)
        assert block is not None
        (entry,) = json.loads(block.group(1))["mcpServers"].values()
        program, *first = self.argv([entry["command"], *entry["args"]])
        env = {key: value for key, value in self.env.items() if key in ("PATH", "HOME", "PYTHONPATH")}
        return StdioServerParameters(
            command=program, args=[*first], cwd=str(self.client_dir), env=env or None
        )

    def stop(self) -> None:
        for process in self.background:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                _, err = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate()
            assert "Traceback" not in err, err


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    running = Page(tmp_path)
    try:
        yield running
    finally:
        running.stop()


def test_the_page_shows_both_configurations() -> None:
    """One configuration bound to a chat, one serving many, each with its table of calls."""
    sections = _sections()
    assert len(sections) == 2, [title for title, _ in sections]
    bound, many = (text for _, text in sections)
    assert '"--chat"' in bound and '"--chat"' not in many
    for _, text in sections:
        assert ROW.findall(text), "a configuration without a table of calls"


@pytest.mark.slow
async def test_configurations_as_written(page: Page, tmp_path: Path) -> None:
    """Every configuration of the page, its commands and its calls, in the order the page shows."""
    log = tmp_path / "server.log"
    for title, section in _sections():
        page.run_shell_lines(section)
        served_many = '"--chat"' not in section
        with log.open("a") as errlog, anyio.fail_after(60):
            async with (
                stdio_client(page.server(section), errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                listed = (await session.list_tools()).tools
                schemas = [
                    {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                    for t in listed
                ]
                assert schemas == wl.tool_definitions(chat_id_argument=served_many, status=True), title
                for tool, arguments, answer in ROW.findall(section):
                    is_error, expected = _expected(answer)
                    result = await session.call_tool(tool, json.loads(arguments))
                    text = _text(result)
                    call = f"{title}: {tool} {arguments} -> {text}\nserver log:\n{log.read_text()}"
                    assert result.is_error is is_error, call
                    if isinstance(expected, str):
                        assert text == expected, call
                    else:
                        data = json.loads(text)
                        assert {key: data.get(key) for key in expected} == expected, call
