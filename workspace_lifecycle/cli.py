"""The ``workspace-lifecycle`` command line (also ``python -m workspace_lifecycle``).

Commands: ``demo`` (a scripted chat, printing each state change live), ``diagram``, ``status``,
``watch``, ``start``, ``provision --simulate`` and ``mcp``. Every command that uses a store takes
``--db URL`` (default: the SQLite file ``./workspace-lifecycle.db``), so two terminals on one
file work together: ``provision --simulate`` in one, ``start`` or ``watch`` in the other.

A user's mistake (a bad URL, an unreadable database, an unknown command) is one sentence on
stderr and a non-zero exit status, never a traceback: 2 for a usage error, 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from . import __version__
from .adapters import open_store
from .adapters.base import Store
from .diagram import FORMATS, GraphvizMissingError, PydotMissingError, render
from .errors import WorkspaceLifecycleError
from .machine import derive_state
from .provisioner import SimulatedProvisioner
from .runtime import Lifecycle
from .values import AgentLifecycle, Build, JobStatus, StateChange, ToolResult, Transition, WorkspaceFacts

__all__ = ["main"]

PROG = "workspace-lifecycle"
DEFAULT_DB = "sqlite:///workspace-lifecycle.db"
_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
DB_HELP = f"store URL: sqlite:///relative.db, sqlite:////absolute.db, memory://, postgresql://... (default: {DEFAULT_DB})"


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
    return text


def _agent_state(text: str) -> str | None:
    if text == "none":
        return None
    try:
        return AgentLifecycle(text).value
    except ValueError:
        names = ", ".join(["none", *(a.value for a in AgentLifecycle)])
        raise argparse.ArgumentTypeError(f"{text!r} is not an agent lifecycle state ({names})") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "A chat's workspace as an explicit, event-driven state machine. Run 'demo' to watch a "
            "scripted chat; 'provision --simulate' and 'start' in two terminals to drive one by hand."
        ),
        epilog=f"'{PROG} COMMAND --help' explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = commands.add_parser(name, help=summary, description=description)
        return sub

    demo = command(
        "demo",
        "run a scripted chat, printing each state change live",
        "A scripted chat on a simulated provisioner: register, create, stop, three concurrent "
        "starts (one build, one build_id), a build that fails and its retry. Each state change "
        "is printed as it happens, with its latency (from the event's write to its print); the "
        "tools' JSON answers, as the model sees them, come last. Runs in a few seconds. If the "
        "chat 'demo' already exists in the database, a new chat id is used, so reruns work.",
    )
    demo.add_argument("--db", default=DEFAULT_DB, metavar="URL", help=DB_HELP)
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
        "rows), the latest build (number, transition, job status) and the agent's lifecycle.",
    )
    status.add_argument("--db", default=DEFAULT_DB, metavar="URL", help=DB_HELP)
    status.set_defaults(handler=_status)

    watch = command(
        "watch",
        "print state changes live until Ctrl-C",
        "Print every state change of every chat (or of one, with --chat) as it happens, with "
        "its timestamp, until Ctrl-C. Works across processes on a shared SQLite file.",
    )
    watch.add_argument("--db", default=DEFAULT_DB, metavar="URL", help=DB_HELP)
    watch.add_argument("--chat", type=_ident, metavar="CHAT", help="only this chat")
    watch.set_defaults(handler=_watch)

    start = command(
        "start",
        "call start_workspace for a chat and print its JSON answer",
        "Call the start_workspace tool for CHAT as OWNER. Progress (the chat's state changes) "
        "goes to stderr while it waits; the tool's answer goes to stdout as JSON (an error answer, such as an unknown chat, goes to stderr "
        "as its sentence). Something must "
        "run the builds: 'provision --simulate' in another terminal, on the same --db. The exit "
        "status is 1 when the answer is an error or reports a failed build.",
    )
    start.add_argument("chat", type=_ident, metavar="CHAT", help="the chat id")
    start.add_argument("--owner", type=_ident, required=True, help="the chat's owner (required)")
    start.add_argument("--db", default=DEFAULT_DB, metavar="URL", help=DB_HELP)
    start.add_argument(
        "--no-wait", action="store_true", help="answer at once after the request is decided (wait=false)"
    )
    start.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=600.0,
        metavar="S",
        help="give up waiting for the build, and for the agent, after S seconds each (600)",
    )
    start.set_defaults(handler=_start)

    provision = command(
        "provision",
        "run the simulated provisioner until Ctrl-C",
        "Claim pending builds in the database and complete them, as a provisioner would, until "
        "Ctrl-C; state changes are printed to stderr. Only the simulated provisioner is built "
        "in, so --simulate is required.",
    )
    provision.add_argument("--simulate", action="store_true", help="run the simulated provisioner")
    provision.add_argument("--db", default=DEFAULT_DB, metavar="URL", help=DB_HELP)
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
    provision.set_defaults(handler=_provision)

    mcp = command(
        "mcp",
        "serve the workspace tools over MCP (stdio)",
        "Serve the workspace tools to an MCP client over stdin/stdout, for OWNER's chats (or "
        "only CHAT). Needs the mcp extra: pip install 'workspace-lifecycle[mcp]'.",
    )
    mcp.add_argument("--db", default=DEFAULT_DB, metavar="URL", help=DB_HELP)
    mcp.add_argument("--owner", type=_ident, required=True, help="the owner the tools act for (required)")
    mcp.add_argument("--chat", type=_ident, metavar="CHAT", help="the chat the tools act on by default")
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
        leaves = [e for e in _leaves(exc) if not isinstance(e, asyncio.CancelledError)]
        return _user_error(leaves[0]) if len(leaves) == 1 else None
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


def _require_existing(url: str) -> None:
    """Refuse to create an empty SQLite file as a side effect of a command that only reads."""
    path = _sqlite_path(url)
    if path is not None and not path.exists():
        raise CliError(
            f"no database at {path}; pass --db URL, or run '{PROG} demo' or '{PROG} provision --simulate' first"
        )


# --- printing state changes -------------------------------------------------------------------


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _change_line(change: StateChange) -> str:
    event = change.event.value if change.event is not None else "resync"
    return (
        f"{change.from_state.value:>12} -> {change.to_state.value:<12} "
        f"build {change.build_number:<3} {event:<15}"
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
    store = _store(args.db)  # a bad URL is reported before anything is deleted
    if args.fresh:
        path = _sqlite_path(args.db)
        if path is None and not args.db.lower().startswith("memory"):
            raise CliError("--fresh only applies to a sqlite:/// database", 2)
        if path is not None:
            for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
                name.unlink(missing_ok=True)
    return _run(_demo_async, store, args)


class _Failing:
    """The provisioner's ``fail`` predicate: fails the one build it is armed with."""

    def __init__(self) -> None:
        self.target: tuple[str, int] | None = None

    def __call__(self, build: Build) -> bool:
        if self.target == (build.workspace_id, build.number):
            self.target = None
            return True
        return False


async def _demo_async(store: Store, args: argparse.Namespace) -> int:
    owner = "alice"
    failing = _Failing()
    answers: list[tuple[str, ToolResult]] = []
    t0 = time.monotonic()

    def show(change: StateChange) -> None:
        latency = (time.time() - change.at) * 1000
        _out(f"    +{time.monotonic() - t0:6.3f}s  {_change_line(change)} latency {latency:6.1f} ms")

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
            _out(f"\n> start_workspace()  (the provisioner is told to fail build {number})")
            answered("start_workspace (fails)", await lc.start_workspace(chat, owner=owner))
            await _settle()

            _out("\n> start_workspace()  (the retry)")
            answered("start_workspace (retry)", await lc.start_workspace(chat, owner=owner))
            await _settle()
            tg.cancel_scope.cancel()

        state = await lc.state(chat)
    _out(f"\nfinal state of {chat!r}: {state.value} ({time.monotonic() - t0:.2f} s)")
    _out("\nThe tools' JSON answers, as the model sees them:")
    width = max(len(label) for label, _ in answers)
    for label, result in answers:
        flag = " (is_error)" if result.is_error else ""
        _out(f"  {label:<{width}}  {result.text}{flag}")
    return 0


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
    _require_existing(args.db)
    return _run(_status_async, _store(args.db))


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


async def _status_async(store: Store) -> int:
    async with _opened(store):
        rows = sorted(await store.list_chats(), key=lambda r: r.chat.chat_id)
    if not rows:
        _out(f"no chats in {store.url}")
        return 0
    table = [("CHAT", "OWNER", "STATE", "LATEST BUILD", "AGENT")]
    for row in rows:
        state = derive_state(row.facts).value if row.facts is not None else "no_workspace"
        table.append(
            (row.chat.chat_id, row.chat.owner, state, _build_cell(row.facts), _agent_cell(row.facts))
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        _out("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    return 0


# --- watch ------------------------------------------------------------------------------------


def _watch(args: argparse.Namespace) -> int:
    return _interruptible(_watch_async, _store(args.db), args.chat)


def _watch_line(change: StateChange) -> str:
    return f"{_clock(change.at)}  {change.chat_id}  {_change_line(change).rstrip()}"


async def _watch_async(store: Store, chat: str | None) -> int:
    async with _opened(store), Lifecycle(store) as lc:
        what = f"chat {chat!r}" if chat else "every chat"
        _out(f"watching {what} on {store.url}; Ctrl-C to stop", sys.stderr)
        await _follow(lc, chat, lambda change: _out(_watch_line(change)))
    return 0


# --- start ------------------------------------------------------------------------------------


def _start(args: argparse.Namespace) -> int:
    _require_existing(args.db)
    return _run(_start_async, _store(args.db), args)


async def _start_async(store: Store, args: argparse.Namespace) -> int:
    async with _opened(store), Lifecycle(store, build_timeout=args.timeout, agent_timeout=args.timeout) as lc:
        async with anyio.create_task_group() as tg:
            await tg.start(_follow, lc, args.chat, lambda change: _out(_watch_line(change), sys.stderr))
            result = await lc.start_workspace(args.chat, owner=args.owner, wait=not args.no_wait)
            await _settle()
            tg.cancel_scope.cancel()
        if result.is_error:
            raise CliError(result.text)
        _out(result.text)
        in_flight = await _other_build_in_flight(store, args.chat) if args.no_wait else None
        if in_flight is not None:
            # With wait=False during a stop or delete build, the runtime requests the start in
            # the background once that build ends; leaving now would cancel that request.
            what = f"the {in_flight.transition.value} build in progress"
            _out(f"the start is requested when {what} ends; waiting for that", sys.stderr)
            await lc.drain()  # the deferred request gives up itself after build_timeout
            latest = (await store.workspace_facts(in_flight.workspace_id)).latest_build
            if latest is not None and latest.number == in_flight.number and latest.status.in_progress:
                raise CliError(
                    f"{what} did not end within {args.timeout:g} s, so the start was not requested"
                )
            return 0
    return 1 if "error" in result.data else 0


async def _other_build_in_flight(store: Store, chat_id: str) -> Build | None:
    """The chat's latest build if it is a stop or delete build still in progress."""
    chat = await store.get_chat(chat_id)
    if chat is None or chat.workspace_id is None:
        return None
    build = (await store.workspace_facts(chat.workspace_id)).latest_build
    if build is None or build.status.finished or build.transition is Transition.START:
        return None
    return build


# --- provision --------------------------------------------------------------------------------


def _provision(args: argparse.Namespace) -> int:
    if not args.simulate:
        raise CliError(
            "only the simulated provisioner is built in; run 'provision --simulate' "
            "(a real provisioner calls the store's claim_build, finish_build and report_agent)",
            2,
        )
    return _interruptible(_provision_async, _store(args.db), args)


async def _provision_async(store: Store, args: argparse.Namespace) -> int:
    async with (
        _opened(store),
        SimulatedProvisioner(
            store,
            build_seconds=args.build_seconds,
            agent_seconds=args.agent_seconds,
            fail=args.fail_rate or None,
            agent=args.agent,
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
    _store(args.db)  # a bad URL is reported before the server starts
    try:
        module = importlib.import_module("workspace_lifecycle.mcp_server")
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "mcp":
            raise CliError(
                "the mcp command needs the MCP SDK: pip install 'workspace-lifecycle[mcp]'"
            ) from None
        if exc.name == "workspace_lifecycle.mcp_server":
            raise CliError("the MCP server is not part of this installation") from None
        raise
    serve: Callable[[str, str, str | None], Awaitable[None]] = module.serve

    async def run() -> int:
        await serve(args.db, args.owner, args.chat)
        return 0

    return _interruptible(run)
