"""The layers hold: the pure core imports no runtime, adapter, event loop, clock, driver or network,
and no storage adapter imports the runtime or a face (issue 24, item 6).

The imports are read from the source with :mod:`ast` (every ``import``, at any depth, including
the ones under ``if TYPE_CHECKING:``: a type that names the runtime ties the core to it too), so
nothing is imported to check it. A failure lists each offending import as ``file:line``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import workspace_lifecycle

PACKAGE = Path(workspace_lifecycle.__file__).parent
NAME = workspace_lifecycle.__name__

#: The pure core (README, "Layout"): decisions over values, no I/O, no awaits, no clocks. The
#: compiled transition table lives in ``machine.py`` (``machine.TABLE``), compiled by ``table.py``.
CORE = (
    "machine",
    "table",
    "steps",
    "writes",
    "write",
    "_replace",
    "request_writes",
    "build_writes",
    "deadline_writes",
    "deadlines",
    "answers",
    "values",
    "vocabulary",
    "between_turns",
    "build_data",
    "errors",
)
#: Pure modules that join the core as they are written (README on main: ``checks.py``, the
#: configuration numbers; ``backoff.py``, the retry pauses; ``reconcile.py``, what a restarted
#: provisioner does; issue 24 item 4): checked once they exist.
CORE_LATER = (
    "checks",
    "backoff",
    "reconcile",
    "endpoints",
    "buildlogs",
    "leases",
    "limits",
    "skew",
    "readiness",
    "pools",
)

#: What the core may not import from outside the package: event loops and concurrency, clocks,
#: storage drivers and the network.
CORE_FORBIDDEN_EXTERNAL = (
    "anyio",
    "asyncio",
    "trio",
    "sniffio",
    "time",
    "sqlite3",
    "psycopg",
    "psycopg_pool",
    "socket",
    "ssl",
    "select",
    "selectors",
    "http",
    "urllib",
    "subprocess",
)
#: Pure parts of forbidden packages: ``urllib.parse`` splits a URL string (the endpoints' check),
#: it opens nothing.
CORE_ALLOWED_EXTERNAL = ("urllib.parse",)

#: The runtime and the faces above it: what a storage adapter may not import.
RUNTIME = (
    "runtime",
    "_pump",
    "_registry",
    "_retry",
    "_deadlines",
    "_pools",
    "_holds",
    "_lifecycle_kit",
    "_heartbeat",
    "_held",
    "_lease_keeper",
    "_flight",
    "_service",
    "_engine",
    "_requests",
    "_warm_pools",
    "provisioner",
    "process_provisioner",
    "reaper",
    "tools",
    "mcp_server",
    "cli",
    "integrations",
    "telemetry",
    "testing",
    "_provisioner_kit",
    "faults",
)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module the package's file ``path`` imports, with its line (see ``imports_in``)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    yield from imports_in(path.read_text(encoding="utf-8"), package)


def imports_in(source: str, package: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """Every module ``source`` (a file of ``package``) imports, absolute, with its line: in an
    adapter, ``from ..values import y`` is ``workspace_lifecycle.values`` and also
    ``workspace_lifecycle.values.y`` (``y`` may be a module, as in ``from .. import tools``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            prefix = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, prefix
            for alias in node.names:
                yield node.lineno, f"{prefix}.{alias.name}"


def matches(module: str, names: tuple[str, ...]) -> bool:
    """``module`` is one of ``names`` or inside one of them (``psycopg.rows`` is ``psycopg``),
    and not one of the pure parts allowed by :data:`CORE_ALLOWED_EXTERNAL`."""
    if any(module == name or module.startswith(name + ".") for name in CORE_ALLOWED_EXTERNAL):
        return False
    return any(module == name or module.startswith(name + ".") for name in names)


def offending(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    where = path.relative_to(PACKAGE.parent)
    return sorted(
        {f"{where}:{line}: imports {module}" for line, module in imports(path) if matches(module, forbidden)}
    )


def ours(*names: str) -> tuple[str, ...]:
    return tuple(f"{NAME}.{name}" for name in names)


def core_files() -> list[Path]:
    later = [PACKAGE / f"{name}.py" for name in CORE_LATER]
    return [PACKAGE / f"{name}.py" for name in CORE] + [path for path in later if path.is_file()]


class TestCore:
    @pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
    def test_the_core_imports_only_the_core_and_no_io(self, path: Path) -> None:
        """A core module imports other core modules of the package and no loop, clock, driver or
        network: whatever it needs from outside is data handed to it."""
        internal = [
            f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}"
            for line, module in imports(path)
            if matches(module, (NAME,)) and module != NAME and not matches(module, ours(*CORE, *CORE_LATER))
        ]
        problems = sorted(set(internal)) + offending(path, CORE_FORBIDDEN_EXTERNAL)
        assert not problems, "the pure core reaches outside itself:\n" + "\n".join(problems)

    def test_every_core_module_exists(self) -> None:
        """A renamed core module fails here rather than silently leaving the check."""
        assert [name for name in CORE if not (PACKAGE / f"{name}.py").is_file()] == []


class TestAdapters:
    @pytest.mark.parametrize(
        "path", sorted((PACKAGE / "adapters").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
    )
    def test_an_adapter_imports_no_runtime_and_no_face(self, path: Path) -> None:
        """Adapters persist the core's decisions under the store interface; the runtime, the
        provisioners and the faces sit above them."""
        problems = offending(path, ours(*RUNTIME))
        assert not problems, "a storage adapter imports the layer above it:\n" + "\n".join(problems)


class TestTheCheckItself:
    """The checker sees what it must: relative imports, imports inside functions, type-only ones."""

    def test_it_resolves_every_kind_of_import(self) -> None:
        source = (
            "from typing import TYPE_CHECKING\n"
            "import anyio\n"
            "from ..runtime import Lifecycle\n"
            "def f():\n"
            "    from .. import tools\n"
            "if TYPE_CHECKING:\n"
            "    from workspace_lifecycle._pump import Pump\n"
        )
        found = {module for _, module in imports_in(source, (NAME, "adapters"))}
        assert {"anyio", f"{NAME}.runtime", f"{NAME}.tools", f"{NAME}._pump"} <= found
        assert matches(f"{NAME}.cli.demo", ours("cli"))
        assert not matches(f"{NAME}.clock", ours("cli"))


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports (anywhere in the file: at
    the top, inside a function or for type checking only); a module importing its own package's
    ``__init__`` (``from .. import x`` of a submodule) is not an arrow."""
    files = {
        ".".join(parts[:-1] if parts[-1] == "__init__" else parts): path
        for path in PACKAGE.rglob("*.py")
        for parts in [path.relative_to(PACKAGE.parent).with_suffix("").parts]
    }

    def module_of(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = path.relative_to(PACKAGE.parent).parts[:-1]
        targets = {module_of(module) for _, module in imports_in(path.read_text(encoding="utf-8"), package)}
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class TestNoCircle:
    def test_no_two_modules_import_each_other_however_indirectly(self) -> None:
        """Imports flow one way (issue 24's done-means): a circle, even one broken at import time
        by a function-level or type-only import, is two modules that cannot be read apart."""
        assert circles(import_graph()) == []

    def test_the_check_finds_a_circle(self) -> None:
        graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
        assert circles(graph) == [["a", "b", "c"]]
        assert len(import_graph()) > 100  # every module of the package was read


#: The size limits of issue 24: a file, a class, a function (lines, from ``def``/``class`` to
#: its last line, decorators excluded).
MAX_FILE, MAX_CLASS, MAX_FUNCTION = 700, 350, 70


def oversized(path: Path, source: str) -> list[str]:
    """Each place of ``source`` (read from ``path``) over a size limit, as ``file[:name] lines``."""
    found = []
    lines = source.count("\n")
    if lines > MAX_FILE:
        found.append(f"{path} {lines} > {MAX_FILE}")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                found.append(f"{path}:{node.name} {length} > {limit}")
    return found


class TestSizes:
    def test_no_file_class_or_function_over_its_limit(self) -> None:
        """Issue 24's done-means, kept: a module a reader can hold in mind."""
        found = [
            place
            for path in sorted(PACKAGE.rglob("*.py"))
            for place in oversized(path.relative_to(PACKAGE.parent), path.read_text(encoding="utf-8"))
        ]
        assert found == []

    def test_the_check_finds_each_kind(self) -> None:
        body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION))
        source = f"def f():\n{body}\n" * 11
        found = oversized(Path("m.py"), f"class C:\n    def g(self):\n        pass\n{source}")
        assert (
            found
            == [f"m.py {source.count(chr(10)) + 3} > {MAX_FILE}"]
            + [f"m.py:f {MAX_FUNCTION + 1} > {MAX_FUNCTION}"] * 11
        )
        cls = "class C:\n" + "".join(
            f"    def m{i}(self):\n        pass\n" for i in range(MAX_CLASS // 2 + 1)
        )
        assert oversized(Path("c.py"), cls) == [f"c.py:C {MAX_CLASS + 3} > {MAX_CLASS}"]
