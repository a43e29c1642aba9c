"""``workspace-lifecycle completion bash|zsh`` prints argcomplete's script, and the installed
command answers a shell's completion request."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workspace_lifecycle import cli


@pytest.mark.parametrize(("shell", "first"), [("bash", "#"), ("zsh", "#compdef workspace-lifecycle")])
def test_the_script(shell: str, first: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert script.startswith(first) and "workspace-lifecycle" in script


def test_an_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["completion", "fish"]) == 2
    assert "invalid choice: 'fish'" in capsys.readouterr().err


def test_without_argcomplete_it_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "argcomplete.shell_integration", None)
    assert cli.main(["completion", "bash"]) == 1
    assert "pip install 'workspace-lifecycle[completion]'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("line", "expected"),
    [("workspace-lifecycle li", {"list"}), ("workspace-lifecycle touch c1 --o", {"--owner"})],
)
def test_the_command_completes(line: str, expected: set[str], tmp_path: Path) -> None:
    """As bash asks through the script: the installed command writes the completions."""
    command = shutil.which("workspace-lifecycle", path=os.path.dirname(sys.executable))
    assert command is not None
    out = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "COMP_TYPE": "9",
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    proc = subprocess.run([command], env=env, capture_output=True, text=True, timeout=60, pass_fds=())
    assert proc.returncode == 0, proc.stderr
    assert {word.strip() for word in out.read_text().split("\n") if word.strip()} == expected
