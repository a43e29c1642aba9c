"""docs/cli.md's quick try works as written: its commands, in the page's order, in an empty
directory (so on a fresh ``workspace-lifecycle.db``, the default store), each one a real process.

A command the page says runs "until Ctrl-C" (``provision``, ``watch``) is started in the
background, once its banner is up the page goes on, and it is stopped with Ctrl-C at the end;
every other command must exit 0 without a traceback. ``watch`` must have seen the chat's builds,
and ``touch`` prints what the page says it prints.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
PAGE = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
QUICK_TRY = PAGE.split("\n## Reference", 1)[0]
#: The commands that run until Ctrl-C; the page says so before each.
LONG_RUNNING = {"provision", "watch"}
#: What the page says ``touch`` prints for the quick try's chat (its idle deadline's distance).
TOUCH_PRINTS = re.compile(r"`touch` prints `idle stop at <when> \((in \w+)\)`")


def _program() -> list[str]:
    """The console script next to this interpreter, as a user types it; else ``python -m``."""
    script = Path(sys.executable).parent / "workspace-lifecycle"
    found = str(script) if script.exists() else shutil.which("workspace-lifecycle")
    return [found] if found else [sys.executable, "-m", "workspace_lifecycle"]


def _commands() -> list[list[str]]:
    """Each command of the quick try's ```sh blocks, in order, as argv words (comments dropped)."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)\n```", QUICK_TRY, re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                assert words[0] == "workspace-lifecycle", line
                commands.append(words[1:])
    return commands


def test_the_quick_try_creates_before_it_starts() -> None:
    """Every request names a chat that an earlier ``create`` made; the long runners say so."""
    created: set[str] = set()
    for words in _commands():
        if words[0] == "create":
            created.add(words[1])
        elif words[0] in ("start", "stop", "delete"):
            assert words[1] in created, f"{shlex.join(words)} before any create of {words[1]}"
    assert created
    assert {words[0] for words in _commands()} >= LONG_RUNNING
    assert QUICK_TRY.count("until Ctrl-C") >= len(LONG_RUNNING)


@pytest.mark.slow
def test_the_quick_try_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WORKSPACE_LIFECYCLE_DB", None)
    background: dict[str, subprocess.Popen[str]] = {}
    printed: dict[str, str] = {}
    try:
        for words in _commands():
            line = shlex.join(["workspace-lifecycle", *words])
            if words[0] in LONG_RUNNING:
                process = subprocess.Popen(
                    [*_program(), *words],
                    cwd=tmp_path,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                )
                background[words[0]] = process
                assert process.stderr is not None
                assert "Ctrl-C" in process.stderr.readline(), line  # its banner: it is up
                continue
            done = subprocess.run(
                [*_program(), *words], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, (line, done.stderr)
            assert "Traceback" not in done.stderr, (line, done.stderr)
            printed[words[0]] = done.stdout
    finally:
        outputs = {}
        for name, process in background.items():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                outputs[name] = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                outputs[name] = process.communicate()
    for name, process in background.items():
        _, err = outputs[name]
        assert process.returncode == 0 and "Traceback" not in err, (name, err)
    watched = outputs["watch"][0]
    assert re.search(r"chat-1 +no_workspace -> building", watched), watched
    assert re.search(r"chat-1 +stopped -> building", watched), watched
    said = TOUCH_PRINTS.search(" ".join(PAGE.split()))
    assert said is not None, "docs/cli.md no longer says what touch prints for chat-1"
    assert re.fullmatch(rf"idle stop at .* \({said.group(1)}\)\n", printed["touch"]), printed["touch"]
