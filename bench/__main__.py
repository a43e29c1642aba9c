"""``python -m bench [NAME ...] [--quick] [--out DIR] [--pg-url URL | --no-postgres]``."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common, report
from .common import Context, Result

#: benchmark name -> module (each has ``run(ctx) -> Result``).
BENCHMARKS = {
    "wakeup": "bench.wakeup",
    "dbwork": "bench.dbwork",
    "engine": "bench.overhead",
    "throughput": "bench.throughput",
    "scale": "bench.scale",
    "contention": "bench.contention",
    "deadlines": "bench.deadlines",
    "leases": "bench.leases",
    "replicas": "bench.replicas",
}


def run_one(name: str, ctx: Context) -> Result:
    module = importlib.import_module(BENCHMARKS[name])
    print(f"== {name}{' (quick)' if ctx.quick else ''}: {module.__doc__.splitlines()[0]}", flush=True)
    load = common.loadavg()
    t0 = time.monotonic()
    result: Result = module.run(ctx)
    result.seconds = time.monotonic() - t0
    result.load_before = load
    result.load_after = common.loadavg()
    return result


def write(out: Path, results: list[Result], pg_url: str | None, command: str) -> dict[str, Any]:
    doc = report.merge(out, common.machine(pg_url), command, [r.to_json() for r in results])
    replicas_png = report.plot_replicas(out, doc)
    md = report.write_markdown(out, doc)
    png = report.plot(out, doc)
    print(
        f"wrote {out / 'results.json'}, {md}"
        + (f", {png}" if png else " (no plot: it needs wakeup results and matplotlib)")
        + (f", {replicas_png}" if replicas_png else "")
    )
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").strip())
    parser.add_argument(
        "names", nargs="*", choices=[[], *BENCHMARKS], metavar="NAME", help=", ".join(BENCHMARKS)
    )
    parser.add_argument("--quick", action="store_true", help="the tiny smoke mode (seconds, not minutes)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="default: bench/")
    parser.add_argument("--pg-url", default=common.DEFAULT_PG_URL)
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL parts")
    parser.add_argument(
        "--store-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a query parameter added to the PostgreSQL store URLs of `replicas` (repeatable);"
        " one the store does not know is dropped with a note",
    )
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    for option in args.store_option:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=[^&=]*", option):
            parser.error(f"--store-option takes KEY=VALUE, not {option!r}")
    pg_url = None if args.no_postgres else args.pg_url
    if pg_url is not None and not common.pg_reachable(pg_url):
        print(f"PostgreSQL at {pg_url} is unreachable: skipping its parts", file=sys.stderr)
        pg_url = None
    command = "python -m bench " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    failed = 0
    with tempfile.TemporaryDirectory(prefix="wl-bench-") as tmp:
        ctx = Context(quick=args.quick, pg_url=pg_url, tmp=Path(tmp), store_options=tuple(args.store_option))
        for name in names:
            try:
                result = run_one(name, ctx)
            except Exception as exc:  # one broken benchmark must not lose the others' results
                failed += 1
                print(f"== {name} failed: {exc!r}", file=sys.stderr, flush=True)
                continue
            write(args.out, [result], pg_url, command.strip())  # each result as soon as it is in
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
