"""What several commands share: option types, store opening, running, errors, and output."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, TypeAlias

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from .. import checks, pools
from ..adapters.base import Store
from ..deadlines import STANDALONE_POLICY
from ..diagram import GraphvizMissingError, PydotMissingError
from ..errors import SchemaMissingError, WorkspaceLifecycleError
from ..runtime import Lifecycle
from ..values import Policy, StateChange

PROG = "workspace-lifecycle"
DEFAULT_DB = "sqlite:///workspace-lifecycle.db"
DB_ENV = "WORKSPACE_LIFECYCLE_DB"
BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader left
DB_HELP = (
    "store URL: sqlite:///relative.db, sqlite:////absolute.db, memory://, postgresql://... "
    f"(default: ${DB_ENV}, else {DEFAULT_DB})"
)

#: What ``build_parser`` hands each command module's ``add_parser``.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: A command's handler: the parsed arguments in, the exit status out.
Handler: TypeAlias = Callable[[argparse.Namespace], int]

_PACKAGE = __name__.rpartition(".")[0]


class CliError(Exception):
    """A user's mistake or an environment problem: one sentence, an exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def patchable(name: str) -> Any:
    """``workspace_lifecycle.cli.<name>``, read when called, not when imported: a name replaced
    there (a test's store factory, ``open_store``; its terminal, ``_is_tty``) is the one every
    command uses."""
    return getattr(sys.modules[_PACKAGE], name)


# --- the parser -------------------------------------------------------------------------------


def command(
    commands: Commands, name: str, summary: str, description: str, handler: Handler
) -> argparse.ArgumentParser:
    """Add the sub-parser of command ``name``, run by ``handler``."""
    sub: argparse.ArgumentParser = commands.add_parser(name, help=summary, description=description)
    sub.set_defaults(handler=handler)
    return sub


def _duration_type(text: str, *, zero: bool) -> float:
    """An option's number of seconds, checked by the core's one rule for durations."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    try:
        return checks.seconds(repr(text), value, zero=zero)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    return _duration_type(text, zero=True)


def positive_seconds(text: str) -> float:
    return _duration_type(text, zero=False)


def _checked(check: Callable[[str, object], str], kind: str, text: str) -> str:
    try:
        return check(kind, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def chat_id(text: str) -> str:
    """A chat id argument, by the core's one rule for ids (bytes the locale could not decode
    arrive as lone surrogates, and are refused as not UTF-8)."""
    return _checked(checks.identifier, "chat_id", text)


def owner(text: str) -> str:
    return _checked(checks.identifier, "owner", text)


def workspace_name(text: str) -> str:
    """A ``--name``: kept as typed, or refused with Coder's rule and a valid name to try
    (never renamed behind the user's back; the tool refuses a model's the same way)."""
    return _checked(checks.workspace_name, "--name", text)


def add_db(sub: argparse.ArgumentParser) -> None:
    default = os.environ.get(DB_ENV) or DEFAULT_DB
    sub.add_argument("--db", default=default, metavar="URL", help=DB_HELP)


def add_build_times(sub: argparse.ArgumentParser, *, build: float, agent: float, agent_becomes: str) -> None:
    """``--build-seconds`` and ``--agent-seconds``: how long the simulated provisioner takes."""
    sub.add_argument(
        "--build-seconds",
        type=seconds,
        default=build,
        metavar="S",
        help=f"how long each build takes ({build})",
    )
    sub.add_argument(
        "--agent-seconds",
        type=seconds,
        default=agent,
        metavar="S",
        help=f"how long the agent takes to {agent_becomes} after a start build ({agent})",
    )


def _seconds_or_never(text: str) -> float | str:
    return NEVER if text == NEVER else positive_seconds(text)


#: What an option of the policy takes for "never".
NEVER = "never"


def add_policy_options(sub: argparse.ArgumentParser, what: str) -> None:
    group = sub.add_argument_group(f"between turns: {what}")
    idle = STANDALONE_POLICY.idle_stop_after
    group.add_argument(
        "--idle-stop-after",
        type=_seconds_or_never,
        metavar="S",
        help=f"stop the workspace after S seconds without activity (a new chat: {idle:g}; 'never')",
    )
    group.add_argument(
        "--delete-after-stopped",
        type=_seconds_or_never,
        metavar="S",
        help="delete the workspace after S seconds stopped (default: never)",
    )


def policy(args: argparse.Namespace) -> Policy | None:
    """The policy the between-turns options give (an option not given keeps
    :data:`~workspace_lifecycle.deadlines.STANDALONE_POLICY`'s), or ``None`` when neither was
    given (a new chat then gets that default, an existing one keeps its own)."""
    idle, retain = args.idle_stop_after, args.delete_after_stopped
    if idle is None and retain is None:
        return None
    default = STANDALONE_POLICY
    return Policy(
        idle_stop_after=default.idle_stop_after if idle is None else None if idle == NEVER else idle,
        delete_after_stopped=default.delete_after_stopped
        if retain is None
        else None
        if retain == NEVER
        else retain,
    )


# --- errors and exit statuses -----------------------------------------------------------------


def user_error(exc: BaseException) -> CliError | None:
    """The one sentence for a user's mistake, or ``None`` for a bug (which keeps its traceback)."""
    if isinstance(exc, BaseExceptionGroup):
        # The commands run on asyncio, and this runs after the loop ended: name the class.
        # Several tasks may fail on the same cause (a corrupt row read by the request and by
        # its progress watcher): report the first when every one of them is a user's problem.
        leaves = [e for e in _leaves(exc) if not isinstance(e, asyncio.CancelledError)]
        errors = [user_error(leaf) for leaf in leaves]
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
        return CliError("broken pipe", BROKEN_PIPE)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return CliError(f"{exc.strerror or exc}{where}")
    return None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def report(error: CliError) -> int:
    """Say ``error`` in one line on stderr; return its exit status."""
    if error.code == BROKEN_PIPE:
        # The reader went away (``| head``): stop quietly, as Unix tools do, and keep the
        # interpreter's final flush of stdout from failing again.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return error.code
    print(f"{PROG}: {error}", file=sys.stderr)
    return error.code


# --- running ----------------------------------------------------------------------------------


def run(fn: Callable[..., Awaitable[int]], *args: Any) -> int:
    result: int = anyio.run(fn, *args, backend="asyncio")
    return result


def interruptible(fn: Callable[..., Awaitable[int]], *args: Any) -> int:
    """Run until done, Ctrl-C or SIGTERM. Both are the normal way to stop (a terminal's, a
    service manager's: systemd, Docker and Kubernetes send SIGTERM), so both exit 0; SIGTERM
    cancels the command, so its ``async with`` blocks end as they do on any exit (a
    provisioner's workers, leases and cgroups), where the default action killed the process."""
    try:
        return run(_until_terminated, fn, *args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 0


async def _until_terminated(fn: Callable[..., Awaitable[int]], *args: Any) -> int:
    result = 0

    async def on_sigterm(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM) as received:
            async for _ in received:
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(on_sigterm, tg.cancel_scope)
        result = await fn(*args)
        tg.cancel_scope.cancel()
    return result


# --- stores -----------------------------------------------------------------------------------


def store_for(url: str, *, create: bool = True) -> Store:
    """The store at ``url``, not yet open; a bad URL or a missing extra is one sentence. Without
    ``create``, a PostgreSQL store is opened without migrating: it creates no schema."""
    open_store: Callable[..., Store] = patchable("open_store")
    try:
        if not create and url.lower().startswith("postgres"):
            return open_store(url, migrate=False)
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
async def opened(store: Store) -> AsyncIterator[Store]:
    """``async with store``, where a ValueError from opening it (a directory instead of a file, a
    missing parent directory) is the user's mistake, reported in one sentence."""
    try:
        await store.open()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except SchemaMissingError as exc:  # a read-only command on an empty database or schema
        raise CliError(f"{exc}; {_CREATES_IT}") from None
    try:
        yield store
    finally:
        await store.aclose()


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``None`` for any other scheme)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not rest.startswith("/"):
        return None
    path = rest[1:].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


#: What the refusal of a missing database or schema adds.
_CREATES_IT = f"'{PROG} create CHAT --owner OWNER' creates it (or pass --db URL, or set {DB_ENV})"


def database(url: str, *, create: bool) -> Store:
    """The store at ``url``, after the checks a SQLite path needs, each one sentence.

    Only a command that writes on its own (``create``) may create a missing file or PostgreSQL
    schema; a command that reads or acts on an existing chat refuses it instead of leaving an
    empty file (or seven empty tables) behind a typo.
    """
    store = store_for(url, create=create)  # a bad URL first (exit 2)
    path = sqlite_path(url)
    if path is None:
        return store
    if path.is_dir():
        raise CliError(f"the SQLite path {path} is a directory, not a database file")
    if not path.exists():
        if not create:
            raise CliError(f"no database at {path}; {_CREATES_IT}")
        if not path.parent.is_dir():
            raise CliError(f"cannot create the database {path}: directory {path.parent} does not exist")
    return store


# --- output -----------------------------------------------------------------------------------


def out(text: str = "", stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def out_json(data: dict[str, Any]) -> None:
    out(json.dumps(data, sort_keys=True))


def is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def change_line(change: StateChange) -> str:
    event = change.event.value if change.event is not None else "resync"
    reason = change.reason.value if change.reason is not None else "-"
    return (
        f"{change.from_state.value:>12} -> {change.to_state.value:<12} "
        f"build {change.build_number:<3} {event:<15} {reason:<9}"
    )


def watch_line(change: StateChange) -> str:
    reached = "".join(f"  {name}={url}" for name, url in change.endpoints.items())
    return f"{clock(change.at)}  {shown_chat(change.chat_id)}  {change_line(change).rstrip()}{reached}"


def shown_chat(chat_id: str) -> str:
    """A chat id as the command line prints it: a warm pool's unclaimed workspaces as
    ``pool:NAME`` (their holder's id has a control character)."""
    pool = pools.pool_of(chat_id)
    return chat_id if pool is None else f"pool:{pool}"


async def follow(
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


async def settle() -> None:
    """Let the printing task catch up with the changes already published (one per checkpoint)."""
    for _ in range(32):
        await anyio.lowlevel.checkpoint()
