"""The ``workspace-lifecycle`` command line (also ``python -m workspace_lifecycle``).

Commands: ``demo`` (a scripted chat, printing each state change live), ``diagram``, ``status``,
``watch``, the requests ``create``, ``start``, ``stop`` and ``delete``, ``provision --simulate``
and ``mcp``. Every command that uses a store takes ``--db URL`` (default: the environment variable
``WORKSPACE_LIFECYCLE_DB``, else the SQLite file ``./workspace-lifecycle.db``), so two terminals on
one file work together: ``provision --simulate`` in one, ``create`` and ``start`` in the other.

A missing SQLite file is created only by the commands that write on their own (``create``,
``demo``, ``provision``, ``mcp``); the others (``status``, ``watch``, ``start``, ``stop``,
``delete``) refuse it, since no chat can be there yet.

A user's mistake (a bad URL, an unreadable database, an unknown command) is one sentence on
stderr and a non-zero exit status, never a traceback: 2 for a usage error, 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from . import __version__
from .adapters import open_store
from .adapters.base import DEFAULT_LEASE_SECONDS, ChatRow, Store
from .diagram import FORMATS, GraphvizMissingError, PydotMissingError, render
from .errors import WorkspaceLifecycleError
from .machine import derive_state
from .process_provisioner import ProcessProvisioner
from .provisioner import SimulatedFailure, SimulatedProvisioner, quota_failure
from .runtime import Lifecycle
from .values import (
    AgentLifecycle,
    Build,
    JobStatus,
    Policy,
    Reason,
    StateChange,
    ToolResult,
    Transition,
    WorkspaceFacts,
    WorkspaceState,
)

__all__ = ["main"]

PROG = "workspace-lifecycle"
DEFAULT_DB = "sqlite:///workspace-lifecycle.db"
DB_ENV = "WORKSPACE_LIFECYCLE_DB"
#: Seconds a request waits with its build still pending before it says no provisioner claimed it.
PENDING_HINT_ENV = "WORKSPACE_LIFECYCLE_PENDING_HINT_SECONDS"
PENDING_HINT_SECONDS = 10.0
_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
DB_HELP = (
    "store URL: sqlite:///relative.db, sqlite:////absolute.db, memory://, postgresql://... "
    f"(default: ${DB_ENV}, else {DEFAULT_DB})"
)


class CliError(Exception):
    """A user's mistake or an environment problem: one sentence, an exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- the parser -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (not the usage block plus a line)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a probability between 0 and 1")
    return value


def _ident(text: str) -> str:
    if not text or "\x00" in text:
        raise argparse.ArgumentTypeError("must be a non-empty string without NUL bytes")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes the locale could not decode arrive as lone surrogates
        raise argparse.ArgumentTypeError("must be valid UTF-8 text") from None
    return text


def _agent_state(text: str) -> str | None:
    if text == "none":
        return None
    try:
        return AgentLifecycle(text).value
    except ValueError:
        names = ", ".join(["none", *(a.value for a in AgentLifecycle)])
        raise argparse.ArgumentTypeError(f"{text!r} is not an agent lifecycle state ({names})") from None


_REQUEST_HELP = (
    " Progress goes to stderr while it waits: each state change, and on a terminal a live line "
    "with the state and the time waited; after ~10 s with the build still pending, a hint that "
    "no provisioner has claimed it. The answer goes to stdout (--json: as one JSON object); an "
    "error answer, such as an unknown chat, is its sentence on stderr. Something must run the "
    "builds: 'provision --simulate' in another terminal, on the same --db. The exit status is "
    "1 when the answer is an error or reports a failed build."
)

_REQUESTS = [
    (
        "create",
        "create a chat's workspace (registering the chat) and print the answer",
        "Register CHAT for OWNER if it is new, then call the create_workspace tool for it. "
        "Creates a missing SQLite file, so it works on a fresh database.",
    ),
    (
        "start",
        "call start_workspace for a chat and print the answer",
        "Call the start_workspace tool for CHAT as OWNER. Refuses a missing SQLite file.",
    ),
    (
        "stop",
        "call stop_workspace for a chat and print the answer",
        "Call the stop_workspace tool for CHAT as OWNER. Refuses a missing SQLite file.",
    ),
    (
        "delete",
        "call delete_workspace for a chat and print the answer",
        "Call the delete_workspace tool for CHAT as OWNER. Refuses a missing SQLite file.",
    ),
]


def _pending_hint_default() -> float:
    text = os.environ.get(PENDING_HINT_ENV)
    if text:
        with contextlib.suppress(argparse.ArgumentTypeError):
            return _seconds(text)
    return PENDING_HINT_SECONDS


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "A chat's workspace as an explicit, event-driven state machine. Run 'demo' to watch a "
            "scripted chat; 'provision --simulate' in one terminal and 'create' and 'start' in "
            "another to drive one by hand."
        ),
        epilog=f"'{PROG} COMMAND --help' explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=summary, description=description)
        return sub

    default_db = os.environ.get(DB_ENV) or DEFAULT_DB

    def db(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--db", default=default_db, metavar="URL", help=DB_HELP)

    def policy_options(sub: argparse.ArgumentParser, what: str) -> None:
        group = sub.add_argument_group(f"between turns: {what}")
        group.add_argument(
            "--idle-stop-after",
            type=_positive_seconds,
            metavar="S",
            help="stop the workspace after S seconds without activity (default: never)",
        )
        group.add_argument(
            "--delete-after-stopped",
            type=_positive_seconds,
            metavar="S",
            help="delete the workspace after S seconds stopped (default: never)",
        )

    demo = command(
        "demo",
        "run a scripted chat, printing each state change live",
        "A scripted chat on a simulated provisioner: register, create, stop, three concurrent "
        "starts (one build, one build_id), a build that fails and its retry, then the time "
        "between turns: the chat goes quiet, its workspace is stopped for idleness, and the next "
        "turn's ensure_running starts it again. Each state change "
        "is printed as it happens, with its latency (from the event's write to its print); the "
        "tools' JSON answers, as the model sees them, come last. Runs in a few seconds. If the "
        "chat 'demo' already exists in the database, a new chat id is used, so reruns work.",
    )
    db(demo)
    demo.add_argument("--fresh", action="store_true", help="delete the SQLite file (and its -wal/-shm) first")
    demo.add_argument(
        "--build-seconds", type=_seconds, default=0.3, metavar="S", help="how long each build takes (0.3)"
    )
    demo.add_argument(
        "--agent-seconds",
        type=_seconds,
        default=0.2,
        metavar="S",
        help="how long the agent takes to become ready after a start build (0.2)",
    )
    demo.add_argument(
        "--idle-seconds",
        type=_seconds,
        default=1.0,
        metavar="S",
        help="the chat's idle_stop_after in the between-turns part (1.0)",
    )
    demo.add_argument(
        "--process",
        action="store_true",
        help="run the chat on real processes instead: each workspace a small HTTP server "
        "(python -m http.server) in a temporary directory, ready when its port answers; prints "
        "its URL and one HTTP response (--build-seconds and --agent-seconds do not apply)",
    )
    demo.set_defaults(handler=_demo)

    diagram = command(
        "diagram",
        "print the state machine's diagram",
        "Render the workspace state machine with python-statemachine's own renderers. mermaid "
        "needs nothing more; dot needs pydot (pip install 'workspace-lifecycle[diagrams]'); svg "
        "also needs Graphviz's 'dot' program.",
    )
    diagram.add_argument("--format", choices=FORMATS, default="mermaid", help="output format (mermaid)")
    diagram.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    diagram.set_defaults(handler=_diagram)

    status = command(
        "status",
        "list chats with their workspace state, latest build and agent",
        "A table of every chat in the database: owner, workspace state (derived from the stored "
        "rows), the latest build (number, transition, job status) and the agent's lifecycle. "
        "Refuses a missing SQLite file (it does not create one).",
    )
    db(status)
    status.add_argument("--json", action="store_true", help="one JSON object per chat, one per line")
    status.set_defaults(handler=_status)

    watch = command(
        "watch",
        "print state changes live until Ctrl-C",
        "Print every state change of every chat (or of one, with --chat) as it happens, with "
        "its timestamp, until Ctrl-C. Works across processes on a shared SQLite file. Refuses "
        "a missing SQLite file (it does not create one).",
    )
    db(watch)
    watch.add_argument("--chat", type=_ident, metavar="CHAT", help="only this chat")
    watch.add_argument("--json", action="store_true", help="one JSON object per state change, one per line")
    watch.set_defaults(handler=_watch)

    for tool, summary, description in _REQUESTS:
        request = command(tool, summary, description + _REQUEST_HELP)
        request.add_argument("chat", type=_ident, metavar="CHAT", help="the chat id")
        request.add_argument("--owner", type=_ident, required=True, help="the chat's owner (required)")
        if tool == "create":
            request.add_argument(
                "--name", metavar="NAME", help="the workspace name (invalid or missing: generated)"
            )
            policy_options(request, "the chat's policy (stored with it; replaces the one it has)")
        db(request)
        request.add_argument(
            "--no-wait", action="store_true", help="answer at once after the request is decided (wait=false)"
        )
        request.add_argument("--json", action="store_true", help="print the answer as one JSON object")
        request.add_argument(
            "--timeout",
            type=_positive_seconds,
            default=600.0,
            metavar="S",
            help="give up waiting for the build, and for the agent, after S seconds each (600)",
        )
        request.add_argument(  # hidden: lets a test see the hint at once
            "--pending-hint-after",
            type=_seconds,
            default=_pending_hint_default(),
            help=argparse.SUPPRESS,
        )
        request.set_defaults(handler=_request, tool=tool)

    provision = command(
        "provision",
        "run a provisioner (--simulate, or --process -- CMD ARGS) until Ctrl-C",
        "Claim pending builds in the database and complete them until Ctrl-C; state changes "
        "are printed to stderr. Choose exactly one provisioner: --simulate completes builds "
        "after a delay; --process runs each workspace as a real process of CMD ARGS in a "
        "directory of its own under --root, ready when its port answers. Workspace processes "
        "keep running after Ctrl-C; the next 'provision --process' on the same --root adopts "
        "them. Creates a missing SQLite file, so it can be started first on a fresh database.",
    )
    provision.add_argument("--simulate", action="store_true", help="run the simulated provisioner")
    provision.add_argument(
        "--process",
        action="store_true",
        help="run each workspace as a real process: the command after -- (an argv, no shell; "
        "{port} in it and $PORT are the port its readiness probe connects to)",
    )
    db(provision)
    provision.add_argument(
        "--build-seconds", type=_seconds, default=1.0, metavar="S", help="how long each build takes (1.0)"
    )
    provision.add_argument(
        "--agent-seconds",
        type=_seconds,
        default=0.5,
        metavar="S",
        help="how long the agent takes to reach --agent after a start build (0.5)",
    )
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
        type=_positive_seconds,
        default=DEFAULT_LEASE_SECONDS,
        metavar="S",
        help="each claim's lease, renewed every third of it; a provisioner that stops renewing has "
        f"its builds failed this long after (default {DEFAULT_LEASE_SECONDS:g})",
    )
    process_group = provision.add_argument_group("with --process")
    process_group.add_argument(
        "--root",
        default="workspaces",
        metavar="DIR",
        help="the directory that holds one directory per workspace (./workspaces)",
    )
    process_group.add_argument(
        "--ready-timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="S",
        help="seconds until an agent whose port does not answer is start_timeout (30)",
    )
    process_group.add_argument(
        "--stop-grace",
        type=_positive_seconds,
        default=5.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when a workspace is stopped (5)",
    )
    provision.add_argument(
        "workspace_command",
        nargs="*",
        metavar="-- CMD ARGS",
        help="with --process: the workspace command, e.g. -- python -m http.server {port} --bind 127.0.0.1",
    )
    provision.set_defaults(handler=_provision)

    mcp = command(
        "mcp",
        "serve the workspace tools over MCP (stdio)",
        "Serve the workspace tools to an MCP client over stdin/stdout for OWNER. With --chat the "
        "server is bound to CHAT (registered for OWNER at start-up) and its tools take no "
        "chat_id; without it the tools take a chat_id naming one of OWNER's chats, as the chat "
        "runtime registered them. Another owner's chat is answered as an unknown one. Creates "
        "a missing SQLite file. Needs the mcp extra: pip install 'workspace-lifecycle[mcp]'.",
    )
    db(mcp)
    mcp.add_argument("--owner", type=_ident, required=True, help="the owner the tools act for (required)")
    mcp.add_argument("--chat", type=_ident, metavar="CHAT", help="the one chat the tools act on")
    policy_options(mcp, "for the chats the server registers; it also fires every chat's deadlines")
    mcp.set_defaults(handler=_mcp)
    return parser


# --- entry point ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 1
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # known kinds are reported; the rest re-raised
        error = _user_error(exc)
        if error is None:
            raise
        if error.code == _BROKEN_PIPE:
            # The reader went away (``| head``): stop quietly, as Unix tools do, and keep the
            # interpreter's final flush of stdout from failing again.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return error.code
        print(f"{PROG}: {error}", file=sys.stderr)
        return error.code


def _user_error(exc: BaseException) -> CliError | None:
    """The one sentence for a user's mistake, or ``None`` for a bug (which keeps its traceback)."""
    if isinstance(exc, BaseExceptionGroup):
        # The commands run on asyncio, and this runs after the loop ended: name the class.
        # Several tasks may fail on the same cause (a corrupt row read by the request and by
        # its progress watcher): report the first when every one of them is a user's problem.
        leaves = [e for e in _leaves(exc) if not isinstance(e, asyncio.CancelledError)]
        errors = [_user_error(leaf) for leaf in leaves]
        if not errors or any(error is None for error in errors):
            return None
        return errors[0]
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, (GraphvizMissingError, PydotMissingError, WorkspaceLifecycleError)):
        return CliError(str(exc))
    if isinstance(exc, sqlite3.DatabaseError):
        return CliError(f"the database cannot be used: {exc}")
    if isinstance(exc, BrokenPipeError):
        return CliError("broken pipe", _BROKEN_PIPE)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return CliError(f"{exc.strerror or exc}{where}")
    return None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _run(fn: Callable[..., Awaitable[int]], *args: Any) -> int:
    result: int = anyio.run(fn, *args, backend="asyncio")
    return result


def _interruptible(fn: Callable[..., Awaitable[int]], *args: Any) -> int:
    """Run until done or Ctrl-C; Ctrl-C is the normal way to stop, so it exits 0."""
    try:
        return _run(fn, *args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 0


# --- stores -----------------------------------------------------------------------------------


def _store(url: str) -> Store:
    try:
        return open_store(url)
    except ValueError as exc:
        raise CliError(str(exc), 2) from None
    except ImportError as exc:
        missing = exc.name or ""
        if missing.startswith("workspace_lifecycle.adapters.sqlite"):
            raise CliError(
                f"the SQLite store is not part of this installation, so {url} cannot be opened; "
                "pass --db memory:// instead"
            ) from None
        extra = "postgres" if url.lower().startswith("postgres") else None
        hint = f": pip install 'workspace-lifecycle[{extra}]'" if extra else ""
        raise CliError(f"the store for {url} needs the {missing or 'missing'} package{hint}") from None


@contextlib.asynccontextmanager
async def _opened(store: Store) -> AsyncIterator[Store]:
    """``async with store``, where a ValueError from opening it (a directory instead of a file, a
    missing parent directory) is the user's mistake, reported in one sentence."""
    try:
        await store.open()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        yield store
    finally:
        await store.aclose()


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``None`` for any other scheme)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/"):
        return None
    path = rest[1:].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def _database(url: str, *, create: bool) -> Store:
    """The store at ``url``, after the checks a SQLite path needs, each one sentence.

    Only a command that writes on its own (``create``) may create a missing file; a command that
    reads or acts on an existing chat refuses it instead of leaving an empty file behind a typo.
    """
    store = _store(url)  # a bad URL first (exit 2)
    path = _sqlite_path(url)
    if path is None:
        return store
    if path.is_dir():
        raise CliError(f"the SQLite path {path} is a directory, not a database file")
    if not path.exists():
        if not create:
            raise CliError(
                f"no database at {path}; '{PROG} create CHAT --owner OWNER' creates it "
                f"(or pass --db URL, or set {DB_ENV})"
            )
        if not path.parent.is_dir():
            raise CliError(f"cannot create the database {path}: directory {path.parent} does not exist")
    return store


# --- printing state changes -------------------------------------------------------------------


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _change_line(change: StateChange) -> str:
    event = change.event.value if change.event is not None else "resync"
    reason = change.reason.value if change.reason is not None else "-"
    return (
        f"{change.from_state.value:>12} -> {change.to_state.value:<12} "
        f"build {change.build_number:<3} {event:<15} {reason:<9}"
    )


async def _follow(
    lc: Lifecycle,
    chat: str | None,
    emit: Callable[[StateChange], None],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``emit`` for every state change of ``chat`` (every chat if ``None``) until cancelled."""
    changes = lc.watch(chat)
    try:
        # ``watch`` registers its subscriber synchronously on the first step of the iteration,
        # so signalling "started" just before it guarantees no change is missed after it.
        task_status.started()
        async for change in changes:
            emit(change)
    finally:
        await changes.aclose()


async def _settle() -> None:
    """Let the printing task catch up with the changes already published (one per checkpoint)."""
    for _ in range(32):
        await anyio.lowlevel.checkpoint()


def _out(text: str = "", stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


# --- demo -------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    store = _store(args.db)  # a bad URL is reported before anything is deleted; the demo creates a file
    if args.fresh:
        path = _sqlite_path(args.db)
        if path is None and not args.db.lower().startswith("memory"):
            raise CliError("--fresh only applies to a sqlite:/// database", 2)
        if path is not None:
            for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
                name.unlink(missing_ok=True)
    if args.process:
        return _run(_demo_process_async, store, args)
    return _run(_demo_async, store, args)


class _Failing:
    """The provisioner's ``fail`` predicate: fails the one build it is armed with, as a quota
    failure with Coder's structured fields (what a model is shown when its budget is spent)."""

    def __init__(self) -> None:
        self.target: tuple[str, int] | None = None

    def __call__(self, build: Build) -> SimulatedFailure | None:
        if self.target == (build.workspace_id, build.number):
            self.target = None
            return quota_failure(credits_consumed=12, budget=10)
        return None


async def _demo_async(store: Store, args: argparse.Namespace) -> int:
    owner = "alice"
    failing = _Failing()
    answers: list[tuple[str, ToolResult]] = []
    t0 = time.monotonic()

    idle_stopped = anyio.Event()

    def show(change: StateChange) -> None:
        latency = (time.time() - change.at) * 1000
        _out(f"    +{time.monotonic() - t0:6.3f}s  {_change_line(change)} latency {latency:6.1f} ms")
        if change.to_state is WorkspaceState.STOPPED and change.reason is Reason.IDLE:
            idle_stopped.set()

    def answered(label: str, result: ToolResult) -> None:
        answers.append((label, result))
        data = result.data
        if result.is_error or "error" in data:
            summary = f"error: {data['error']}"
        else:
            keys = ("started", "stopped", "created", "no_build", "agent_status", "startup_scripts")
            flags = ", ".join(f"{k}={str(data[k]).lower()}" for k in keys if k in data)
            summary = f"{flags}, build_id={data.get('build_id', '-')}"
        _out(f"  = {label}: {summary}")

    provisioner = SimulatedProvisioner(
        store,
        build_seconds=args.build_seconds,
        agent_seconds=args.agent_seconds,
        fail=failing,
        worker="demo",
    )
    async with _opened(store), provisioner, Lifecycle(store) as lc:
        chat = await _unused_chat(store, "demo")
        _out(f"{PROG} demo: chat {chat!r} of {owner!r} on {store.url or args.db}")
        _out(
            f"(simulated provisioner in this process: builds take {args.build_seconds:g} s, "
            f"agents {args.agent_seconds:g} s; latency = event written -> printed here)"
        )
        async with anyio.create_task_group() as tg:
            await tg.start(_follow, lc, chat, show)

            _out(f"\n> register_chat({chat!r}, owner={owner!r})")
            await lc.register_chat(chat, owner=owner)

            _out("\n> create_workspace(name='dev')")
            answered("create_workspace", await lc.create_workspace(chat, owner=owner, name="dev"))
            await _settle()

            _out("\n> stop_workspace()")
            answered("stop_workspace", await lc.stop_workspace(chat, owner=owner))
            await _settle()

            _out("\n> start_workspace() x3, concurrently (one start, asked twice more meanwhile)")
            starts: list[ToolResult | None] = [None, None, None]

            async def start(i: int) -> None:
                starts[i] = await lc.start_workspace(chat, owner=owner)

            async with anyio.create_task_group() as callers:
                for i in range(3):
                    callers.start_soon(start, i)
            await _settle()
            results = [r for r in starts if r is not None]
            for i, result in enumerate(results, 1):
                answered(f"start_workspace #{i}", result)
            build_ids = {r.data.get("build_id") for r in results}
            _out(f"  = {len(results)} answers, {len(build_ids)} build: {', '.join(map(str, build_ids))}")
            if len(build_ids) != 1 or None in build_ids:
                raise CliError(f"the concurrent starts were not answered with one build: {build_ids}")

            _out("\n> stop_workspace()")
            answered("stop_workspace", await lc.stop_workspace(chat, owner=owner))
            await _settle()

            chat_row = await store.get_chat(chat)
            assert chat_row is not None and chat_row.workspace_id is not None
            facts = await store.workspace_facts(chat_row.workspace_id)
            number = facts.latest_build.number + 1 if facts.latest_build else 1
            failing.target = (chat_row.workspace_id, number)
            _out(f"\n> start_workspace()  (the provisioner is told to fail build {number}: over quota)")
            answered("start_workspace (fails)", await lc.start_workspace(chat, owner=owner))
            await _settle()

            _out("\n> start_workspace()  (the retry)")
            answered("start_workspace (retry)", await lc.start_workspace(chat, owner=owner))
            await _settle()

            await _between_turns(lc, chat, owner, args.idle_seconds, idle_stopped, answered)
            tg.cancel_scope.cancel()

        state = await lc.state(chat)
    _out(f"\nfinal state of {chat!r}: {state.value} ({time.monotonic() - t0:.2f} s)")
    _out("\nThe tools' JSON answers, as the model sees them:")
    width = max(len(label) for label, _ in answers)
    for label, result in answers:
        flag = " (is_error)" if result.is_error else ""
        _out(f"  {label:<{width}}  {result.text}{flag}")
    return 0


async def _demo_process_async(store: Store, args: argparse.Namespace) -> int:
    """The scripted chat on real processes: each workspace a small HTTP server."""
    owner = "alice"
    t0 = time.monotonic()
    command = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"]

    crashed = anyio.Event()

    def show(change: StateChange) -> None:
        latency = (time.time() - change.at) * 1000
        _out(f"    +{time.monotonic() - t0:6.3f}s  {_change_line(change)} latency {latency:6.1f} ms")
        if change.from_state is WorkspaceState.AGENT_READY and change.to_state is WorkspaceState.RUNNING:
            crashed.set()

    def answered(label: str, result: ToolResult) -> None:
        _out(f"  = {label}: {result.text}")

    with tempfile.TemporaryDirectory(prefix="workspace-lifecycle-demo-") as root:
        provisioner = ProcessProvisioner(store, root=root, command=command, stop_grace=2.0)
        async with _opened(store), provisioner, Lifecycle(store) as lc:
            chat = await _unused_chat(store, "demo")
            _out(f"{PROG} demo --process: chat {chat!r} of {owner!r} on {store.url or args.db}")
            _out(f"(each workspace is a real process, {' '.join(command)}, in a directory under {root})")
            async with anyio.create_task_group() as tg:
                await tg.start(_follow, lc, chat, show)
                await lc.register_chat(chat, owner=owner)

                _out("\n> create_workspace(name='dev')  (ready once its port answers)")
                answered("create_workspace", await lc.create_workspace(chat, owner=owner, name="dev"))
                await _settle()
                first = await _show_server(store, chat, provisioner)

                _out("\n> stop_workspace()  (SIGTERM to the server; its directory stays)")
                answered("stop_workspace", await lc.stop_workspace(chat, owner=owner))
                await _settle()
                _out(f"  = pid {first} {'is gone' if not _pid_exists(first) else 'still runs'}")

                _out("\n> start_workspace()  (a new process)")
                answered("start_workspace", await lc.start_workspace(chat, owner=owner))
                await _settle()
                second = await _show_server(store, chat, provisioner)

                _out(f"\n> kill -9 {second}  (the server crashes: its end is an event, the agent turns off)")
                os.kill(second, signal.SIGKILL)
                with anyio.fail_after(30):
                    await crashed.wait()
                await _settle()

                _out("\n> delete_workspace()  (the process ends and its directory is removed)")
                answered("delete_workspace", await lc.delete_workspace(chat, owner=owner))
                await _settle()
                _out(f"  = pid {second} {'is gone' if not _pid_exists(second) else 'still runs'}")
                tg.cancel_scope.cancel()
            state = await lc.state(chat)
    _out(f"\nfinal state of {chat!r}: {state.value} ({time.monotonic() - t0:.2f} s)")
    return 0


async def _show_server(store: Store, chat: str, provisioner: ProcessProvisioner) -> int:
    """Print the workspace's URL and the status line its server answers; return its pid."""
    row = await store.get_chat(chat)
    assert row is not None and row.workspace_id is not None
    state = json.loads((provisioner.workspace_dir(row.workspace_id) / "workspace.json").read_text())
    url = f"http://127.0.0.1:{state['port']}/"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            return (
                f"HTTP/{response.version // 10}.{response.version % 10} {response.status} {response.reason}"
            )

    line = await anyio.to_thread.run_sync(fetch)
    _out(f"  = the workspace (pid {state['pid']}) answers at {url}: {line}")
    pid: int = state["pid"]
    return pid


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _between_turns(
    lc: Lifecycle,
    chat: str,
    owner: str,
    idle: float,
    idle_stopped: anyio.Event,
    answered: Callable[[str, ToolResult], None],
) -> None:
    """The demo's last part: an idle stop (a deadline in the store), then the next turn."""
    _out(f"\n> register_chat(policy=Policy(idle_stop_after={idle:g}))  (the turn ends; the chat goes quiet)")
    await lc.register_chat(chat, owner=owner, policy=Policy(idle_stop_after=idle))
    deadline = await lc.touch(chat, owner=owner)
    if deadline is None:
        raise CliError("the workspace does not run: no idle deadline was armed")
    _out(f"  = touch(): the idle stop is due at {_clock(deadline.at)}, a row in the store; nothing polls")
    with anyio.fail_after(idle + 30):
        await idle_stopped.wait()
    await _settle()
    _out("\n> ensure_running()  (the next turn begins: resume before the model speaks)")
    answered("ensure_running", await lc.ensure_running(chat, owner=owner))
    await _settle()


async def _unused_chat(store: Store, base: str) -> str:
    chat, n = base, 1
    while await store.get_chat(chat) is not None:
        n += 1
        chat = f"{base}-{n}"
    return chat


# --- diagram ----------------------------------------------------------------------------------


def _diagram(args: argparse.Namespace) -> int:
    output = render(args.format)
    data = output.encode("utf-8") if isinstance(output, str) else output
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


# --- status -----------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    return _run(_status_async, _database(args.db, create=False), args.json)


def _build_cell(facts: WorkspaceFacts | None) -> str:
    build = facts.latest_build if facts is not None else None
    if build is None:
        return "-"
    return f"#{build.number} {build.transition.value} {build.status.value}"


def _agent_cell(facts: WorkspaceFacts | None) -> str:
    build = facts.latest_build if facts is not None else None
    if facts is None or build is None or facts.workspace.deleted:
        return "-"
    if facts.agent is not None and facts.agent.build_number == build.number:
        return facts.agent.lifecycle.value
    if build.transition is Transition.START and build.status is JobStatus.SUCCEEDED and not build.has_agent:
        return "no_agent"
    return "-"


def _deadline_cell(facts: WorkspaceFacts | None, now: float) -> str:
    deadline = facts.workspace.deadline if facts is not None else None
    if deadline is None:
        return "-"
    action = "idle stop" if deadline.reason is Reason.IDLE else "delete (retention)"
    left = deadline.at - now
    when = f"in {_duration(left)}" if left >= 0 else f"{_duration(-left)} overdue"
    return f"{action} at {_clock(deadline.at)} ({when})"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _state_cell(row: ChatRow) -> str:
    if row.error is not None:
        return f"unreadable ({row.error})"
    return derive_state(row.facts).value if row.facts is not None else "no_workspace"


def _deadline_json(facts: WorkspaceFacts | None) -> dict[str, Any] | None:
    deadline = facts.workspace.deadline if facts is not None else None
    if deadline is None:
        return None
    return {"at": deadline.at, "reason": deadline.reason.value, "transition": deadline.transition.value}


async def _status_async(store: Store, as_json: bool) -> int:
    async with _opened(store):
        rows = sorted(await store.list_chats(), key=lambda r: r.chat.chat_id)
    if as_json:
        for row in rows:
            build = row.facts.latest_build if row.facts is not None else None
            agent = _agent_cell(row.facts)
            _out_json(
                {
                    "chat_id": row.chat.chat_id,
                    "owner": row.chat.owner,
                    "state": _state_cell(row),
                    "latest_build": None
                    if build is None
                    else {
                        "build_id": build.build_id,
                        "number": build.number,
                        "transition": build.transition.value,
                        "status": build.status.value,
                    },
                    "agent": None if agent == "-" else agent,
                    "deadline": _deadline_json(row.facts),
                    "policy": {
                        "idle_stop_after": row.chat.policy.idle_stop_after,
                        "delete_after_stopped": row.chat.policy.delete_after_stopped,
                    },
                }
            )
        return 0
    if not rows:
        _out(f"no chats in {store.url}")
        return 0
    table = [("CHAT", "OWNER", "STATE", "LATEST BUILD", "AGENT", "NEXT DEADLINE")]
    now = time.time()
    for row in rows:
        state = _state_cell(row)
        table.append(
            (
                row.chat.chat_id,
                row.chat.owner,
                state,
                _build_cell(row.facts),
                _agent_cell(row.facts),
                _deadline_cell(row.facts, now),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        _out("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


# --- watch ------------------------------------------------------------------------------------


def _watch(args: argparse.Namespace) -> int:
    return _interruptible(_watch_async, _database(args.db, create=False), args.chat, args.json)


def _watch_line(change: StateChange) -> str:
    return f"{_clock(change.at)}  {change.chat_id}  {_change_line(change).rstrip()}"


def _change_json(change: StateChange) -> dict[str, Any]:
    return {
        "at": change.at,
        "chat_id": change.chat_id,
        "workspace_id": change.workspace_id,
        "build_number": change.build_number,
        "from": change.from_state.value,
        "to": change.to_state.value,
        "event": change.event.value if change.event is not None else "resync",
        "reason": change.reason.value if change.reason is not None else None,
        "seq": change.seq,
    }


def _out_json(data: dict[str, Any]) -> None:
    _out(json.dumps(data, sort_keys=True))


async def _watch_async(store: Store, chat: str | None, as_json: bool) -> int:
    async with _opened(store), Lifecycle(store, fire_deadlines=False) as lc:
        what = f"chat {chat!r}" if chat else "every chat"
        _out(f"watching {what} on {store.url}; Ctrl-C to stop", sys.stderr)
        if as_json:
            await _follow(lc, chat, lambda change: _out_json(_change_json(change)))
        else:
            await _follow(lc, chat, lambda change: _out(_watch_line(change)))
    return 0


# --- requests: create, start, stop, delete -----------------------------------------------------

#: The build each request fires (create: a start build of a new workspace).
_REQUEST_TRANSITION = {"start": Transition.START, "stop": Transition.STOP, "delete": Transition.DELETE}


def _policy(args: argparse.Namespace) -> Policy | None:
    """The policy the between-turns options give, or ``None`` when neither was given."""
    idle, retain = args.idle_stop_after, args.delete_after_stopped
    if idle is None and retain is None:
        return None
    return Policy(idle_stop_after=idle, delete_after_stopped=retain)


def _request(args: argparse.Namespace) -> int:
    return _run(_request_async, _database(args.db, create=args.tool == "create"), args)


async def _call(lc: Lifecycle, args: argparse.Namespace) -> ToolResult:
    chat, owner, wait = args.chat, args.owner, not args.no_wait
    if args.tool == "create":
        # Idempotent; another owner's chat is refused. A policy given here replaces the chat's.
        await lc.register_chat(chat, owner=owner, policy=_policy(args))
        return await lc.create_workspace(chat, owner=owner, name=args.name, wait=wait)
    if args.tool == "start":
        return await lc.start_workspace(chat, owner=owner, wait=wait)
    if args.tool == "stop":
        return await lc.stop_workspace(chat, owner=owner, wait=wait)
    return await lc.delete_workspace(chat, owner=owner, wait=wait)


async def _request_async(store: Store, args: argparse.Namespace) -> int:
    # A one-shot command fires no deadlines (the long-running processes do: mcp, provision).
    async with (
        _opened(store),
        Lifecycle(store, build_timeout=args.timeout, agent_timeout=args.timeout, fire_deadlines=False) as lc,
    ):
        progress = _Progress(lc, args.chat, args.owner, args.pending_hint_after, args.db)
        async with anyio.create_task_group() as tg:
            await tg.start(progress.run)
            result = await _call(lc, args)
            await _settle()
            tg.cancel_scope.cancel()
        progress.close()
        if args.json:
            _out_json(result.data)
        elif result.is_error:
            raise CliError(result.text)
        else:
            _out(_summary(args.chat, result))
        if result.is_error:
            return 1
        in_flight = await _other_build_in_flight(store, args.chat, args.tool) if args.no_wait else None
        if in_flight is not None:
            # With wait=False during another kind of build, the runtime makes the request in the
            # background once that build ends; leaving now would cancel that request.
            what = f"the {in_flight.transition.value} build in progress"
            _out(f"the {args.tool} is requested when {what} ends; waiting for that", sys.stderr)
            await lc.drain()  # the deferred request gives up itself after build_timeout
            latest = (await store.workspace_facts(in_flight.workspace_id)).latest_build
            if latest is not None and latest.number == in_flight.number and latest.status.in_progress:
                raise CliError(
                    f"{what} did not end within {args.timeout:g} s, so the {args.tool} was not requested"
                )
            return 0
    return 1 if "error" in result.data else 0


def _summary(chat: str, result: ToolResult) -> str:
    """The answer in one line for a person: what happened (or went wrong), then its fields."""
    data = dict(result.data)
    done = [key for key in ("created", "started", "stopped", "deleted") if data.pop(key, None) is True]
    if "error" in data:
        head = f"{chat}: {data.pop('error')}"
    else:
        head = f"{chat}: {done[0] if done else data.pop('status', 'answered')}"
    fields = "  ".join(f"{key}={_field(value)}" for key, value in sorted(data.items()))
    return f"{head}  {fields}".rstrip()


def _field(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


async def _other_build_in_flight(store: Store, chat_id: str, tool: str) -> Build | None:
    """The chat's latest build if it is still in progress and of another kind than ``tool``'s."""
    transition = _REQUEST_TRANSITION.get(tool)
    chat = await store.get_chat(chat_id)
    if transition is None or chat is None or chat.workspace_id is None:
        return None
    build = (await store.workspace_facts(chat.workspace_id)).latest_build
    if build is None or build.status.finished or build.transition is transition:
        return None
    return build


class _Progress:
    """A request's progress on stderr: each state change of its chat, and while it waits a live
    line (on a terminal) with the state and the time waited, and once a build has been pending
    for ``hint_after`` seconds, the hint that no provisioner has claimed it.

    State changes come from the runtime's ``watch``; the timer only redraws the line and, once
    per build, reads whether that build is still pending.
    """

    def __init__(self, lc: Lifecycle, chat: str, owner: str, hint_after: float, db: str) -> None:
        self._lc, self._chat, self._owner, self._hint_after, self._db = lc, chat, owner, hint_after, db
        self._tty = _is_tty(sys.stderr)
        self._t0 = time.monotonic()
        self._state: WorkspaceState | None = None
        self._since = self._t0  # when the current state began
        self._hint_due = False  # the state became building and the hint's one look is still to come
        self._changed = anyio.Event()
        self._live = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(_follow, self._lc, self._chat, self._change)
            with contextlib.suppress(WorkspaceLifecycleError, ValueError):
                # An unknown chat (or one of another owner's) reads as no_workspace here too.
                self._state = await self._lc.state(self._chat, owner=self._owner)
            task_status.started()
            await self._tick()

    def _change(self, change: StateChange) -> None:
        self._state, self._since = change.to_state, time.monotonic()
        self._hint_due = change.to_state is WorkspaceState.BUILDING
        self._changed.set()
        self._print(_watch_line(change))

    async def _tick(self) -> None:
        self._hint_due = self._state is WorkspaceState.BUILDING
        while True:
            self._changed = anyio.Event()
            deadline = self._since + self._hint_after if self._hint_due else math.inf
            if self._tty:
                self._draw()
                wake = min(deadline, time.monotonic() + 0.1)
            else:
                wake = deadline
            with anyio.move_on_after(max(0.0, wake - time.monotonic())):
                await self._changed.wait()
                continue
            if self._hint_due and time.monotonic() >= deadline:
                self._hint_due = False  # one look per build, not a poll
                await self._hint()

    async def _hint(self) -> None:
        chat = await self._lc.store.get_chat(self._chat)
        if chat is None or chat.workspace_id is None or chat.owner != self._owner:
            return
        build = (await self._lc.store.workspace_facts(chat.workspace_id)).latest_build
        if build is not None and build.status is JobStatus.PENDING:
            self._print(
                f"no provisioner has claimed build #{build.number} ({build.transition.value}) of "
                f"{self._chat} after {time.monotonic() - self._since:.0f} s; run "
                f"'{PROG} provision --simulate --db {self._db}' in another terminal (the same --db)"
            )

    def _draw(self) -> None:
        state = self._state.value if self._state is not None else "..."
        elapsed = time.monotonic() - self._t0
        sys.stderr.write(f"\r\x1b[K{self._chat}: {state}  {elapsed:.1f} s")
        sys.stderr.flush()
        self._live = True

    def _print(self, line: str) -> None:
        if self._live:
            sys.stderr.write("\r\x1b[K")
            self._live = False
        _out(line, sys.stderr)

    def close(self) -> None:
        """Clear the live line before the answer is printed."""
        if self._live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._live = False


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --- provision --------------------------------------------------------------------------------


def _provision(args: argparse.Namespace) -> int:
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
        args.root = str(Path(args.root).resolve())
        return _interruptible(_provision_process, _database(args.db, create=True), args)
    if args.workspace_command:
        raise CliError(f"--simulate takes no command; got {' '.join(args.workspace_command)!r}", 2)
    return _interruptible(_provision_async, _database(args.db, create=True), args)


async def _provision_process(store: Store, args: argparse.Namespace) -> int:
    provisioner = ProcessProvisioner(
        store,
        root=args.root,
        command=args.workspace_command,
        ready_timeout=args.ready_timeout,
        stop_grace=args.stop_grace,
        lease_seconds=args.lease_seconds,
    )
    async with _opened(store), provisioner, Lifecycle(store) as lc:
        _out(
            f"process provisioner on {store.url}: workspaces in {args.root}, command "
            f"{args.workspace_command}; Ctrl-C to stop (the workspace processes keep running)",
            sys.stderr,
        )
        await _follow(lc, None, lambda change: _out(_watch_line(change), sys.stderr))
    return 0


async def _provision_async(store: Store, args: argparse.Namespace) -> int:
    async with (
        _opened(store),
        SimulatedProvisioner(
            store,
            build_seconds=args.build_seconds,
            agent_seconds=args.agent_seconds,
            fail=args.fail_rate or None,
            agent=args.agent,
            lease_seconds=args.lease_seconds,
        ),
        Lifecycle(store) as lc,
    ):
        _out(
            f"simulated provisioner on {store.url}: builds take {args.build_seconds:g} s, agents reach "
            f"{args.agent or 'no agent'} after {args.agent_seconds:g} s, "
            f"fail rate {args.fail_rate:g}; Ctrl-C to stop",
            sys.stderr,
        )
        await _follow(lc, None, lambda change: _out(_watch_line(change), sys.stderr))
    return 0


# --- mcp --------------------------------------------------------------------------------------


def _mcp(args: argparse.Namespace) -> int:
    _database(args.db, create=True)  # a bad URL or path is reported before the server starts
    try:
        module = importlib.import_module("workspace_lifecycle.mcp_server")
    except ImportError as exc:
        if exc.name == "workspace_lifecycle.mcp_server":
            raise CliError("the MCP server is not part of this installation") from None
        if not (exc.name or "").startswith("workspace_lifecycle"):
            # The SDK is ``mcp`` plus modules such as ``mcp_types`` and its own dependencies.
            raise CliError(
                "the mcp command needs the MCP SDK: pip install 'workspace-lifecycle[mcp]'"
            ) from None
        raise
    serve: Callable[..., Awaitable[None]] = module.serve

    async def run() -> int:
        await serve(args.db, args.owner, args.chat, policy=_policy(args))
        return 0

    return _interruptible(run)
