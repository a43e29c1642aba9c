"""README works as the package's long description (PyPI shows it away from the repository): every
link and image is absolute, those into the repository name files that exist, and the diagram is
an image as well as Mermaid text (which PyPI does not draw)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
HOME = PROJECT["urls"]["Homepage"].rstrip("/")  # https://github.com/OWNER/NAME
BLOB = f"{HOME}/blob/main/"
RAW = HOME.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"

INLINE = re.compile(r"(!?)\[[^\[\]]*\]\(([^)\s]+)\)")
#: ``[text][label]`` and ``![alt][label]`` (the text holds no bracket: nested links match inside).
REFERENCE_USE = re.compile(r"(!?)\[[^\[\]]*\]\[([^\]]+)\]")
#: Every ``][label]``, nested or not: each label used must be defined.
LABEL = re.compile(r"\]\[([^\]]+)\]")
DEFINITION = re.compile(r"^\[([^\]]+)\]: (\S+)$", re.M)


def _prose() -> str:
    """README without its fenced code blocks (whose brackets are code, not links)."""
    return re.sub(r"^```.*?^```", "", README, flags=re.S | re.M)


def test_readme_is_the_long_description() -> None:
    assert PROJECT["readme"] == "README.md"


def test_every_link_is_absolute_and_resolves() -> None:
    prose = _prose()
    definitions = dict(DEFINITION.findall(prose))
    for label in LABEL.findall(prose):
        assert label in definitions, f"[{label}] has no definition"
    images = {label for bang, label in REFERENCE_USE.findall(prose) if bang}
    links = [(bool(bang), target) for bang, target in INLINE.findall(prose)]
    links += [(label in images, target) for label, target in definitions.items()]
    assert links
    for image, target in links:
        assert re.match(r"https?://", target), f"relative link {target!r}: it breaks on PyPI"
        if image:
            # An image must be the file itself, not GitHub's page about it.
            assert not target.startswith(BLOB), target
        for base in (BLOB, RAW):
            if target.startswith(base):
                path = target.removeprefix(base).split("#", 1)[0]
                assert (ROOT / path).is_file(), f"{target} names no file of the repository"


def test_the_diagram_is_an_image_too() -> None:
    images = [t for bang, t in INLINE.findall(_prose()) if bang]
    images += [
        dict(DEFINITION.findall(README))[label] for bang, label in REFERENCE_USE.findall(_prose()) if bang
    ]
    assert f"{RAW}diagrams/workspace.svg" in images
    assert "```mermaid" in README
