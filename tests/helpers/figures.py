"""Figures the reliability tests count as they run (requests raced, faults injected, ...).

``bench/reliability_figures.py`` runs the reliability tests with ``WL_RELIABILITY_FIGURES`` set
to a file; each test module adds its counts to that JSON file when it finishes (in each xdist
worker that ran some of its tests: the file is locked while one adds its counts).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from pathlib import Path

FIGURES: Counter[str] = Counter()


def flush() -> None:
    """Add this module's counts to the file named by ``WL_RELIABILITY_FIGURES`` (if set)."""
    target = os.environ.get("WL_RELIABILITY_FIGURES")
    if not target or not FIGURES:
        return
    path = Path(target)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        total: Counter[str] = Counter(json.loads(path.read_text()) if path.exists() else {})
        total.update(FIGURES)
        path.write_text(json.dumps(dict(sorted(total.items())), indent=2) + "\n")
    FIGURES.clear()
