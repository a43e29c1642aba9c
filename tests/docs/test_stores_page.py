"""docs/stores.md is true about the SQLite store (issue 27, point 7): it runs on the stdlib
``sqlite3``, not aiosqlite, and the page tells a reader who read the design (which named
aiosqlite) that it was replaced, when, and why, with the figures."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
PAGE = " ".join((ROOT / "docs" / "stores.md").read_text(encoding="utf-8").split())


def test_the_sqlite_store_is_said_to_run_on_the_stdlib() -> None:
    assert "SQLite (the stdlib `sqlite3`)" in PAGE
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [d for group in project["optional-dependencies"].values() for d in group]
    everything = [*project["dependencies"], *extras]
    assert not [d for d in everything if d.lower().startswith("aiosqlite")]


def test_why_not_aiosqlite_says_the_design_named_it() -> None:
    why = PAGE.split("**Why not aiosqlite.**", 1)[1].split("###", 1)[0]
    assert "design named aiosqlite" in why and "0.2 replaced it" in why, why
    assert re.search(r"transactions/s", why) and "µs" in why, why  # the figures that decided it
