"""What every benchmark shares: result rows, percentiles, CPU clocks, the machine's description,
throwaway PostgreSQL schemas, child processes, a counting store, a Coder-style polling waiter
and a provisioner that stamps the moment each build/agent event committed.

Nothing here is timed by pytest: benchmarks run by hand (``python -m bench``); the smoke tests
only check that the quick mode runs and produces well-formed results.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import resource
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, Transition
from workspace_lifecycle.adapters.base import Store
from workspace_lifecycle.adapters.driver import Driver, Plan, Retry, WrappedDriver
from workspace_lifecycle.adapters.store import DriverStore, as_driver_store

T = TypeVar("T")
R = TypeVar("R")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PG_URL = os.environ.get("WORKSPACE_LIFECYCLE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

#: Coder's chat tool re-reads the build (and then the agent) every 2 s.
CODER_POLL_SECONDS = 2.0


# --- results -------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of RESULTS.md: a figure, ours, the baseline measured in the same run, the ratio."""

    figure: str
    ours: float | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    ratio_name: str = ""  # how the ratio reads, e.g. "poller/ours"
    goal: str = ""
    met: bool | None = None  # None: no goal, or not measurable here
    note: str = ""


@dataclass
class Result:
    """What one benchmark returns: its rows, raw data (for plots and the JSON), and notes."""

    name: str
    quick: bool
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        if self.quick and row.goal:
            row.met = None  # the quick mode's tiny samples and scaled intervals judge nothing
        self.rows.append(row)
        print("  " + format_row(row), flush=True)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """How to run: ``quick`` is the tiny smoke mode; ``pg_url`` None skips PostgreSQL parts;
    ``local`` False skips the memory and SQLite parts."""

    quick: bool = False
    pg_url: str | None = None
    tmp: Path = field(default_factory=lambda: Path("/tmp"))
    local: bool = True  # False: only the PostgreSQL parts (the smoke test's postgres half)
    #: ``KEY=VALUE`` options added to the PostgreSQL store URLs of the benchmarks that take
    #: them (``replicas``), e.g. a notification mode.
    store_options: tuple[str, ...] = ()


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if value == 0:
        text = "0"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"


def format_row(row: Row) -> str:
    parts = [f"{row.figure}: {fmt(row.ours, row.unit)}"]
    if row.baseline is not None:
        parts.append(f"baseline ({row.baseline_name}) {fmt(row.baseline, row.unit)}")
    if row.ratio is not None:
        parts.append(f"ratio {row.ratio_name} {fmt_ratio(row.ratio)}")
    if row.goal:
        parts.append(f"goal {row.goal}: {'met' if row.met else 'MISSED' if row.met is False else 'n/a'}")
    return "; ".join(parts)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


async def calls_per_second(call: Callable[[], Awaitable[Any]], seconds: float) -> float:
    """Calls per second of ``call``, one after another, for ``seconds``, and at least one call
    (a short window on a loaded machine may be over before the first: no rate of zero, which
    a caller inverts into a time per call)."""
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        await call()
        count += 1
        if time.perf_counter() >= deadline:
            break
    return count / (time.perf_counter() - started)


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation; ``values`` must not be empty."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def cpu_seconds() -> float:
    """User + system CPU of this process (every thread), from getrusage."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mb() -> float:
    """Peak resident set of this process in MiB: ``VmHWM`` where /proc has it (reset at exec, so
    a child does not inherit its parent's peak, as ``ru_maxrss`` does), else ``ru_maxrss``."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def settle(idle_seconds: float) -> float:
    """How long to let a process settle before measuring it idle (shorter in the quick mode)."""
    return 0.5 if idle_seconds >= 1 else 0.05


async def idle_cpu_percent(seconds: float) -> float:
    """Percent of one core this process burns while the caller sleeps ``seconds``."""
    c0, t0 = cpu_seconds(), time.monotonic()
    await anyio.sleep(seconds)
    return 100 * (cpu_seconds() - c0) / (time.monotonic() - t0)


def pg_version(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else None
    except Exception as exc:
        return f"unreachable: {exc.__class__.__name__}"


def pg_reachable(url: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3):
            return True
    except Exception:
        return False


def machine(pg_url: str | None) -> dict[str, Any]:
    import statemachine

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg_version(pg_url),
        "python_statemachine": getattr(statemachine, "__version__", "?"),
        "workspace_lifecycle": wl.__version__,
        "loadavg": loadavg(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


@contextlib.contextmanager
def pg_schema(pg_url: str) -> Iterator[str]:
    """A store URL with a fresh schema of its own; the schema is dropped afterwards."""
    import psycopg

    schema = f"wl_bench_{uuid.uuid4().hex[:10]}"
    try:
        yield f"{pg_url}?schema={schema}"
    finally:
        # The server is shared and may be restarting (another session's test): try for a while.
        for attempt in range(30):
            try:
                with psycopg.connect(pg_url, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                break
            except psycopg.OperationalError:
                if attempt == 29:
                    raise
                time.sleep(1)


# --- child processes -------------------------------------------------------------------------


class Child:
    """A ``python -m bench._child`` process spoken to by lines on stdin/stdout."""

    def __init__(self, *argv: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._child", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    async def line(self) -> str:
        assert self.proc.stdout is not None
        text: str = await anyio.to_thread.run_sync(self.proc.stdout.readline)
        if not text:
            raise RuntimeError(f"bench child {self.proc.args} exited ({self.proc.poll()})")
        return text.strip()

    async def json(self) -> Any:
        return json.loads(await self.line())

    async def expect(self, word: str) -> None:
        got = await self.line()
        if got != word:
            raise RuntimeError(f"bench child said {got!r}, expected {word!r}")

    def close(self, timeout: float = 30.0) -> None:
        """Close stdin (the child exits on EOF) and wait; kill this one child if it hangs."""
        with contextlib.suppress(BrokenPipeError, OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def children(*argvs: Sequence[str]) -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        for argv in argvs:
            started.append(Child(*argv))
        yield started
    finally:
        for child in started:
            child.close()


# --- a store that counts its calls -----------------------------------------------------------


class CountingStore(DriverStore):
    """The store ``inner`` with each driver call counted by method name: one write (one try of
    a transaction, by the store method it serves) or one read; ``wait_for_change`` is counted
    apart since it is a sleep, not a query. Closing it closes ``inner``."""

    def __init__(self, inner: Store) -> None:
        self.inner = as_driver_store(inner)
        self.calls: Counter[str] = Counter()
        super().__init__(_CountingDriver(self.inner.driver, self.calls))

    @property
    def queries(self) -> int:
        return sum(n for name, n in self.calls.items() if name != "wait_for_change")

    async def aclose(self) -> None:
        await self.inner.aclose()


class _CountingDriver(WrappedDriver):
    def __init__(self, inner: Driver, calls: Counter[str]) -> None:
        super().__init__(inner)
        self.calls = calls

    async def around_write(self, plan: Plan[T], call: Callable[[], Awaitable[T | Retry]]) -> T | Retry:
        self.calls[plan.op] += 1
        return await call()

    async def around_read(self, name: str, call: Callable[[], Awaitable[R]]) -> R:
        self.calls[name] += 1
        return await call()


# --- the baseline: a waiter written the way Coder's start_workspace waits today -------------


async def coder_start(store: Store, chat_id: str, interval: float = CODER_POLL_SECONDS) -> float:
    """Coder's ``start_workspace`` wait: fire a start if stopped, then re-read the build every
    ``interval`` until it finished, then the agent every ``interval`` until it left
    created/starting. Returns ``time.monotonic()`` at the moment it has its answer."""
    chat = await store.get_chat(chat_id)
    assert chat is not None and chat.workspace_id is not None
    ws = chat.workspace_id
    facts = await store.workspace_facts(ws)
    latest = facts.latest_build
    assert latest is not None
    number = latest.number
    if latest.status.finished and not (
        latest.transition is Transition.START and latest.status is JobStatus.SUCCEEDED
    ):
        out = await store.request_build(ws, Transition.START, expected_build_number=number)
        if out.build is not None:
            number = out.build.number
    while True:  # waitForBuild
        facts = await store.workspace_facts(ws)
        build = facts.latest_build
        if build is not None and (build.number > number or build.status.finished):
            break
        await anyio.sleep(interval)
    while True:  # the agent's lifecycle wait
        build = facts.latest_build
        if build is None or not build.has_agent:
            break
        agent = facts.agent
        if agent is not None and agent.lifecycle not in (AgentLifecycle.CREATED, AgentLifecycle.STARTING):
            break
        await anyio.sleep(interval)
        facts = await store.workspace_facts(ws)
    return time.monotonic()


# --- a provisioner that stamps its commits ---------------------------------------------------


@dataclass
class Stamp:
    """The final event of one start: which workspace, which kind, and when its write was called
    and when the committed write returned (``time.monotonic()``, one clock for all processes)."""

    workspace_id: str
    kind: str  # "build" (a start build without an agent finished) or "agent" (agent became ready)
    called: float
    committed: float


async def stamping_provisioner(
    store: Store,
    emit: Callable[[Stamp], Awaitable[None] | None],
    *,
    delay: Sequence[float] = (0.01, 0.01),
    agent_delay: float = 0.005,
    worker: str = "bench",
) -> None:
    """Claim builds forever. Stop/delete builds finish at once. Start builds finish after a
    delay drawn from ``delay`` (read at each claim: a list may be changed meanwhile; so the
    waiter is asleep), alternately without an agent (the
    build's commit is the awaited event) and with one that becomes ready ``agent_delay`` later
    (the agent's commit is the awaited event); each awaited commit is passed to ``emit``."""
    rng = random.Random(1)
    starts = 0

    async def complete(build: wl.Build, with_agent: bool, wait: float) -> None:
        if build.transition is not Transition.START:
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED)
            return
        await anyio.sleep(wait)
        if with_agent:
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
            await anyio.sleep(agent_delay)
            called = time.monotonic()
            await store.report_agent(build.workspace_id, AgentLifecycle.READY)
            stamp = Stamp(build.workspace_id, "agent", called, time.monotonic())
        else:
            called = time.monotonic()
            await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
            stamp = Stamp(build.workspace_id, "build", called, time.monotonic())
        out = emit(stamp)
        if out is not None:
            await out

    async with anyio.create_task_group() as tg:
        async for build in wl.claims(store, worker):
            with_agent = False
            if build.transition is Transition.START:
                with_agent = starts % 2 == 1
                starts += 1
            tg.start_soon(complete, build, with_agent, rng.uniform(*delay))


async def make_workspaces(store: Store, n: int, *, prefix: str = "c", stopped: bool = True) -> list[str]:
    """``n`` chats, each with a workspace whose start (and, if ``stopped``, stop) build finished;
    returns the chat ids. Builds are finished here, directly, not by a provisioner."""
    chats = []
    for i in range(n):
        chat = f"{prefix}{i}"
        await store.register_chat(chat, "bench")
        out = await store.create_workspace(chat, "dev", expected_workspace_id=None)
        assert out.build is not None
        await _finish_claimed(store, out.build.build_id)
        if stopped:
            stop = await store.request_build(
                out.facts.workspace_id, Transition.STOP, expected_build_number=out.build.number
            )
            assert stop.build is not None
            await _finish_claimed(store, stop.build.build_id)
        chats.append(chat)
    return chats


async def report_agent_rate(store: Store, seconds: float, writers: int) -> float:
    """Durable events/s of ``store.report_agent`` (one transaction: update the agent row, append
    one event) from ``writers`` concurrent tasks, each on its own workspace, for ``seconds``
    (each task writes at least once; none if ``seconds`` is 0: the workspaces only)."""
    workspaces = []
    for i in range(writers):
        await store.register_chat(f"t{i}", "bench")
        out = await store.create_workspace(f"t{i}", "dev", expected_workspace_id=None)
        build = await store.claim_build("bench")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
        workspaces.append(out.facts.workspace_id)
    lifecycles = [AgentLifecycle.STARTING, AgentLifecycle.READY]
    before = await store.head()
    deadline = time.perf_counter() + seconds

    async def writer(ws: str) -> None:
        i = 0
        while seconds > 0:  # at least one write each: a short window may be over before the first
            await store.report_agent(ws, lifecycles[i % 2])
            i += 1
            if time.perf_counter() >= deadline:
                break

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for ws in workspaces:
            tg.start_soon(writer, ws)
    elapsed = time.perf_counter() - started
    return len(await store.read_events(before, limit=10**9)) / elapsed


async def _finish_claimed(store: Store, build_id: str) -> None:
    build = await store.claim_build("setup")
    assert build is not None and build.build_id == build_id, "setup expects an idle provisioner"
    await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)


async def stop_and_wait(store: Store, chat_id: str) -> None:
    """Queue a stop of the chat's workspace (if running) and wait until a provisioner finished it."""
    chat = await store.get_chat(chat_id)
    assert chat is not None and chat.workspace_id is not None
    ws = chat.workspace_id
    facts = await store.workspace_facts(ws)
    latest = facts.latest_build
    assert latest is not None
    if latest.transition is Transition.STOP and latest.status is JobStatus.SUCCEEDED:
        return
    out = await store.request_build(ws, Transition.STOP, expected_build_number=latest.number)
    assert out.build is not None, "stop_and_wait needs a finished build to stop"
    while True:
        facts = await store.workspace_facts(ws)
        latest = facts.latest_build
        if latest is not None and latest.number == out.build.number and latest.status.finished:
            return
        await store.wait_for_change(facts.seq)
