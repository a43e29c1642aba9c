"""``python -m bench [NAME ...] [--quick] [--out DIR] [--pg-url URL | --no-postgres]``.

``python -m bench --compare [NAME ...] [--out DIR] [--against FILE]``: the regression guard
(:mod:`bench.compare`). It runs the named benchmarks (by default every benchmark whose committed
results hold a guarded figure: a goal, or a row that says which way is better), prints every
figure worse than 0.9x of the one committed in ``bench/results.json`` (git's HEAD), and exits
non-zero if there is one. It writes results only to ``--out``, if given.
"""

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

from . import common, compare, report
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
    "peers": "bench.peers",
    "pools": "bench.pools",
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
    parser.add_argument(
        "--out", type=Path, default=None, help="default: bench/ (with --compare: write nothing unless given)"
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="the regression guard: compare each guarded figure with the committed bench/results.json;"
        " exit 1 if one is worse than 0.9x",
    )
    parser.add_argument(
        "--against",
        default=None,
        metavar="FILE",
        help="with --compare: the results to compare with (default: bench/results.json at git's HEAD)",
    )
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
    committed: dict[str, Any] = {}
    if args.compare:
        committed, source = compare.load_committed(args.against)
        names = args.names or compare.guarded_names(committed, list(BENCHMARKS))
        print(f"comparing {', '.join(names)} against {source}", flush=True)
    else:
        names = args.names or list(BENCHMARKS)
    out: Path | None = args.out
    if out is None and not args.compare:
        out = Path(__file__).resolve().parent
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
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="wl-bench-") as tmp:
        ctx = Context(quick=args.quick, pg_url=pg_url, tmp=Path(tmp), store_options=tuple(args.store_option))
        for name in names:
            try:
                result = run_one(name, ctx)
            except Exception as exc:  # one broken benchmark must not lose the others' results
                failed += 1
                print(f"== {name} failed: {exc!r}", file=sys.stderr, flush=True)
                continue
            results.append(result)
            if out is not None:
                write(out, [result], pg_url, command.strip())  # each result as soon as it is in
    if args.compare:
        new = {"benchmarks": {r.name: r.to_json() for r in results}}
        found = compare.compare(committed, new, names=[r.name for r in results])
        for why in found.skipped:
            print(f"not compared: {why}")
        for regression in found.regressions:
            print(f"WORSE: {regression.describe()}")
        print(
            f"{found.compared} figure(s) compared, {len(found.regressions)} worse than"
            f" {compare.TOLERANCE:g}x of the committed ones"
        )
        if found.regressions:
            return 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
