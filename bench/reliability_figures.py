"""The figures of RELIABILITY.md: run the reliability suite and add up what it counted.

Usage (from the repository root)::

    python bench/reliability_figures.py            # the default profile (seconds)
    python bench/reliability_figures.py --large    # HYPOTHESIS_PROFILE=large: 1,000+ histories

Runs the reliability test files with ``WL_RELIABILITY_FIGURES`` pointing at a temporary file
(each module adds its counts there as it finishes; see ``tests/figures.py``), then prints the
totals: requests and raced requests, faults injected by kind, crashes survived, hostile inputs
tried, callers cancelled, and the two that must stay zero (duplicate builds, lost answers).
The suite fails (and this script exits non-zero) if any guarantee is broken.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    "tests/runtime/test_faults.py",
    "tests/runtime/test_reliability_histories.py",
    "tests/runtime/test_crashes.py",
    "tests/stores/test_hostile_input.py",
    "tests/runtime/test_cancellation.py",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="run HYPOTHESIS_PROFILE=large")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "figures.json"
        env = dict(os.environ, WL_RELIABILITY_FIGURES=str(target))
        if args.large:
            env["HYPOTHESIS_PROFILE"] = "large"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging", *FILES]
        started = time.monotonic()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        elapsed = time.monotonic() - started
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(no output)"
        figures: dict[str, int] = json.loads(target.read_text()) if target.exists() else {}
    faults = {k.removeprefix("faults_"): v for k, v in figures.items() if k.startswith("faults_")}
    lost = 0 if proc.returncode == 0 else None  # a lost answer fails the suite
    print(f"profile:            {'large' if args.large else env.get('HYPOTHESIS_PROFILE', 'default')}")
    print(f"pytest:             {summary} ({elapsed:.0f} s)")
    print(f"histories:          {figures.get('histories', 0)} ({figures.get('rounds', 0)} rounds)")
    print(f"requests:           {figures.get('requests', 0)}")
    print(f"requests raced:     {figures.get('requests_raced', 0)}")
    print(f"faults injected:    {sum(faults.values())} {json.dumps(faults, sort_keys=True)}")
    print(f"write retries:      {figures.get('write_retries', 0)}")
    print(f"resyncs (silence):  {figures.get('resyncs_after_silence', 0)}")
    print(f"events checked:     {figures.get('events_checked', 0)}")
    print(f"crashes survived:   {figures.get('crashes_survived', 0)}")
    print(f"callers cancelled:  {figures.get('callers_cancelled', 0)}")
    print(f"inputs tried:       {figures.get('inputs_tried', 0)}")
    print(f"duplicates:         {figures.get('duplicates', 0)}")
    print(f"lost answers:       {lost if lost is not None else 'suite failed, see pytest output'}")
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
