"""``diagram``: the state machine's diagram, as mermaid, dot or svg."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..diagram import FORMATS, render
from ._shared import Commands, command


def add_parser(commands: Commands) -> None:
    diagram = command(
        commands,
        "diagram",
        "print the state machine's diagram",
        "Render the workspace state machine with python-statemachine's own renderers. mermaid "
        "needs nothing more; dot needs pydot (pip install 'workspace-lifecycle[diagrams]'); svg "
        "also needs Graphviz's 'dot' program.",
        handle,
    )
    diagram.add_argument("--format", choices=FORMATS, default="mermaid", help="output format (mermaid)")
    diagram.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")


def handle(args: argparse.Namespace) -> int:
    output = render(args.format)
    data = output.encode("utf-8") if isinstance(output, str) else output
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0
