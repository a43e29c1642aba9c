"""``create``, ``start``, ``stop`` and ``delete``: one tool call each, its progress on stderr.

The four commands share one parser and one handler: each is its tool's call
(:func:`~workspace_lifecycle.tools.run_tool_call`), and ``create`` registers the chat first.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time

import anyio
from anyio.abc import TaskStatus

from ..adapters.base import Store
from ..answers import DONE_KEY
from ..deadlines import STANDALONE_POLICY
from ..errors import OwnershipError, WorkspaceLifecycleError
from ..machine import Request
from ..runtime import Lifecycle
from ..steps import request_transition
from ..tools import ToolCall, run_tool_call
from ..values import JobStatus, StateChange, ToolResult, WorkspaceState
from ._shared import (
    PROG,
    CliError,
    Commands,
    add_db,
    add_policy_options,
    chat_id,
    command,
    database,
    follow,
    opened,
    out,
    out_json,
    owner,
    patchable,
    policy,
    positive_seconds,
    run,
    seconds,
    settle,
    watch_line,
    workspace_name,
)

#: Seconds a request waits with its build still pending before it says no provisioner claimed it.
PENDING_HINT_ENV = "WORKSPACE_LIFECYCLE_PENDING_HINT_SECONDS"
PENDING_HINT_SECONDS = 10.0

_REQUEST_HELP = (
    " Progress goes to stderr while it waits: each state change, and on a terminal a live line "
    "with the state and the time waited; after ~10 s with the build still pending, a hint that "
    "no provisioner has claimed it. The answer goes to stdout (--json: as one JSON object); an "
    "error answer, such as an unknown chat, is its sentence on stderr. Something must run the "
    "builds: 'provision --simulate' in another terminal, on the same --db. The exit status is "
    "1 when the answer is an error or reports a failed build, 3 when the wait ran out (--timeout) "
    "with the build still pending or running: it may still finish."
)

#: The exit status of a request whose wait ran out with its build still in progress: not a
#: failure (the build may still finish), not a success either.
TIMED_OUT = 3

_REQUESTS = [
    (
        Request.CREATE,
        "create a chat's workspace (registering the chat) and print the answer",
        "Register CHAT for OWNER if it is new, then call the create_workspace tool for it. "
        "Creates a missing SQLite file, so it works on a fresh database.",
    ),
    (
        Request.START,
        "call start_workspace for a chat and print the answer",
        "Call the start_workspace tool for CHAT as OWNER. Refuses a missing SQLite file.",
    ),
    (
        Request.STOP,
        "call stop_workspace for a chat and print the answer",
        "Call the stop_workspace tool for CHAT as OWNER. Refuses a missing SQLite file.",
    ),
    (
        Request.DELETE,
        "call delete_workspace for a chat and print the answer",
        "Call the delete_workspace tool for CHAT as OWNER. Refuses a missing SQLite file.",
    ),
]


def add_parser(commands: Commands) -> None:
    for request, summary, description in _REQUESTS:
        sub = command(commands, request.value, summary, description + _REQUEST_HELP, handle)
        sub.set_defaults(request=request)
        sub.add_argument("chat", type=chat_id, metavar="CHAT", help="the chat id")
        sub.add_argument("--owner", type=owner, required=True, help="the chat's owner (required)")
        if request is Request.CREATE:
            sub.add_argument(
                "--name",
                type=workspace_name,
                metavar="NAME",
                help="the workspace name: 1 to 32 letters, digits and single hyphens (Coder's rule;"
                " anything else is refused); missing: generated",
            )
            add_policy_options(sub, "the chat's policy (stored with it; replaces the one it has)")
        add_db(sub)
        sub.add_argument(
            "--no-wait", action="store_true", help="answer at once after the request is decided (wait=false)"
        )
        sub.add_argument("--json", action="store_true", help="print the answer as one JSON object")
        sub.add_argument(
            "--timeout",
            type=positive_seconds,
            default=600.0,
            metavar="S",
            help="give up waiting for the build, and for the agent, after S seconds each (600)",
        )
        sub.add_argument(  # hidden: lets a test see the hint at once
            "--pending-hint-after",
            type=seconds,
            default=_pending_hint_default(),
            help=argparse.SUPPRESS,
        )


def _pending_hint_default() -> float:
    text = os.environ.get(PENDING_HINT_ENV)
    if text:
        with contextlib.suppress(argparse.ArgumentTypeError):
            return seconds(text)
    return PENDING_HINT_SECONDS


def handle(args: argparse.Namespace) -> int:
    return run(_request, database(args.db, create=args.request is Request.CREATE), args)


async def _call(lc: Lifecycle, args: argparse.Namespace) -> ToolResult:
    """The tool call, as a model's would run (:func:`~workspace_lifecycle.tools.run_tool_call`)."""
    arguments: dict[str, object] = {"wait": not args.no_wait}
    if args.request is Request.CREATE:
        # Idempotent. A policy given here replaces the chat's. Another owner's chat is left to
        # the tool call, which answers it as an unknown chat, as start, stop and delete do.
        with contextlib.suppress(OwnershipError):
            await lc.register_chat(args.chat, owner=args.owner, policy=policy(args))
        arguments["name"] = args.name
    call = ToolCall(f"{args.request.value}_workspace", args.chat, arguments)
    return await run_tool_call(lc, call, owner=args.owner)


async def _request(store: Store, args: argparse.Namespace) -> int:
    # A one-shot command fires no deadlines (the long-running processes do: mcp, provision).
    async with (
        opened(store),
        Lifecycle(
            store,
            build_timeout=args.timeout,
            agent_timeout=args.timeout,
            fire_deadlines=False,
            policy=STANDALONE_POLICY,  # a new chat's, unless the options say otherwise
        ) as lc,
    ):
        progress = _Progress(lc, args.chat, args.owner, args.pending_hint_after, args.db)
        async with anyio.create_task_group() as tg:
            await tg.start(progress.run)
            result = await _call(lc, args)
            await settle()
            tg.cancel_scope.cancel()
        progress.close()
        if args.json:
            out_json(result.data)
        elif result.is_error:
            raise CliError(result.text)
        else:
            out(_summary(args.chat, result))
        if result.is_error:
            return 1
        if args.no_wait:
            await _say_deferred(lc.store, args)
    if result.data.get("timed_out") is True:
        return TIMED_OUT
    return 1 if "error" in result.data else 0


async def _say_deferred(store: Store, args: argparse.Namespace) -> None:
    """With wait=False during another kind of build, the request is stored on the workspace
    and that build's finish fires it (:class:`~workspace_lifecycle.steps.Defer`): nothing here
    has to stay. Say so, for a person who expected a build at once."""
    request: Request = args.request
    chat = await store.get_chat(args.chat)
    if chat is None or chat.workspace_id is None:
        return
    facts = await store.workspace_facts(chat.workspace_id)
    intent, latest = facts.workspace.deferred, facts.latest_build
    if intent is None or latest is None or intent.transition is not request_transition(request):
        return
    out(
        f"the {request.value} is stored: it is requested when the {latest.transition.value} build"
        " in progress ends (whether this command still runs or not)",
        sys.stderr,
    )


INSUFFICIENT_QUOTA = "INSUFFICIENT_QUOTA"


def _summary(chat: str, result: ToolResult) -> str:
    """The answer in one line for a person: what happened (or went wrong), then its fields."""
    data = dict(result.data)
    done = [key for key in DONE_KEY.values() if data.pop(key, None) is True]
    if data.get("error_code") == INSUFFICIENT_QUOTA:  # one sentence: what, and what to do
        return f"{chat}: {data['error']}; {data['next_steps'][0]}"
    if "error" in data:
        head = f"{chat}: {data.pop('error')}"
    elif data.pop("timed_out", None) is True:
        head = f"{chat}: {data.pop('message')}"
    else:
        head = f"{chat}: {done[0] if done else data.pop('status', 'answered')}"
    fields = "  ".join(f"{key}={_field(value)}" for key, value in sorted(data.items()))
    return f"{head}  {fields}".rstrip()


def _field(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class _Progress:
    """A request's progress on stderr: each state change of its chat, and while it waits a live
    line (on a terminal) with the state and the time waited, and once a build has been pending
    for ``hint_after`` seconds, the hint that no provisioner has claimed it.

    State changes come from the runtime's ``watch``; the timer only redraws the line and, once
    per build, reads whether that build is still pending.
    """

    def __init__(self, lc: Lifecycle, chat: str, owner: str, hint_after: float, db: str) -> None:
        self._lc, self._chat, self._owner, self._hint_after, self._db = lc, chat, owner, hint_after, db
        self._tty: bool = patchable("_is_tty")(sys.stderr)
        self._t0 = time.monotonic()
        self._state: WorkspaceState | None = None
        self._since = self._t0  # when the current state began
        self._hint_due = False  # the state became building and the hint's one look is still to come
        self._changed = anyio.Event()
        self._live = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(follow, self._lc, self._chat, self._change)
            with contextlib.suppress(WorkspaceLifecycleError, ValueError):
                # An unknown chat (or one of another owner's) reads as no_workspace here too.
                self._state = await self._lc.state(self._chat, owner=self._owner)
            task_status.started()
            await self._tick()

    def _change(self, change: StateChange) -> None:
        self._state, self._since = change.to_state, time.monotonic()
        self._hint_due = change.to_state is WorkspaceState.BUILDING
        self._changed.set()
        self._print(watch_line(change))

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
        out(line, sys.stderr)

    def close(self) -> None:
        """Clear the live line before the answer is printed."""
        if self._live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._live = False
