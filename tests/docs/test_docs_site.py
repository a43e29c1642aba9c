"""The docs site as a reader sees it: built ``--strict``, the state-machine page draws the
diagram as an image (no Mermaid text left for a script from a CDN), the API reference shows
constructors with their options and defaults and an entry for every public name, and no page
shows a Sphinx role raw.

The checks are ``docs/check_site.py``'s, on the built HTML; that script also looks at the pages
in headless Chromium and saves screenshots, when Chromium is installed (.ci/run does, and fails
without Chromium).
"""

from __future__ import annotations

import fcntl
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

import workspace_lifecycle as wl

pytest.importorskip("mkdocs", reason="the docs extra builds the site: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings", reason="the docs extra builds the site: pip install -e '.[docs]'")

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "mkdocs.yml").is_file())


def _check_site() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "docs" / "check_site.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_site = _check_site()


#: The site is built once per run, however the tests on it are spread: each worker takes a lock
#: on a directory all of them share, and the first builds there (~6 s of CPU a build, on 2
#: cores). ``--dist loadgroup`` used to keep them on one worker, but pytest 9.2's node ids no
#: longer carry xdist's group suffix (pytest-xdist#1386): the three were built three times.
#: It lives for the session, not the module: the suite runs slow tests first, which parts this
#: module's tests, and a module fixture was built again for the second part.
on_the_built_site = pytest.mark.xdist_group("docs-site")


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    run = tmp_path_factory.getbasetemp()  # without xdist, this process's; else a worker's
    shared = (run if worker_id == "master" else run.parent) / "docs-site"  # the run's, every worker's
    with open(shared.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (shared / ".built").exists():
            check_site.build(shared)  # raises with mkdocs' output on any warning, leaving no marker
            (shared / ".built").touch()
    return shared


def _page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


@pytest.mark.slow
@on_the_built_site
def test_the_diagram_is_an_image(site: Path) -> None:
    assert check_site.check_state_machine(_page(site, "state-machine"), site) == []
    assert (site / "workspace.svg").read_bytes() == (ROOT / "diagrams" / "workspace.svg").read_bytes()


@pytest.mark.slow
@on_the_built_site
def test_the_reference_shows_signatures(site: Path) -> None:
    page = _page(site, "reference")
    assert check_site.check_reference(page, list(wl.__all__)) == []
    lifecycle = check_site.signature(page, "Lifecycle")
    assert lifecycle is not None and lifecycle.startswith("Lifecycle(")


@pytest.mark.slow
@on_the_built_site
def test_no_page_shows_a_raw_role(site: Path) -> None:
    problems = []
    for page in sorted(site.rglob("index.html")):
        name = page.parent.relative_to(site).as_posix() or "home"
        problems += check_site.check_roles(name, page.read_text(encoding="utf-8"))
    assert problems == []


def test_the_checks_see_what_they_look_for() -> None:
    """A page with the faults the checks are for is refused, so a passing check means something."""
    raw = "<p>raises <code>:class:</code><code>~workspace_lifecycle.errors.StoreError</code></p>"
    assert check_site.check_roles("page", raw) == ["page: Sphinx roles shown raw: :class:"]
    mermaid = '<pre class="mermaid"><code>stateDiagram-v2\n  a --> b</code></pre>'
    problems = check_site.check_state_machine(mermaid, ROOT)
    assert any("not an <img>" in p for p in problems) and any("Mermaid" in p for p in problems)
    bare = '<div class="doc doc-object doc-class"><h3 id="workspace_lifecycle.Lifecycle">Lifecycle</h3>'
    assert "reference: no signature for Lifecycle" in check_site.check_reference(bare, ["Lifecycle"])


def test_the_browser_check_sees_a_diagram_without_its_states() -> None:
    """What Chromium parsed from the diagram must be an SVG naming all six states."""
    drawn = (ROOT / "diagrams" / "workspace.svg").read_text(encoding="utf-8")
    assert check_site.check_drawn_svg(drawn) == []
    assert check_site.check_drawn_svg("<html><body>404</body></html>") == [
        "state-machine: Chromium did not parse workspace.svg as an <svg>"
    ]
    without_failed = drawn.replace(">failed</text>", ">?</text>")
    assert check_site.check_drawn_svg(without_failed) == [
        "state-machine: the diagram lacks the states failed"
    ]
