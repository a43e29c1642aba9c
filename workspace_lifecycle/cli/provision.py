"""``provision``: a provisioner (simulated, or a real process per workspace) until Ctrl-C."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..adapters.base import DEFAULT_LEASE_SECONDS, Store
from ..process_provisioner import ProcessProvisioner, UnusableRoot
from ..provisioner import SimulatedProvisioner
from ..runtime import Lifecycle
from ..values import AgentLifecycle
from ._shared import (
    CliError,
    Commands,
    add_build_times,
    add_db,
    command,
    database,
    follow,
    interruptible,
    opened,
    out,
    positive_seconds,
    watch_line,
)


def add_parser(commands: Commands) -> None:
    provision = command(
        commands,
        "provision",
        "run a provisioner (--simulate, or --process -- CMD ARGS) until Ctrl-C",
        "Claim pending builds in the database and complete them until Ctrl-C; state changes "
        "are printed to stderr. Choose exactly one provisioner: --simulate completes builds "
        "after a delay; --process runs each workspace as a real process of CMD ARGS in a "
        "directory of its own under --root, ready when its port answers. Workspace processes "
        "keep running after Ctrl-C; the next 'provision --process' on the same --root adopts "
        "them. Creates a missing SQLite file, so it can be started first on a fresh database.",
        handle,
    )
    provision.add_argument("--simulate", action="store_true", help="run the simulated provisioner")
    provision.add_argument(
        "--process",
        action="store_true",
        help="run each workspace as a real process: the command after -- (an argv, no shell; "
        "{port} in it and $PORT are the port its readiness probe connects to)",
    )
    add_db(provision)
    _simulate_options(provision)
    _process_options(provision)
    provision.add_argument(
        "workspace_command",
        nargs="*",
        metavar="-- CMD ARGS",
        help="with --process: the workspace command, e.g. -- python -m http.server {port} --bind 127.0.0.1",
    )


def _simulate_options(provision: argparse.ArgumentParser) -> None:
    add_build_times(provision, build=1.0, agent=0.5, agent_becomes="reach --agent")
    provision.add_argument(
        "--fail-rate", type=_probability, default=0.0, metavar="P", help="probability that a build fails (0)"
    )
    provision.add_argument(
        "--agent",
        type=_agent_state,
        default="ready",
        metavar="STATE",
        help="the lifecycle state agents reach: ready (default), start_error, start_timeout, ..., or none for no agent",
    )
    provision.add_argument(
        "--lease-seconds",
        type=positive_seconds,
        default=DEFAULT_LEASE_SECONDS,
        metavar="S",
        help="each claim's lease, renewed every third of it; a provisioner that stops renewing has "
        f"its builds failed this long after (default {DEFAULT_LEASE_SECONDS:g})",
    )


def _process_options(provision: argparse.ArgumentParser) -> None:
    group = provision.add_argument_group("with --process")
    group.add_argument(
        "--root",
        default="workspaces",
        metavar="DIR",
        help="the directory that holds one directory per workspace (./workspaces)",
    )
    group.add_argument(
        "--ready-timeout",
        type=positive_seconds,
        default=30.0,
        metavar="S",
        help="seconds until an agent whose port does not answer is start_timeout (30)",
    )
    group.add_argument(
        "--stop-grace",
        type=positive_seconds,
        default=5.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when a workspace is stopped (5)",
    )


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a probability between 0 and 1")
    return value


def _agent_state(text: str) -> str | None:
    if text == "none":
        return None
    try:
        return AgentLifecycle(text).value
    except ValueError:
        names = ", ".join(["none", *(a.value for a in AgentLifecycle)])
        raise argparse.ArgumentTypeError(f"{text!r} is not an agent lifecycle state ({names})") from None


def handle(args: argparse.Namespace) -> int:
    if args.simulate and args.process:
        raise CliError("use exactly one of --simulate and --process", 2)
    if not args.simulate and not args.process:
        raise CliError(
            "choose a provisioner: 'provision --simulate', or 'provision --process -- CMD ARGS' "
            "(a real provisioner calls the store's claim_build, finish_build and report_agent)",
            2,
        )
    if args.process:
        if not args.workspace_command:
            raise CliError(
                "--process needs the workspace command after --, e.g. "
                "'provision --process -- python -m http.server {port} --bind 127.0.0.1'",
                2,
            )
        if not args.root:
            raise CliError("--root must name a directory (it holds one directory per workspace), not ''", 2)
        args.root = str(Path(args.root).resolve())
        return interruptible(_process, database(args.db, create=True), args)
    if args.workspace_command:
        raise CliError(f"--simulate takes no command; got {' '.join(args.workspace_command)!r}", 2)
    return interruptible(_simulate, database(args.db, create=True), args)


async def _process(store: Store, args: argparse.Namespace) -> int:
    provisioner = ProcessProvisioner(
        store,
        root=args.root,
        command=args.workspace_command,
        ready_timeout=args.ready_timeout,
        stop_grace=args.stop_grace,
        lease_seconds=args.lease_seconds,
    )
    banner = (
        f"process provisioner on {store.url}: workspaces in {args.root}, command "
        f"{args.workspace_command}; Ctrl-C to stop (the workspace processes keep running)"
    )
    try:
        return await _serve(store, provisioner, banner)
    except UnusableRoot as exc:
        raise CliError(str(exc)) from None


async def _simulate(store: Store, args: argparse.Namespace) -> int:
    provisioner = SimulatedProvisioner(
        store,
        build_seconds=args.build_seconds,
        agent_seconds=args.agent_seconds,
        fail=args.fail_rate or None,
        agent=args.agent,
        lease_seconds=args.lease_seconds,
    )
    banner = (
        f"simulated provisioner on {store.url}: builds take {args.build_seconds:g} s, agents reach "
        f"{args.agent or 'no agent'} after {args.agent_seconds:g} s, "
        f"fail rate {args.fail_rate:g}; Ctrl-C to stop"
    )
    return await _serve(store, provisioner, banner)


async def _serve(store: Store, provisioner: ProcessProvisioner | SimulatedProvisioner, banner: str) -> int:
    """Run ``provisioner`` on ``store`` until cancelled, every state change on stderr."""
    async with opened(store), provisioner, Lifecycle(store) as lc:
        out(banner, sys.stderr)
        await follow(lc, None, lambda change: out(watch_line(change), sys.stderr))
    return 0
