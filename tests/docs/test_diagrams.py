"""The committed diagrams are the machine's, and the Mermaid text shows the whole table.

Regenerate after changing the machine::

    workspace-lifecycle diagram --format mermaid -o diagrams/workspace.mmd
    workspace-lifecycle diagram --format svg -o diagrams/workspace.svg
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from workspace_lifecycle.diagram import render
from workspace_lifecycle.machine import WorkspaceMachine
from workspace_lifecycle.values import WorkspaceState

DIAGRAMS = Path(__file__).resolve().parents[2] / "diagrams"
REGENERATE = "stale; regenerate with: workspace-lifecycle diagram --format {fmt} -o {path}"


def _mermaid() -> str:
    text = render("mermaid")
    assert isinstance(text, str)
    return text


class TestFreshness:
    def test_mermaid_file_is_the_render(self) -> None:
        """diagrams/workspace.mmd is exactly what the renderer gives for the machine today."""
        path = DIAGRAMS / "workspace.mmd"
        assert path.read_text(encoding="utf-8") == render("mermaid"), REGENERATE.format(
            fmt="mermaid", path=path
        )

    @pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
    def test_svg_file_is_the_render(self) -> None:
        """diagrams/workspace.svg is exactly what Graphviz renders for the machine today."""
        path = DIAGRAMS / "workspace.svg"
        assert path.read_bytes() == render("svg"), REGENERATE.format(fmt="svg", path=path)

    @pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
    def test_svg_is_deterministic(self) -> None:
        """Two renders are byte-equal (the renderer's id()-based node names are normalised)."""
        assert render("svg") == render("svg")

    def test_dot_is_deterministic(self) -> None:
        """The DOT text names no Python object ids, so it is the same in every process."""
        first = render("dot")
        assert isinstance(first, str) and first.startswith("digraph WorkspaceMachine {")
        assert first == render("dot")
        assert "__initial_0" in first


class TestMermaid:
    def test_every_state_appears(self) -> None:
        """Each of the six states is a node of the diagram, and no_workspace is the initial one."""
        text = _mermaid()
        assert text.startswith("stateDiagram-v2\n")
        for state in WorkspaceState:
            assert f" {state.value} " in text or f" {state.value}\n" in text, state
        assert "[*] --> no_workspace\n" in text

    def test_every_transition_appears(self) -> None:
        """Every transition that can change the state is an edge labelled with its event.

        Internal transitions (``to.itself(internal=True)``: the event is accepted and the state
        stays) are not drawn by python-statemachine's renderers, by design; the test checks that
        the table really has them only as self-loops, so no state change is missing a line.
        """
        lines = _mermaid().splitlines()
        drawn = 0
        for state in WorkspaceMachine.states:
            for transition in state.transitions:
                for event in transition.events:
                    edge = f"    {transition.source.id} --> {transition.target.id} : {event.name}"
                    if transition.internal:
                        assert transition.source is transition.target
                        continue
                    matches = [line for line in lines if line == edge or line.startswith(edge + " [")]
                    assert matches, f"missing edge: {edge.strip()}"
                    drawn += 1
        assert drawn == sum(" --> " in line and not line.lstrip().startswith("[*]") for line in lines)
