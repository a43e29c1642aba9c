"""Every Python example in docs/ runs: each ```python block is a program, run as a user runs it.

A block that is a fragment (it needs a server, or serves until its client leaves) says so on the
line before it, ``<!-- docs-test: fragment (why) -->``; those are few, and listed here by count.
Each block runs in a fresh interpreter (``-W error``) in a temporary directory, with every
socket connect refused: the examples use the memory store or a SQLite file there, and the
frameworks' offline test models.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FRAGMENT = re.compile(r"<!-- docs-test: fragment \(.+\) -->")
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)

#: Runs the example with the network closed (a connect raises), as __main__.
OFFLINE = """
import runpy, socket, sys
def refuse(*args, **kwargs):
    raise OSError("docs examples must not use the network")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def blocks() -> list[tuple[str, str, bool]]:
    """(id, code, is_fragment) for each ```python block of docs/*.md."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
            found.append((f"{page.name}:{line}", match.group(1), bool(FRAGMENT.fullmatch(before.strip()))))
    return found


EXAMPLES = [pytest.param(code, id=name) for name, code, fragment in blocks() if not fragment]


def test_fragments_are_few_and_marked() -> None:
    """Only the examples that cannot run here are fragments, and each marker precedes a block."""
    fragments = [name for name, _, fragment in blocks() if fragment]
    assert len(fragments) <= 3, fragments
    markers = sum(len(FRAGMENT.findall(p.read_text(encoding="utf-8"))) for p in DOCS.glob("*.md"))
    assert markers == len(fragments), "a fragment marker is not right before a ```python block"
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code: str, tmp_path: Path) -> None:
    """The example runs to the end, offline, without a warning or an error."""
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", OFFLINE, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "OPENAI_AGENTS_DISABLE_TRACING": "1", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
