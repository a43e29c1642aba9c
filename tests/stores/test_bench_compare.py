"""The regression guard's comparison (``python -m bench --compare``) on synthetic results: a
pure function of the committed document and the new one; nothing is run or timed here."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as cli
from bench import compare
from bench.common import Row


def _row(figure: str, ours: float | None, unit: str = "ms", **kw: Any) -> dict[str, Any]:
    return asdict(Row(figure, ours, unit, **kw))


def _doc(rows: dict[str, list[dict[str, Any]]], quick: bool = False) -> dict[str, Any]:
    return {"benchmarks": {name: {"name": name, "quick": quick, "rows": r} for name, r in rows.items()}}


COMMITTED = _doc(
    {
        "wakeup": [
            _row("p99", 1.0, goal="≤ 2 ms", met=True),  # lower is better, judged on ours
            _row("p50 vs poller", 0.5, baseline=1000.0, ratio=2000.0, goal="≥ 200x", met=True),
            _row("no goal, no direction", 5.0),
        ],
        "throughput": [
            _row("events/s", 1000.0, "events/s", baseline=2000.0, ratio=0.5, goal="≥ 0.25x", met=True),
            _row("latency vs uncontended", 100.0, ratio=2.0, goal="≤ 3x", met=True),
        ],
        "contention": [_row("builds fired", 1.0, "builds", goal="exactly 1 (one build id)", met=True)],
        "peers": [
            {**_row("ours: cycles/s", 100.0, "cycles/s"), "better": "higher"},
            {**_row("ours: round trips", 10.0, "per cycle"), "better": "lower"},
        ],
        "leases": [_row("reaper", 6.0, "rows read/min", goal="fails nothing", met=True)],
    }
)


def _figures(regressions: list[compare.Regression]) -> set[str]:
    return {r.figure for r in regressions}


def test_same_figures_are_no_regression() -> None:
    found = compare.compare(COMMITTED, COMMITTED)
    assert found.regressions == []
    assert found.compared == 7  # every row with a direction; "no goal" and "fails nothing" are not


def test_each_direction_within_and_past_the_tolerance() -> None:
    new = json.loads(json.dumps(COMMITTED))
    rows = {(n, r["figure"]): r for n, b in new["benchmarks"].items() for r in b["rows"]}
    rows["wakeup", "p99"]["ours"] = 1.1  # lower is better: 1.0 → 1.1 is within 0.9x (1.0/1.1 = 0.91)
    rows["wakeup", "p50 vs poller"]["ratio"] = 1700.0  # higher is better: 0.85x of 2000
    rows["wakeup", "no goal, no direction"]["ours"] = 500.0  # not guarded
    rows["throughput", "events/s"].update(ours=10.0, ratio=0.46)  # the goal judges the ratio: 0.92x
    rows["throughput", "latency vs uncontended"]["ratio"] = 2.3  # lower is better: 2.0/2.3 = 0.87
    rows["contention", "builds fired"]["ours"] = 2.0  # must stay equal
    rows["peers", "ours: cycles/s"]["ours"] = 95.0  # higher, within
    rows["peers", "ours: round trips"]["ours"] = 12.0  # lower: 10/12 = 0.83
    found = compare.regressions(COMMITTED, new)
    assert _figures(found) == {"p50 vs poller", "latency vs uncontended", "builds fired", "ours: round trips"}
    by = {r.figure: r for r in found}
    assert by["p50 vs poller"].field == "ratio" and by["p50 vs poller"].better == "higher"
    assert by["latency vs uncontended"].better == "lower"
    assert by["builds fired"].better == "equal"
    assert (by["ours: round trips"].committed, by["ours: round trips"].new) == (10.0, 12.0)
    assert all(r.describe() for r in found)


def test_improvements_are_not_regressions() -> None:
    new = json.loads(json.dumps(COMMITTED))
    for bench in new["benchmarks"].values():
        for row in bench["rows"]:
            d = compare.direction(row)
            if d is None or d.better == "equal":
                continue
            row[d.field] *= 2 if d.better == "higher" else 0.5
    assert compare.regressions(COMMITTED, new) == []


def test_a_goal_met_then_missed_is_a_regression_even_without_a_direction() -> None:
    new = json.loads(json.dumps(COMMITTED))
    new["benchmarks"]["leases"]["rows"][0]["met"] = False
    [found] = compare.regressions(COMMITTED, new)
    assert (found.benchmark, found.figure, found.better) == ("leases", "reaper", "met")
    assert "now missed" in found.describe()


def test_only_the_named_benchmarks_and_same_mode_are_compared() -> None:
    new = json.loads(json.dumps(COMMITTED))
    new["benchmarks"]["peers"]["rows"][1]["ours"] = 100.0
    assert compare.regressions(COMMITTED, new, names=["wakeup"]) == []
    quick = json.loads(json.dumps(new))
    quick["benchmarks"]["peers"]["quick"] = True
    found = compare.compare(COMMITTED, quick)
    assert found.regressions == []
    assert any("peers" in why and "quick" in why for why in found.skipped)
    # a benchmark or figure with nothing committed is not compared, and is no regression
    newer = _doc({"engine": [_row("events/s", 1.0, "events/s", goal="≥ 5x", ratio=1.0)]})
    found = compare.compare(COMMITTED, newer)
    assert found.regressions == [] and found.compared == 0 and found.skipped


@pytest.mark.parametrize(
    ("goal", "expected"),
    [
        ("≤ 1 ms", ("ours", "lower")),
        ("≤ 0.5%", ("ours", "lower")),
        ("≤ 300 MB", ("ours", "lower")),
        ("≤ 20 s", ("ours", "lower")),
        ("≥ 200x", ("ratio", "higher")),
        ("≥ 0.8x of 1 replica", ("ratio", "higher")),
        ("≤ 3x", ("ratio", "lower")),
        ("≤ 2/8 (∝ its share)", ("ratio", "lower")),
        ("> 1x (ahead)", ("ratio", "higher")),
        ("exactly 1 (one build id, no errors)", ("ours", "equal")),
        ("ours flat (≤ 1.5x), poller linear", ("ours", "lower")),
        ("fails nothing", None),
        ("", None),
    ],
)
def test_direction_from_the_goal(goal: str, expected: tuple[str, str] | None) -> None:
    d = compare.direction(_row("x", 1.0, goal=goal))
    assert (None if d is None else (d.field, d.better)) == expected


def test_better_field_wins_and_is_checked() -> None:
    row = {**_row("x", 1.0, goal="≥ 200x"), "better": "lower"}
    assert compare.direction(row) == compare.Direction("ours", "lower")
    guarded = compare.GuardedRow("x", 1.0, "ms", better="higher")
    assert compare.direction(asdict(guarded)) == compare.Direction("ours", "higher")
    with pytest.raises(ValueError, match="better"):
        compare.GuardedRow("x", 1.0, "ms", better="faster")


def test_default_set_is_the_benchmarks_with_guarded_rows() -> None:
    assert compare.guarded_names(COMMITTED, list(cli.BENCHMARKS)) == [
        "wakeup",
        "throughput",
        "contention",
        "leases",
        "peers",
    ]


def test_committed_results_parse_and_compare_with_themselves(tmp_path: Path) -> None:
    committed, source = compare.load_committed()
    assert "benchmarks" in committed and source
    assert compare.regressions(committed, committed) == []
    path = tmp_path / "r.json"
    path.write_text(json.dumps(COMMITTED))
    assert compare.load_committed(str(path)) == (COMMITTED, str(path))
