"""The regression guard: ``python -m bench --compare [NAME ...]`` runs benchmarks and compares
each guarded figure against the one committed in ``bench/results.json``.

Which figures are guarded, and which way is better, comes from each row's own metadata:

* a row written with ``better`` (``"higher"`` or ``"lower"``, see :class:`GuardedRow`) guards
  its ``ours`` figure that way;
* else a row with a goal guards what the goal judges: ``≤ 1 ms``, ``≤ 0.5%``, ``≤ 300 MB``
  (a bound on ``ours``, lower is better), ``≥ 200x``, ``≤ 3x``, ``≥ 0.8x of 1 replica``,
  ``≤ 2/8`` (a bound on the ratio, higher or lower is better as the sign says),
  ``exactly 1`` (``ours`` must stay equal), ``ours flat (≤ 1.5x)`` (``ours``, lower);
* and a goal that was met and is now missed is a regression whatever the figures.

A figure is a regression when it is worse than ``tolerance`` (0.9) times the committed one:
for higher-is-better, ``new < 0.9 * committed``; for lower-is-better, ``new > committed / 0.9``
(so the committed figure is less than 0.9 times the new one). Rows without a direction are not
compared. A benchmark run in another mode than the committed one (quick against full) is not
compared either: its sizes differ.

:func:`regressions` is a pure function of the two documents (the tests use synthetic ones).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ROOT, Row, fmt

TOLERANCE = 0.9
RESULTS = "bench/results.json"


@dataclass
class GuardedRow(Row):
    """A :class:`~bench.common.Row` that says which way its ``ours`` figure is better, for the
    guard: ``"higher"`` (rates) or ``"lower"`` (latencies, CPU, round trips)."""

    better: str = ""

    def __post_init__(self) -> None:
        if self.better not in ("", "higher", "lower"):
            raise ValueError(f"better must be 'higher' or 'lower', not {self.better!r}")


@dataclass(frozen=True)
class Direction:
    """What a row's guard judges: ``field`` (``"ours"`` or ``"ratio"``) and ``better``
    (``"higher"``, ``"lower"`` or ``"equal"``)."""

    field: str
    better: str


@dataclass(frozen=True)
class Regression:
    benchmark: str
    figure: str
    field: str  # "ours", "ratio" or "met"
    better: str  # "higher", "lower", "equal", or "met" for a goal now missed
    committed: Any
    new: Any
    unit: str = ""

    def describe(self) -> str:
        if self.better == "met":
            return f"{self.benchmark}: {self.figure}: its goal was met and is now missed"
        what = "ratio" if self.field == "ratio" else "figure"
        unit = "" if self.field == "ratio" else self.unit
        change = ""
        if isinstance(self.committed, int | float) and isinstance(self.new, int | float) and self.committed:
            change = f" ({self.new / self.committed:.2f}x of committed)"
        return (
            f"{self.benchmark}: {self.figure}: {what} {fmt(self.committed, unit)} → {fmt(self.new, unit)}"
            f"{change}; {self.better} is better"
        )


@dataclass
class Comparison:
    """What :func:`compare` found: the regressions, how many figures it compared, and why
    some were not compared."""

    regressions: list[Regression] = field(default_factory=list)
    compared: int = 0
    skipped: list[str] = field(default_factory=list)


_RATIO_BOUND = re.compile(r"^(≥|>=|≤|<=|>|<)\s*[0-9.]+\s*(x\b|/\s*[0-9]+)")
_OURS_BOUND = re.compile(r"^(≥|>=|≤|<=|>|<)\s*[0-9.,]+\s*(%|[A-Za-zµ]+)?")


def direction(row: Mapping[str, Any]) -> Direction | None:
    """What the guard judges in ``row`` (a row of ``results.json``), or None."""
    better = row.get("better") or ""
    if better in ("higher", "lower"):
        return Direction("ours", better)
    goal = str(row.get("goal") or "").strip()
    if not goal:
        return None
    if goal.startswith("exactly"):
        return Direction("ours", "equal")
    if goal.startswith("ours flat"):
        return Direction("ours", "lower")
    m = _RATIO_BOUND.match(goal)
    if m:
        return Direction("ratio", "higher" if m.group(1) in ("≥", ">=", ">") else "lower")
    m = _OURS_BOUND.match(goal)
    if m:
        return Direction("ours", "higher" if m.group(1) in ("≥", ">=", ">") else "lower")
    return None


def _worse(better: str, committed: float, new: float, tolerance: float) -> bool:
    if better == "equal":
        return new != committed
    if better == "higher":
        return new < tolerance * committed
    return new * tolerance > committed  # lower is better: committed < tolerance * new


def compare(
    committed: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    names: Iterable[str] | None = None,
    tolerance: float = TOLERANCE,
) -> Comparison:
    """Every guarded figure of ``new`` (a ``results.json`` document) worse than ``tolerance``
    times the same figure of ``committed`` (matched by benchmark and figure name)."""
    out = Comparison()
    old_benches: Mapping[str, Any] = committed.get("benchmarks", {})
    new_benches: Mapping[str, Any] = new.get("benchmarks", {})
    for name in names if names is not None else new_benches:
        bench = new_benches.get(name)
        before = old_benches.get(name)
        if bench is None:
            out.skipped.append(f"{name}: not in this run")
            continue
        if before is None:
            out.skipped.append(f"{name}: nothing committed to compare with")
            continue
        if bool(before.get("quick")) != bool(bench.get("quick")):
            out.skipped.append(
                f"{name}: committed in {'quick' if before.get('quick') else 'full'} mode, run in"
                f" {'quick' if bench.get('quick') else 'full'} mode: sizes differ, not compared"
            )
            continue
        old_rows = {r["figure"]: r for r in before.get("rows", [])}
        new_figures = {r["figure"] for r in bench.get("rows", [])}
        for figure, old in old_rows.items():
            if figure not in new_figures and (direction(old) is not None or old.get("goal")):
                out.skipped.append(f"{name}: {figure}: committed, not in this run")
        for row in bench.get("rows", []):
            old = old_rows.get(row["figure"])
            if old is None:
                continue
            if old.get("met") is True and row.get("met") is False:
                out.regressions.append(Regression(name, row["figure"], "met", "met", True, False))
            d = direction(old) or direction(row)
            if d is None:
                continue
            a, b = old.get(d.field), row.get(d.field)
            if not isinstance(a, int | float) or not isinstance(b, int | float):
                out.skipped.append(f"{name}: {row['figure']}: no {d.field} figure on one side")
                continue
            out.compared += 1
            if _worse(d.better, float(a), float(b), tolerance):
                out.regressions.append(
                    Regression(name, row["figure"], d.field, d.better, a, b, str(row.get("unit", "")))
                )
    return out


def regressions(
    committed: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    names: Iterable[str] | None = None,
    tolerance: float = TOLERANCE,
) -> list[Regression]:
    """The regressions of :func:`compare`."""
    return compare(committed, new, names=names, tolerance=tolerance).regressions


def guarded_names(committed: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    """The benchmarks (in ``order``) whose committed rows hold a guarded figure: the default
    set of ``--compare``."""
    benches: Mapping[str, Any] = committed.get("benchmarks", {})
    return [
        name
        for name in order
        if name in benches
        and any(direction(r) is not None or r.get("goal") for r in benches[name].get("rows", []))
    ]


def load_committed(against: str | None = None) -> tuple[dict[str, Any], str]:
    """The committed results and where they came from: ``against`` (a file), else
    ``bench/results.json`` as committed at git's HEAD, else the file in the work tree."""
    if against is not None:
        return json.loads(Path(against).read_text()), against
    try:
        text = subprocess.run(
            ["git", "show", f"HEAD:{RESULTS}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        return json.loads(text), f"{RESULTS} at HEAD"
    except (OSError, subprocess.CalledProcessError, ValueError):
        path = ROOT / RESULTS
        return json.loads(path.read_text()), str(path)
