"""``demo``: a scripted chat, each state change printed live as it happens.

On a simulated provisioner by default (register, create, stop, three concurrent starts, a build
that fails and its retry, an idle stop between turns); with ``--process`` on real processes,
each workspace a small HTTP server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from ..adapters.base import Store
from ..process_provisioner import ProcessProvisioner
from ..provisioner import SimulatedFailure, SimulatedProvisioner, quota_failure
from ..runtime import Lifecycle
from ..values import Build, Policy, Reason, StateChange, ToolResult, WorkspaceState
from ._shared import (
    PROG,
    CliError,
    Commands,
    add_build_times,
    add_db,
    change_line,
    clock,
    command,
    follow,
    opened,
    out,
    run,
    seconds,
    settle,
    sqlite_path,
    store_for,
)

#: The workspace of ``demo --process``: a small HTTP server, ready when its port answers.
_SERVER = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"]


def add_parser(commands: Commands) -> None:
    demo = command(
        commands,
        "demo",
        "run a scripted chat, printing each state change live",
        "A scripted chat on a simulated provisioner: register, create, stop, three concurrent "
        "starts (one build, one build_id), a build that fails and its retry, then the time "
        "between turns: the chat goes quiet, its workspace is stopped for idleness, and the next "
        "turn's ensure_running starts it again. Each state change "
        "is printed as it happens, with its latency (from the event's write to its print); the "
        "tools' JSON answers, as the model sees them, come last. Runs in a few seconds. If the "
        "chat 'demo' already exists in the database, a new chat id is used, so reruns work.",
        handle,
    )
    add_db(demo)
    demo.add_argument("--fresh", action="store_true", help="delete the SQLite file (and its -wal/-shm) first")
    add_build_times(demo, build=0.3, agent=0.2, agent_becomes="become ready")
    demo.add_argument(
        "--idle-seconds",
        type=seconds,
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


def handle(args: argparse.Namespace) -> int:
    store = store_for(args.db)  # a bad URL is reported before anything is deleted; the demo creates a file
    if args.fresh:
        path = sqlite_path(args.db)
        if path is None and not args.db.lower().startswith("memory"):
            raise CliError("--fresh only applies to a sqlite:/// database", 2)
        if path is not None:
            for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
                name.unlink(missing_ok=True)
    if args.process:
        return run(_on_processes, store, args)
    return run(_simulated, store, args)


async def _simulated(store: Store, args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    failing = _Failing()
    provisioner = SimulatedProvisioner(
        store,
        build_seconds=args.build_seconds,
        agent_seconds=args.agent_seconds,
        fail=failing,
        worker="demo",
    )
    async with opened(store), provisioner, Lifecycle(store) as lc:
        demo = _SimulatedChat(store, lc, await _unused_chat(store, "demo"), t0, failing, args.idle_seconds)
        out(f"{PROG} demo: chat {demo.chat!r} of {demo.owner!r} on {store.url or args.db}")
        out(
            f"(simulated provisioner in this process: builds take {args.build_seconds:g} s, "
            f"agents {args.agent_seconds:g} s; latency = event written -> printed here)"
        )
        state = await demo.play()
    demo.finished(state)
    demo.show_answers()
    return 0


async def _on_processes(store: Store, args: argparse.Namespace) -> int:
    """The scripted chat on real processes: each workspace a small HTTP server."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="workspace-lifecycle-demo-") as root:
        provisioner = ProcessProvisioner(store, root=root, command=_SERVER, stop_grace=2.0)
        async with opened(store), provisioner, Lifecycle(store) as lc:
            demo = _ProcessChat(store, lc, await _unused_chat(store, "demo"), t0, provisioner)
            out(f"{PROG} demo --process: chat {demo.chat!r} of {demo.owner!r} on {store.url or args.db}")
            out(f"(each workspace is a real process, {' '.join(_SERVER)}, in a directory under {root})")
            state = await demo.play()
    demo.finished(state)
    return 0


async def _unused_chat(store: Store, base: str) -> str:
    chat, n = base, 1
    while await store.get_chat(chat) is not None:
        n += 1
        chat = f"{base}-{n}"
    return chat


class _Chat:
    """A scripted chat: its runtime, its clock, and how its changes and answers are printed."""

    owner = "alice"

    def __init__(self, store: Store, lc: Lifecycle, chat: str, t0: float) -> None:
        self.store, self.lc, self.chat, self.t0 = store, lc, chat, t0

    async def play(self) -> WorkspaceState:
        """Run the script, every state change printed live; the state it ends in."""
        async with anyio.create_task_group() as tg:
            await tg.start(follow, self.lc, self.chat, self.show)
            await self.script()
            tg.cancel_scope.cancel()
        return await self.lc.state(self.chat)

    async def script(self) -> None:
        raise NotImplementedError

    def show(self, change: StateChange) -> None:
        latency = (time.time() - change.at) * 1000
        out(f"    +{time.monotonic() - self.t0:6.3f}s  {change_line(change)} latency {latency:6.1f} ms")
        self.changed(change)

    def changed(self, change: StateChange) -> None:
        """A state change was printed (what the script waits for is set here)."""

    def answered(self, label: str, result: ToolResult) -> None:
        out(f"  = {label}: {result.text}")

    async def ask(
        self, headline: str, label: str, tool: Callable[..., Awaitable[ToolResult]], **arguments: Any
    ) -> None:
        """Call ``tool`` for the chat and print its answer, after the state changes it made."""
        out(f"\n> {headline}")
        self.answered(label, await tool(self.chat, owner=self.owner, **arguments))
        await settle()

    def finished(self, state: WorkspaceState) -> None:
        out(f"\nfinal state of {self.chat!r}: {state.value} ({time.monotonic() - self.t0:.2f} s)")


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


class _SimulatedChat(_Chat):
    """The script on the simulated provisioner; the tools' answers are shown again at the end."""

    def __init__(
        self, store: Store, lc: Lifecycle, chat: str, t0: float, failing: _Failing, idle: float
    ) -> None:
        super().__init__(store, lc, chat, t0)
        self.failing, self.idle = failing, idle
        self.answers: list[tuple[str, ToolResult]] = []
        self.idle_stopped = anyio.Event()

    async def script(self) -> None:
        lc = self.lc
        out(f"\n> register_chat({self.chat!r}, owner={self.owner!r})")
        await lc.register_chat(self.chat, owner=self.owner)
        await self.ask("create_workspace(name='dev')", "create_workspace", lc.create_workspace, name="dev")
        await self.ask("stop_workspace()", "stop_workspace", lc.stop_workspace)
        await self._concurrent_starts()
        await self.ask("stop_workspace()", "stop_workspace", lc.stop_workspace)
        await self._failing_start()
        await self.ask("start_workspace()  (the retry)", "start_workspace (retry)", lc.start_workspace)
        await self._between_turns()

    def changed(self, change: StateChange) -> None:
        if change.to_state is WorkspaceState.STOPPED and change.reason is Reason.IDLE:
            self.idle_stopped.set()

    def answered(self, label: str, result: ToolResult) -> None:
        self.answers.append((label, result))
        data = result.data
        if result.is_error or "error" in data:
            summary = f"error: {data['error']}"
        else:
            keys = ("started", "stopped", "created", "no_build", "agent_status", "startup_scripts")
            flags = ", ".join(f"{k}={str(data[k]).lower()}" for k in keys if k in data)
            summary = f"{flags}, build_id={data.get('build_id', '-')}"
        out(f"  = {label}: {summary}")

    async def _concurrent_starts(self) -> None:
        """Three starts at once: one build, and its build_id in every answer."""
        out("\n> start_workspace() x3, concurrently (one start, asked twice more meanwhile)")
        starts: list[ToolResult | None] = [None, None, None]

        async def start(i: int) -> None:
            starts[i] = await self.lc.start_workspace(self.chat, owner=self.owner)

        async with anyio.create_task_group() as callers:
            for i in range(3):
                callers.start_soon(start, i)
        await settle()
        results = [r for r in starts if r is not None]
        for i, result in enumerate(results, 1):
            self.answered(f"start_workspace #{i}", result)
        build_ids = {r.data.get("build_id") for r in results}
        out(f"  = {len(results)} answers, {len(build_ids)} build: {', '.join(map(str, build_ids))}")
        if len(build_ids) != 1 or None in build_ids:
            raise CliError(f"the concurrent starts were not answered with one build: {build_ids}")

    async def _failing_start(self) -> None:
        """A start whose build the provisioner fails (over quota)."""
        chat_row = await self.store.get_chat(self.chat)
        assert chat_row is not None and chat_row.workspace_id is not None
        facts = await self.store.workspace_facts(chat_row.workspace_id)
        number = facts.latest_build.number + 1 if facts.latest_build else 1
        self.failing.target = (chat_row.workspace_id, number)
        headline = f"start_workspace()  (the provisioner is told to fail build {number}: over quota)"
        await self.ask(headline, "start_workspace (fails)", self.lc.start_workspace)

    async def _between_turns(self) -> None:
        """An idle stop (a deadline in the store), then the next turn."""
        lc, idle = self.lc, self.idle
        out(
            f"\n> register_chat(policy=Policy(idle_stop_after={idle:g}))  (the turn ends; the chat goes quiet)"
        )
        await lc.register_chat(self.chat, owner=self.owner, policy=Policy(idle_stop_after=idle))
        deadline = await lc.touch(self.chat, owner=self.owner)
        if deadline is None:
            raise CliError("the workspace does not run: no idle deadline was armed")
        out(f"  = touch(): the idle stop is due at {clock(deadline.at)}, a row in the store; nothing polls")
        with anyio.fail_after(idle + 30):
            await self.idle_stopped.wait()
        await settle()
        headline = "ensure_running()  (the next turn begins: resume before the model speaks)"
        await self.ask(headline, "ensure_running", lc.ensure_running)

    def show_answers(self) -> None:
        out("\nThe tools' JSON answers, as the model sees them:")
        width = max(len(label) for label, _ in self.answers)
        for label, result in self.answers:
            flag = " (is_error)" if result.is_error else ""
            out(f"  {label:<{width}}  {result.text}{flag}")


class _ProcessChat(_Chat):
    """The script on real processes: a server's URL answers, a stop ends it, a crash is seen."""

    def __init__(
        self, store: Store, lc: Lifecycle, chat: str, t0: float, provisioner: ProcessProvisioner
    ) -> None:
        super().__init__(store, lc, chat, t0)
        self.provisioner = provisioner
        self.crashed = anyio.Event()

    async def script(self) -> None:
        lc = self.lc
        await lc.register_chat(self.chat, owner=self.owner)
        headline = "create_workspace(name='dev')  (ready once its port answers)"
        await self.ask(headline, "create_workspace", lc.create_workspace, name="dev")
        first = await self._show_server()
        await self.ask(
            "stop_workspace()  (SIGTERM to the server; its directory stays)",
            "stop_workspace",
            lc.stop_workspace,
        )
        _show_gone(first)
        await self.ask("start_workspace()  (a new process)", "start_workspace", lc.start_workspace)
        second = await self._show_server()
        out(f"\n> kill -9 {second}  (the server crashes: its end is an event, the agent turns off)")
        os.kill(second, signal.SIGKILL)
        with anyio.fail_after(30):
            await self.crashed.wait()
        await settle()
        headline = "delete_workspace()  (the process ends and its directory is removed)"
        await self.ask(headline, "delete_workspace", lc.delete_workspace)
        _show_gone(second)

    def changed(self, change: StateChange) -> None:
        if change.from_state is WorkspaceState.AGENT_READY and change.to_state is WorkspaceState.RUNNING:
            self.crashed.set()

    async def _show_server(self) -> int:
        """Print the workspace's URL and the status line its server answers; return its pid."""
        row = await self.store.get_chat(self.chat)
        assert row is not None and row.workspace_id is not None
        state = json.loads((self.provisioner.workspace_dir(row.workspace_id) / "workspace.json").read_text())
        url = f"http://127.0.0.1:{state['port']}/"

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                return f"HTTP/{response.version // 10}.{response.version % 10} {response.status} {response.reason}"

        line = await anyio.to_thread.run_sync(fetch)
        out(f"  = the workspace (pid {state['pid']}) answers at {url}: {line}")
        pid: int = state["pid"]
        return pid


def _show_gone(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        out(f"  = pid {pid} is gone")
        return
    out(f"  = pid {pid} still runs")
