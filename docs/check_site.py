"""Look at the built docs site as a reader does (code, not a page: mkdocs.yml excludes it).

    python docs/check_site.py [--out DIR] [--site BUILT] [--no-browser | --require-browser]

Builds the site with ``mkdocs build --strict`` into a temporary directory and checks what a
reader sees on three pages:

* ``state-machine/``: the diagram is an image, the committed ``diagrams/workspace.svg`` copied
  into the site, and no Mermaid text is left to render (the site loads no script from a CDN);
* ``reference/``: constructors are shown with their options and defaults, the core classes come
  first, every public name has its entry, and no "Bases:" line;
* every page: no Sphinx role (``:class:`...```) shown raw.

The HTML checks need nothing but the build; ``tests/docs/test_docs_site.py`` runs them in the suite.
With Chromium installed (Debian: ``apt-get install -y chromium``; ``.ci/run`` installs it and passes
``--require-browser``, the default under ``CI=true``) the script also loads the three
pages in headless Chromium, offline (``--disable-background-networking``), checks the DOM after
the pages' scripts ran (``--dump-dom``) the same way, checks the diagram Chromium parsed is an
``<svg>`` naming all six states, and saves a screenshot of each page into DIR
(default: ``site-screenshots/``) to look at.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The pages looked at in the browser, and their height in the screenshot.
PAGES = {"state-machine": 2600, "reference": 1800, "mcp": 1800}
#: Constructors a reader looks up, and options their signature must show with a default.
SIGNATURES = {
    "Lifecycle": ["store: Store", "build_timeout: float = 600.0", "agent_timeout: float = 600.0", "policy:"],
    "SimulatedProvisioner": ["build_seconds: float = 0.0", "agent_seconds: float = 0.0", "fail:", "agent:"],
    "ProcessProvisioner": ["root:", "command:", "ready_timeout: float = 30.0", "stop_grace:"],
    "open_store": ["url: str"],
    "Policy": ["idle_stop_after: float | None = None", "delete_after_stopped: float | None = None"],
    "VirtualClock": ["start: float ="],
    "ToolResult": ["is_error: bool", "text: str"],
}
RAW_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|exc|mod|data|obj|const):")


def build(site: Path) -> None:
    """``mkdocs build --strict`` into ``site``; raises with mkdocs' output if it fails."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    command = [str(mkdocs)] if mkdocs.exists() else [sys.executable, "-m", "mkdocs"]
    done = subprocess.run(
        [*command, "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}")


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def signature(page: str, name: str) -> str | None:
    """The signature shown for ``workspace_lifecycle.<name>`` on the reference page, as text."""
    start = page.find(f'id="workspace_lifecycle.{name}"')
    if start < 0:
        return None
    match = re.compile(r'class="doc-signature[^"]*".*?</pre>', re.S).search(page, start)
    if match is None or page.find('class="doc doc-object ', start + 1, match.start()) >= 0:
        return None  # no signature before the next object's
    return _text(match.group(0).split(">", 1)[1])


def check_state_machine(page: str, site: Path) -> list[str]:
    problems = []
    images = re.findall(r'<img [^>]*src="([^"]*workspace\.svg)"[^>]*>', page)
    if not images:
        problems.append("state-machine: the diagram is not an <img> of workspace.svg")
    for src in images:
        drawn = (site / "state-machine" / src).resolve()
        if not drawn.is_file() or "<svg" not in drawn.read_text(encoding="utf-8"):
            problems.append(f"state-machine: {src} is not an SVG file of the site")
        elif drawn.read_bytes() != (ROOT / "diagrams" / "workspace.svg").read_bytes():
            problems.append(f"state-machine: {src} is not diagrams/workspace.svg")
    if re.search(r'class="[^"]*\bmermaid\b', page) or re.search(r"<script[^>]*mermaid", page):
        problems.append("state-machine: a Mermaid block is left for a script to draw")
    outside = re.sub(r"<details.*?</details>", "", page, flags=re.S)
    if "stateDiagram-v2" in outside:
        problems.append("state-machine: Mermaid text shown outside the collapsed block")
    return problems


def check_reference(page: str, public: list[str]) -> list[str]:
    problems = []
    for name, parts in SIGNATURES.items():
        shown = signature(page, name)
        if shown is None:
            problems.append(f"reference: no signature for {name}")
            continue
        problems += [f"reference: {name}'s signature lacks {part!r}" for part in parts if part not in shown]
    problems += [
        f"reference: no entry for {name}" for name in public if f'id="workspace_lifecycle.{name}"' not in page
    ]
    if "Bases:" in _text(page):
        problems.append("reference: a 'Bases:' line is shown")
    first = page.find('id="workspace_lifecycle.Lifecycle"')
    if not 0 <= first < page.find('id="workspace_lifecycle.Agent"'):
        problems.append("reference: Lifecycle does not come before the value types")
    # A role in Lifecycle's own docstring is a link to its target's entry.
    if 'href="#workspace_lifecycle.StoreClosedError"' not in page:
        problems.append("reference: the cross-reference to StoreClosedError is not a link")
    return problems


def check_roles(name: str, page: str) -> list[str]:
    raw = sorted(set(RAW_ROLE.findall(_text(page))))
    return [f"{name}: Sphinx roles shown raw: {', '.join(raw)}"] if raw else []


def check_site(site: Path, public: list[str]) -> list[str]:
    """Every problem a reader would see on the built ``site`` (empty: none)."""
    pages = {
        p.parent.relative_to(site).as_posix(): p.read_text(encoding="utf-8") for p in site.rglob("index.html")
    }
    problems = check_state_machine(pages["state-machine"], site)
    problems += check_reference(pages["reference"], public)
    for name, page in sorted(pages.items()):
        problems += check_roles(name or "home", page)
    return problems


def chromium() -> str | None:
    return next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)


def _chromium_runs(browser: str, jobs: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Run the Chromium invocations side by side, each with its own profile (one start is ~2 s)."""
    with tempfile.TemporaryDirectory() as profiles:
        flags = [
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium refuses to start sandboxed
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
        ]
        started = [
            subprocess.Popen(
                [browser, *flags, f"--user-data-dir={profiles}/{i}", *job],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for i, job in enumerate(jobs)
        ]
        done = []
        for job, process in zip(jobs, started, strict=True):
            try:
                out, _ = process.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
                out, _ = process.communicate()
            done.append(subprocess.CompletedProcess(job, process.returncode, out, ""))
        return done


def check_drawn_svg(dom: str) -> list[str]:
    """The diagram as Chromium parsed it: an <svg> document naming every state."""
    from workspace_lifecycle import WorkspaceState

    if "<svg" not in dom:
        return ["state-machine: Chromium did not parse workspace.svg as an <svg>"]
    shown = set(re.findall(r"<text[^>]*>([a-z_]+)</text>", dom))
    missing = [s.value for s in WorkspaceState if s.value not in shown]
    return [f"state-machine: the diagram lacks the states {', '.join(missing)}"] if missing else []


def look(browser: str, site: Path, out: Path, public: list[str]) -> list[str]:
    """Load each page in headless Chromium: check its DOM, and save a screenshot into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    urls = {name: (site / name / "index.html").as_uri() for name in PAGES}
    jobs = [["--virtual-time-budget=3000", "--dump-dom", url] for url in urls.values()]
    jobs.append(["--dump-dom", (site / "workspace.svg").as_uri()])
    jobs += [
        [f"--window-size=1400,{PAGES[name]}", f"--screenshot={out / f'{name}.png'}", url]
        for name, url in urls.items()
    ]
    runs = _chromium_runs(browser, jobs)
    problems = []
    for name, run in zip(PAGES, runs, strict=False):
        dom = run.stdout
        if "</html>" not in dom:
            problems.append(f"{name}: Chromium gave no DOM")
            continue
        if name == "state-machine":
            problems += [f"browser {p}" for p in check_state_machine(dom, site)]
        elif name == "reference":
            problems += [f"browser {p}" for p in check_reference(dom, public)]
        problems += [f"browser {p}" for p in check_roles(name, dom)]
    problems += [f"browser {p}" for p in check_drawn_svg(runs[len(PAGES)].stdout)]
    for name in PAGES:
        shot = out / f"{name}.png"
        if not shot.is_file() or shot.stat().st_size < 20_000:  # a blank page is ~10 kB
            problems.append(f"{name}: no screenshot, or a blank one ({shot})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("site-screenshots"), help="where the screenshots go")
    parser.add_argument(
        "--site", type=Path, help="a site already built with mkdocs build --strict (default: build one)"
    )
    parser.add_argument("--no-browser", action="store_true", help="check the built HTML only")
    parser.add_argument(
        "--require-browser",
        action="store_true",
        default=os.environ.get("CI") == "true",
        help="fail when Chromium is missing (the default under CI=true)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import workspace_lifecycle as wl

    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            build(site)
        problems += check_site(site, list(wl.__all__))
        browser = None if args.no_browser else chromium()
        if browser is not None:
            problems += look(browser, site, args.out, list(wl.__all__))
            print(f"screenshots: {', '.join(str(args.out / f'{n}.png') for n in PAGES)}")
        elif args.require_browser:
            problems.append(
                "Chromium not found, and the pages must be looked at (apt-get install -y chromium)"
            )
        elif not args.no_browser:
            print("Chromium not found: checked the built HTML only (apt-get install -y chromium)")
    for problem in problems:
        print(problem, file=sys.stderr)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
