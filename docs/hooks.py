"""mkdocs hooks for this site (not a page: mkdocs.yml excludes it from the docs).

* ``<!-- cli-help -->`` in a page becomes the CLI's own ``--help`` for each command, rendered
  from the parser at build time, so the reference cannot go stale.
* Doctests in docstrings (``>>>`` runs) render as Python console blocks in the API reference,
  instead of as prose whose brackets Markdown would read as links.
* Images next to a file that a page includes from outside ``docs/`` (``bench/wakeup.png`` beside
  ``bench/RESULTS.md``) are added to the site, so the included page's links resolve; so is the
  committed ``diagrams/workspace.svg`` that the state-machine page shows (one copy, where the
  repository keeps it and its freshness test checks it).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

MARKER = "<!-- cli-help -->"
ROOT = Path(__file__).resolve().parent.parent
#: Files outside docs/ that included pages link to, by the name the link uses.
EXTRA_FILES = {
    "wakeup.png": ROOT / "bench" / "wakeup.png",
    "replicas.png": ROOT / "bench" / "replicas.png",
    "workspace.svg": ROOT / "diagrams" / "workspace.svg",
}


def _help(parser: argparse.ArgumentParser) -> str:
    return parser.format_help().rstrip()


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from workspace_lifecycle.cli import PROG, build_parser

    parser = build_parser()
    parts = [f"```text\n$ {PROG} --help\n{_help(parser)}\n```"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts.append(f"### `{name}`\n\n```text\n$ {PROG} {name} --help\n{_help(sub)}\n```")
    return markdown.replace(MARKER, "\n\n".join(parts))


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    for uri, path in EXTRA_FILES.items():
        if path.exists():  # a plot appears once its benchmark has run
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


class _Doctests(Preprocessor):
    """Wrap each run of doctest lines (``>>>``, ``...`` and their output) in a pycon fence."""

    PROMPT = re.compile(r"^(\s*)>>> ")

    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fenced = False
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.lstrip().startswith("```"):
                fenced = not fenced
            match = None if fenced else self.PROMPT.match(line)
            if match is None:
                out.append(line)
                i += 1
                continue
            indent = match.group(1)
            out.append(f"{indent}```pycon")
            while i < len(lines) and lines[i].strip() and lines[i].startswith(indent):
                out.append(lines[i])
                i += 1
            out.append(f"{indent}```")
        return out


class _DoctestExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_Doctests(md), "doctests", 40)


@event_priority(100)  # before mkdocstrings reads the extensions in its own on_config
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    config.markdown_extensions.append(_DoctestExtension())  # type: ignore[arg-type]
    return config
