"""The benchmarks' quick mode runs and produces well-formed results (no timing is asserted).

Benchmarks live in ``bench/`` and are run by hand (``python -m bench``); this keeps them from
rotting. The PostgreSQL parts run only in the ``postgres``-marked test.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as cli
from bench import common, report

#: what every benchmark must report, at least, in quick mode without PostgreSQL.
EXPECTED = {
    "wakeup": ["wake-up p50, memory", "wake-up p99, SQLite across processes", "idle CPU"],
    "dbwork": ["store calls per start_workspace, SQLite", "growth of store calls, SQLite"],
    "engine": ["events/s, Lifecycle pump"],
    "throughput": ["SQLite events/s, 1 writer"],
    "scale": ["memory: wall time", "SQLite: peak RSS", "idle CPU while"],
    "contention": ["start builds fired per round, SQLite", "answer latency p99 under contention, SQLite"],
    "deadlines": [
        "idle CPU with 200 armed deadlines, SQLite",
        "touch that moves the deadline",
        "touch within the slack",
    ],
    "leases": [
        "lease renewal, memory",
        "lease renewal, SQLite",
        "reaper at rest, 50 builds renewing, SQLite",
    ],
    "pools": ["create from a warm pool of 3, SQLite, ProcessProvisioner"],
    "peers": [
        "ours, SQLite: cycle p50, 1 caller",
        "ours, SQLite: cycles/s, 16 callers",
        "ours, SQLite: store transactions (reads and writes) per cycle",
    ],
}
#: benchmarks that measure only PostgreSQL, and what their quick mode must report at least.
POSTGRES_ONLY = {
    "replicas": [
        "PostgreSQL, 1 replica: wake-up p99",
        "PostgreSQL, 2 replicas: notifications received per replica",
        "PostgreSQL, 2 replicas: CPU per replica process",
        "PostgreSQL, 2 replicas: store round trips per replica",
        "PostgreSQL, 2 replicas: database commits/s",
        "PostgreSQL, 2 replicas: lock waits",
    ],
}


def _check_number(value: Any) -> None:
    assert value is None or (isinstance(value, int | float) and math.isfinite(value)), value


def _check_result(result: common.Result, expected: list[str]) -> None:
    assert result.quick
    assert result.rows, result.name
    for row in result.rows:
        assert row.figure and row.unit
        for value in (row.ours, row.baseline, row.ratio):
            _check_number(value)
        assert row.ours is not None, row.figure
        assert row.met is None  # the quick mode judges no goal
        assert common.format_row(row)
    for prefix in expected:
        assert any(prefix in row.figure for row in result.rows), (prefix, [r.figure for r in result.rows])
    json.dumps(result.to_json())  # serialisable


def test_every_benchmark_is_smoke_tested() -> None:
    assert set(cli.BENCHMARKS) == set(EXPECTED) | set(POSTGRES_ONLY)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_quick_mode_runs_without_postgres(name: str, tmp_path: Path) -> None:
    result = cli.run_one(name, common.Context(quick=True, pg_url=None, tmp=tmp_path))
    assert result.name == name
    _check_result(result, EXPECTED[name])
    assert not any("PostgreSQL" in row.figure for row in result.rows)


@pytest.mark.parametrize("name", list(POSTGRES_ONLY))
def test_postgres_only_benchmark_without_postgres_says_so(name: str, tmp_path: Path) -> None:
    result = cli.run_one(name, common.Context(quick=True, pg_url=None, tmp=tmp_path))
    assert not result.rows
    assert any("needs PostgreSQL" in note for note in result.notes)


@pytest.mark.postgres
@pytest.mark.parametrize("name", ["wakeup", "dbwork", "throughput", "contention", "leases", "peers"])
def test_quick_mode_postgres_parts(name: str, tmp_path: Path, pg_url: str) -> None:
    result = cli.run_one(name, common.Context(quick=True, pg_url=pg_url, tmp=tmp_path, local=False))
    _check_result(result, [])
    assert all("PostgreSQL" in row.figure for row in result.rows)


@pytest.mark.postgres
@pytest.mark.parametrize("name", list(POSTGRES_ONLY))
def test_quick_mode_postgres_only(name: str, tmp_path: Path, pg_url: str) -> None:
    """The benchmark runs its processes, cleans them and its schemas up, and reports rows."""
    import psycopg

    # An option this store does not know is dropped with a note, not an error.
    ctx = common.Context(quick=True, pg_url=pg_url, tmp=tmp_path, store_options=("no_such_option=1",))
    result = cli.run_one(name, ctx)
    _check_result(result, POSTGRES_ONLY[name])
    assert all("PostgreSQL" in row.figure for row in result.rows)
    assert any("no_such_option=1" in note for note in result.notes)
    figures = result.data["figures"]
    assert all(f["wakeups"] > 0 and f["events_per_s"] > 0 and f["notifies_per_s"] > 0 for f in figures)
    assert not figures[0]["errors"], figures[0]["errors"][:3]
    with psycopg.connect(pg_url) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", ([f["schema"] for f in figures],)
        ).fetchall()
    assert not left  # each configuration's schema is dropped
    for pid in (pid for f in figures for pid in f["pids"]):
        with pytest.raises(ProcessLookupError):  # every child exited and was reaped
            os.kill(pid, 0)
    cli.write(tmp_path / "out", [result], pg_url, f"python -m bench {name} --quick")
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "PostgreSQL, 2 replicas: wake-up p99" in md and "| R | events/s |" in md
    png = tmp_path / "out" / "replicas.png"
    if png.exists():  # matplotlib is a bench-only dependency
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(replicas.png)" in md


def test_report_files_are_written_and_merged(tmp_path: Path) -> None:
    ctx = common.Context(quick=True, pg_url=None, tmp=tmp_path)
    engine = cli.run_one("engine", ctx)
    doc = cli.write(tmp_path / "out", [engine], None, "python -m bench engine --quick")
    assert list(doc["benchmarks"]) == ["engine"]
    wake = common.Result(
        "wakeup", quick=True, data={"samples_ms": {"memory": {"ours": [0.1, 0.2], "poller": [900.0]}}}
    )
    wake.rows.append(
        common.Row("wake-up p50, memory", 0.15, "ms", 900.0, "2 s poller", 6000.0, "poller/ours")
    )
    doc = cli.write(tmp_path / "out", [wake], None, "python -m bench wakeup --quick")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(saved["benchmarks"]) == {"engine", "wakeup"}  # the earlier entry is kept
    for key in ("date", "cpu_count", "python", "sqlite"):
        assert saved["machine"][key]
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "| figure | ours | baseline | ratio | goal | met? |" in md
    assert "events/s, Lifecycle pump" in md and "wake-up p50, memory" in md
    png = report.plot(tmp_path / "out", doc)
    if png is not None:  # matplotlib is a bench-only dependency
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_percentiles_and_formatting() -> None:
    assert common.pct([3.0, 1.0, 2.0], 0.5) == 2.0
    assert common.pct([1.0, 2.0], 0.99) == pytest.approx(1.99)
    assert common.fmt(None) == "—"
    assert common.fmt_ratio(1234.0) == "1,234x"
    assert common.ratio(1.0, 0.0) is None


def test_postgres_throughput_rows_survive_a_loop_that_completed_nothing() -> None:
    """In quick mode on a loaded machine the 16-writer locked loop can finish no transaction in
    its window (seen once in CI): its ratio is none, not a ZeroDivisionError."""
    from bench import postgres_throughput

    entry = {
        "ours": 900.0,
        "bare": 1000.0,
        "ratio": 0.9,
        "batch": 0.0,
        "rounds": [0.9],
        "statement": 0.0,
        "locked": 0.0,
    }
    rows = postgres_throughput.rows({f"postgres_{w}": dict(entry) for w in postgres_throughput.WRITERS})
    locked = next(r for r in rows if "commit-serialising lock" in r.figure)
    assert locked.ratio is None  # ours over a locked loop that completed nothing
    statement = next(r for r in rows if "write statement in a bare loop" in r.figure)
    assert statement.ratio == 0.0 and "no ratio" in statement.note
