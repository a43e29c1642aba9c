"""The pytest plugin (``wl_clock``, ``wl_store``, ``wl_provisioner``, ``wl_lifecycle``) as a user
meets it: each test writes a test file of a user's project and runs pytest on it in a fresh
interpreter (the plugin loads from its entry point, as it does for them)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import pytest_plugin

HEAD = """
import anyio
import pytest
import workspace_lifecycle as wl

pytestmark = pytest.mark.anyio
"""

#: Makes ``import hypothesis`` fail, as where it is not installed.
NO_HYPOTHESIS = """
import importlib.abc, sys
class NoHypothesis(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == "hypothesis":
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoHypothesis())
"""


def run_pytest(
    tmp_path: Path, body: str, *args: str, env: dict[str, str] | None = None, prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    """pytest on a test file made of ``HEAD`` and ``body``, in ``tmp_path`` (no ini there)."""
    (tmp_path / "test_user.py").write_text(HEAD + textwrap.dedent(body), encoding="utf-8")
    code = f"{prelude}\nimport sys, pytest\nsys.exit(pytest.main(sys.argv[1:]))"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "WORKSPACE_LIFECYCLE"))}
    return subprocess.run(
        [sys.executable, "-c", code, "-p", "no:cacheprovider", "-W", "error", "-rs", "test_user.py", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**environ, **(env or {})},
    )


def test_the_stack_shares_one_clock_and_deadlines_fire_on_it(tmp_path: Path) -> None:
    """Store, provisioner and runtime run on ``wl_clock``: an idle stop fires when it advances,
    on asyncio and on trio (anyio's default backends)."""
    proc = run_pytest(
        tmp_path,
        """
        @pytest.mark.wl_lifecycle(policy=wl.Policy(idle_stop_after=600))
        async def test_idle(wl_lifecycle, wl_provisioner, wl_store, wl_clock):
            assert wl_store.driver.clock is wl_clock
            assert wl_provisioner.clock is wl_clock and wl_lifecycle.clock is wl_clock
            assert wl_store.url == "memory://"
            await wl_lifecycle.register_chat("c", owner="a")
            assert not (await wl_lifecycle.create_workspace("c", owner="a", name="dev")).is_error
            wl_clock.advance(599)
            await anyio.wait_all_tasks_blocked()
            assert await wl_lifecycle.state("c") is wl.WorkspaceState.AGENT_READY
            wl_clock.advance(1)
            await anyio.wait_all_tasks_blocked()
            assert await wl_lifecycle.state("c") is wl.WorkspaceState.STOPPED
        """,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_markers_and_the_option_choose_the_store(tmp_path: Path) -> None:
    """``wl_store("sqlite")`` opens a file in the test's tmp_path; several kinds run the test
    on each; SQLite under trio is skipped, saying why; ``--wl-store`` sets the default."""
    body = """
        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.wl_store("sqlite")
        async def test_sqlite(wl_store, tmp_path):
            assert wl_store.url.startswith("sqlite:///") and str(tmp_path) in wl_store.url

        @pytest.mark.wl_store("memory", "sqlite")
        async def test_both(wl_store, wl_store_kind):
            assert wl_store.url.startswith({"memory": "memory://", "sqlite": "sqlite:///"}[wl_store_kind])

        async def test_default(wl_store):
            print("DEFAULT", wl_store.url.split(":")[0])

        @pytest.mark.parametrize("anyio_backend", ["trio"])
        @pytest.mark.wl_store("sqlite")
        async def test_on_trio(wl_store):
            raise AssertionError("not reached")
        """
    proc = run_pytest(tmp_path, body, "-s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed, 1 skipped" in proc.stdout and "DEFAULT memory" in proc.stdout
    assert "the sqlite store runs on asyncio only, not trio" in proc.stdout
    proc = run_pytest(tmp_path, body, "-s", "--wl-store=sqlite", "-k", "default")
    assert proc.returncode == 0 and "DEFAULT sqlite" in proc.stdout, proc.stdout + proc.stderr


def test_marker_options_reach_the_provisioner_and_the_runtime(tmp_path: Path) -> None:
    """``wl_provisioner(...)`` and ``wl_lifecycle(...)`` give their keyword arguments; a build
    of a virtual minute finishes when the clock advances a minute (in steps shorter than its
    lease, which it renews on the same clock)."""
    proc = run_pytest(
        tmp_path,
        """
        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.wl_provisioner(build_seconds=60)
        @pytest.mark.wl_lifecycle(build_timeout=7200)
        async def test_slow_build(wl_lifecycle, wl_provisioner, wl_clock):
            assert wl_lifecycle.build_timeout == 7200
            await wl_lifecycle.register_chat("c", owner="a")
            r = await wl_lifecycle.create_workspace("c", owner="a", name="dev", wait=False)
            assert r.data["status"] == "building"
            for _ in range(5):
                await anyio.wait_all_tasks_blocked()
                wl_clock.advance(10)
            await anyio.wait_all_tasks_blocked()
            assert await wl_lifecycle.state("c") is wl.WorkspaceState.BUILDING
            wl_clock.advance(10)
            await anyio.wait_all_tasks_blocked()
            assert await wl_lifecycle.state("c") is wl.WorkspaceState.AGENT_READY

        @pytest.mark.wl_store("mysql")
        async def test_bad_kind(wl_store):
            pass
        """,
    )
    assert "1 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "wl_store takes one of memory, sqlite, postgresql, not 'mysql'" in proc.stdout + proc.stderr


@pytest.mark.postgres
def test_postgresql_gets_a_schema_of_its_own_dropped_after(tmp_path: Path, pg_url: str) -> None:
    """``wl_store("postgresql")`` makes a fresh schema on ``$WORKSPACE_LIFECYCLE_PG_URL`` and
    drops it after the test."""
    import psycopg

    proc = run_pytest(
        tmp_path,
        """
        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.wl_store("postgresql")
        async def test_pg(wl_lifecycle, wl_provisioner, wl_store):
            print("SCHEMA", wl_store.driver.options.schema)
            await wl_lifecycle.register_chat("c", owner="a")
            assert not (await wl_lifecycle.create_workspace("c", owner="a", name="dev")).is_error
        """,
        "-s",
        env={pytest_plugin.PG_URL_ENV: pg_url},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    schema = proc.stdout.split("SCHEMA ", 1)[1].split()[0]
    assert schema.startswith("wl_test_")
    with psycopg.connect(pg_url) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    assert found is None


def test_postgresql_without_a_url_fails_saying_how_to_give_one(tmp_path: Path) -> None:
    """No URL: the test fails with a sentence naming the variable and the option (a skip would
    hide a test that never ran)."""
    proc = run_pytest(
        tmp_path,
        """
        @pytest.mark.wl_store("postgresql")
        async def test_pg(wl_store):
            pass
        """,
        "-k",
        "asyncio",
    )
    assert proc.returncode == 1
    assert "needs a database: set $WORKSPACE_LIFECYCLE_PG_URL or pass --wl-postgres-url" in proc.stdout


def test_the_plugin_needs_no_hypothesis(tmp_path: Path) -> None:
    """With Hypothesis not importable, the plugin loads and its fixtures work."""
    proc = run_pytest(
        tmp_path,
        """
        async def test_stack(wl_lifecycle, wl_provisioner):
            with pytest.raises(ModuleNotFoundError):
                import hypothesis  # noqa: F401
            await wl_lifecycle.register_chat("c", owner="a")
            assert not (await wl_lifecycle.create_workspace("c", owner="a", name="dev")).is_error
        """,
        "-p",
        "no:hypothesispytest",
        prelude=NO_HYPOTHESIS,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_conftest_listing_the_plugin_does_not_register_it_twice(tmp_path: Path) -> None:
    """``pytest_plugins = ["workspace_lifecycle.pytest_plugin"]`` beside the entry point is one
    registration, not pluggy's 'already registered' error."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["workspace_lifecycle.pytest_plugin"]\n')
    proc = run_pytest(tmp_path, "def test_clock(wl_clock):\n    assert wl_clock() > 0\n")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_our_suite_has_it_once(pytestconfig: pytest.Config, wl_clock: wl.VirtualClock) -> None:
    """This suite runs with the plugin installed (editable): registered once, by its entry
    point; the clock it gives is this test's own."""
    plugins = [p for p in pytestconfig.pluginmanager.get_plugins() if p is pytest_plugin]
    assert len(plugins) == 1
    assert pytestconfig.pluginmanager.get_plugin("workspace_lifecycle.pytest_plugin") is pytest_plugin
    assert isinstance(wl_clock, wl.VirtualClock)
