"""README's "Command line" section stays true: its two-terminal example runs as written on a
fresh database (real processes), and every command it names has the --help it describes."""

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

from workspace_lifecycle import cli

ROOT = Path(__file__).resolve().parents[2]
SECTION = (
    (ROOT / "README.md").read_text(encoding="utf-8").split("## Command line\n", 1)[1].split("\n## ", 1)[0]
)
BLOCKS = re.findall(r"```sh\n(.*?)\n```", SECTION, re.S)


def _program() -> list[str]:
    """The console script next to this interpreter, as a user types it; else ``python -m``."""
    script = Path(sys.executable).parent / "workspace-lifecycle"
    found = str(script) if script.exists() else shutil.which("workspace-lifecycle")
    return [found] if found else [sys.executable, "-m", "workspace_lifecycle"]


def _argv(line: str) -> list[str]:
    words = shlex.split(line)
    assert words[0] == "workspace-lifecycle", line
    return [*_program(), *words[1:]]


def test_every_command_is_in_the_section(capsys: pytest.CaptureFixture[str]) -> None:
    """Each command of the parser is named in README, and README names no other."""
    parser = cli.build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    named = set(re.findall(r"^- `(\w+)", SECTION, re.M))
    named |= set(re.findall(r"`(\w+) CHAT --owner O", SECTION))
    assert named == commands


def test_two_terminals_as_written(tmp_path: Path) -> None:
    """The two-terminal example, verbatim, on a fresh database in an empty directory."""
    first, second = BLOCKS
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WORKSPACE_LIFECYCLE_DB", None)
    provisioner = subprocess.Popen(
        _argv(first.strip()),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert provisioner.stderr is not None
        assert "Ctrl-C" in provisioner.stderr.readline()  # up: the user sees its banner first
        outputs = []
        for line in second.strip().splitlines():
            done = subprocess.run(
                _argv(line), cwd=tmp_path, capture_output=True, text=True, env=env, timeout=20
            )
            assert done.returncode == 0, (line, done.stderr)
            assert "Traceback" not in done.stderr
            outputs.append(done.stdout.strip())
    finally:
        provisioner.send_signal(signal.SIGINT)
        _, err = provisioner.communicate(timeout=10)
    assert provisioner.returncode == 0 and "Traceback" not in err
    assert (tmp_path / "workspace-lifecycle.db").exists()
    created, stopped, started = outputs
    assert created.startswith("chat-1: created") and "workspace_name=alice/" in created
    assert stopped.startswith("chat-1: stopped")
    assert started.startswith("chat-1: started") and "build_id=" in started


def test_every_flag_named_is_in_some_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Each --flag README names is documented by the --help of a command it is listed with."""
    helps = {}
    for command in cli.build_parser()._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
        assert cli.main([command, "--help"]) == 0
        helps[command] = capsys.readouterr().out
    for item in re.findall(r"^- (.*?)(?=^- |\n\n)", SECTION, re.M | re.S):
        commands = re.findall(r"`(\w+)", item)
        for flag in set(re.findall(r"(--[a-z][a-z-]*)", item)):
            assert any(flag in helps[c] for c in commands if c in helps), (flag, commands)
