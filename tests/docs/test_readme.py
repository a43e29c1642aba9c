"""README stays true: its diagram is the machine's, and CI runs its test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

from workspace_lifecycle.machine import WorkspaceMachine

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_diagram_is_the_machine() -> None:
    """The Mermaid block in README is exactly what python-statemachine renders today."""
    block = re.search(r"```mermaid\n(.*?)```", README, re.S)
    assert block is not None, "README has no mermaid block"
    assert block.group(1).strip() == f"{WorkspaceMachine:mermaid}".strip()


def test_ci_runs_the_readme_test_command() -> None:
    """The test command README gives is the one .ci/run calls."""
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)
    tests = [c for c in commands if "pytest" in c]
    assert len(tests) == 1
    assert tests[0].strip() in (ROOT / ".ci" / "run").read_text()
