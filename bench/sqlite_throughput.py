"""Durable events/s of the SQLite store against a stdlib ``sqlite3`` one-row-transaction loop,
for each ``synchronous`` setting asked for (``python -m bench throughput`` measures only the
store's default), at each number of concurrent writers asked for.

Both run in this process, one after the other, on fresh files with the same pragmas (WAL, the
same ``synchronous``, the same ``busy_timeout``). Each store write is ``report_agent``: one
``BEGIN IMMEDIATE`` transaction that reads and updates the agent row and appends one event, run
whole on the store's connection thread (one hop; concurrent writes commit together). The bare
loop is ``BEGIN IMMEDIATE; INSERT one row; COMMIT`` on a stdlib connection in this thread (no
hop, one writer).

    python -m bench.sqlite_throughput [--seconds 3] [--synchronous NORMAL FULL] [--writers 1 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import anyio

from .throughput import sqlite_bare_rate, sqlite_store_figures

BUSY_TIMEOUT = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--synchronous", nargs="+", default=["NORMAL", "FULL"])
    parser.add_argument("--writers", nargs="+", type=int, default=[1])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for synchronous in args.synchronous:
            bare = sqlite_bare_rate(
                Path(tmp) / f"bare-{synchronous}.db", args.seconds, synchronous, BUSY_TIMEOUT
            )
            for writers in args.writers:
                url = f"sqlite:///{Path(tmp) / f'store-{synchronous}-{writers}.db'}"
                store, per_commit = anyio.run(
                    lambda u=url, s=synchronous, w=writers: sqlite_store_figures(
                        u, args.seconds, w, synchronous=s, busy_timeout=BUSY_TIMEOUT
                    )
                )
                results.append(
                    {
                        "synchronous": synchronous,
                        "writers": writers,
                        "store_events_per_s": round(store),
                        "writes_per_commit": round(per_commit, 1),
                        "stdlib_tx_per_s": round(bare),
                        "ratio": round(store / bare, 3),
                    }
                )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
