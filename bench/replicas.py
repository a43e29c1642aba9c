"""10. Replicas: 1, 2, 4 and 8 replica processes on one PostgreSQL under one steady workload.

Each configuration runs in a fresh schema (dropped afterwards) with the same workload:

* ``W`` chats, each with a workspace (stopped at the start) and the between-turns policy
  ``idle_stop_after``. Chat ``k`` is driven by a caller on replica ``k mod R`` (how a load
  balancer spreads chats): a turn is ``ensure_running`` (a resume waits for the start build and
  the agent), a few ``touch`` calls while the agent works, sometimes an explicit
  ``stop_workspace`` or ``delete_workspace`` (the next turn is then ``create_workspace``); then
  the chat is quiet for an exponential think time, often longer than ``idle_stop_after``, so
  the idle deadline (fired by whichever replica wins) stops it.
* ``R`` replica processes, each a ``wl.Lifecycle`` on its own ``PostgresStore``, and
  provisioner processes that claim builds, finish them after a delay and report the agent
  starting, then ready; they stamp ``time.monotonic()`` (one clock for every process on Linux)
  when the awaited write's commit returned: a start's (or create's) agent-ready report, a stop's
  (or delete's) finish.

Measured over a window after a warm-up: per replica process its CPU (``getrusage``), the
notifications its listener received (the store's ``notifications_received`` if it has one,
else counted by wrapping the listener's payload check), those acted on (``listener_wakeups``:
a notification, or a poll, that moved the known head and woke the process) and its store round
trips (``PostgresStore.round_trips``); for the database, from the parent: commits/s
(``pg_stat_database.xact_commit``, every transaction of the database, read-only ones and other
sessions' included), write transactions/s (transaction ids assigned, cluster-wide), events/s
(our log), NOTIFYs/s (a listener of the parent on the store's channel counts them) and lock
waits (``pg_stat_activity`` of our sessions, sampled every 0.1 s); and the wake-up latency
from a provisioner's commit to the caller's answer in a replica process. Ratios are against
the one-replica run of the same invocation; no absolute time is a goal.

Store options (``python -m bench replicas --store-option shards=8``) are added to every
process's store URL; one this PostgresStore does not know is dropped with a note.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, Transition

from . import common
from .common import Context, Result, Row

REPLICAS = (1, 2, 4, 8)
QUICK_REPLICAS = (1, 2)
OWNER = "bench"
#: Goals of issue 19 (judged in the full mode only).
WAKE_P99_GOAL_MS = 5.0
WAKE_P99_GOAL_UP_TO = 4
COMMITS_GOAL_RATIO = 0.8
#: "∝ its share": a replica receives at most this many times its share (1/R) of the NOTIFYs.
SHARE_SLACK = 2.0
#: Pooled connections per process (plus its listener): 10 processes at the default of 10 would
#: take 110 of the shared server's 100 connections.
POOL_MAX_SIZE = 2
#: Seconds between the parent's samples of pg_stat_activity.
SAMPLE_EVERY = 0.1


@dataclass(frozen=True)
class Workload:
    """The same for every number of replicas (seconds unless said)."""

    workspaces: int
    provisioners: int
    think: float  # mean quiet time between a chat's turns (exponential)
    idle_stop_after: float  # the chats' policy: the deadline that stops a quiet workspace
    touches: int  # touch calls per turn
    touch_gap: float  # mean time between them (exponential)
    stop_share: float  # share of turns that end with an explicit stop_workspace
    delete_share: float  # share of turns that end with delete_workspace (the next turn creates)
    start_delay: float  # a start build's duration
    agent_delay: float  # between the build's end and each agent report
    stop_delay: float  # a stop (or delete) build's duration
    warmup: float
    window: float


FULL = Workload(
    workspaces=60,
    provisioners=2,
    think=4.0,
    idle_stop_after=3.0,
    touches=2,
    touch_gap=0.4,
    stop_share=0.2,
    delete_share=0.05,
    start_delay=0.2,
    agent_delay=0.05,
    stop_delay=0.1,
    warmup=4.0,
    window=25.0,
)
QUICK = Workload(
    workspaces=8,
    provisioners=1,
    think=0.4,
    idle_stop_after=0.3,
    touches=1,
    touch_gap=0.05,
    stop_share=0.2,
    delete_share=0.1,
    start_delay=0.02,
    agent_delay=0.005,
    stop_delay=0.01,
    warmup=0.25,
    window=1.0,
)


# --- the child processes (``python -m bench._child replica|builder URL --config JSON``) -------


def _print(obj: Any) -> None:
    print(obj if isinstance(obj, str) else json.dumps(obj), flush=True)


async def _sleep_until(at: float) -> None:
    await anyio.sleep(max(0.0, at - time.monotonic()))


async def _until_eof(scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` when stdin closes (the parent is done with us, or gone)."""
    while await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
        pass
    scope.cancel()


async def _set_up(config: dict[str, Any]) -> None:
    """With ``after_setup`` in the configuration (the quick mode: the process was started while
    the parent set the schema up, so that its imports overlap that), wait for the parent's
    ``set up`` line before opening the store."""
    if config.get("after_setup"):
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if line.strip() != "set up":
            raise SystemExit(f"expected 'set up', got {line!r}")


async def _go() -> tuple[float, float, float]:
    """Read the parent's ``go T0 FROM TO`` line: when the workload starts, and the window."""
    line = await anyio.to_thread.run_sync(sys.stdin.readline)
    word, *times = line.split()
    if word != "go" or len(times) != 3:
        raise SystemExit(f"expected 'go T0 FROM TO', got {line!r}")
    t0, t_from, t_to = map(float, times)
    return t0, t_from, t_to


def notification_counter(store: wl.Store) -> tuple[str, Callable[[], int | None]]:
    """How this process counts the notifications its listener receives, and the counter.

    The store's own ``notifications_received`` if it has one; else the listener's payload
    check, called once per notification received, is wrapped (no library code changes);
    else ``n/a``."""
    if getattr(store, "notifications_received", None) is not None:
        return "the store's notifications_received", lambda: int(store.notifications_received)  # type: ignore[attr-defined]
    check = getattr(store, "_hinted_head", None)
    if check is None:
        return "n/a", lambda: None
    seen = [0]

    def counting(payload: str) -> int:
        seen[0] += 1
        result: int = check(payload)
        return result

    store._hinted_head = counting  # type: ignore[attr-defined]
    return "the listener's payload check, wrapped by the bench", lambda: seen[0]


def _snapshot(
    store: wl.Store, notifications: Callable[[], int | None], lc: wl.Lifecycle | None
) -> dict[str, Any]:
    return {
        "t": time.monotonic(),
        "cpu": common.cpu_seconds(),
        "round_trips": getattr(store, "round_trips", None),
        "wire_round_trips": getattr(store, "wire_round_trips", None),
        "notifications": notifications(),
        "acted": getattr(store, "listener_wakeups", None),
        "events_applied": lc.events_applied if lc is not None else None,
        "deadlines_fired": lc.deadlines_fired if lc is not None else None,
        "batched_writes": getattr(store, "batched_writes", None),
    }


async def _meter(
    store: wl.Store,
    notifications: Callable[[], int | None],
    lc: wl.Lifecycle | None,
    t_from: float,
    t_to: float,
) -> dict[str, Any]:
    await _sleep_until(t_from)
    first = _snapshot(store, notifications, lc)
    await _sleep_until(t_to)
    return {"from": first, "to": _snapshot(store, notifications, lc)}


def _answer(kind: str, result: wl.ToolResult, called: float) -> list[Any]:
    answered = time.monotonic()
    error = result.text if result.is_error or "error" in result.data else None
    return [kind, result.data.get("build_id"), called, answered, error]


async def _chat(lc: wl.Lifecycle, k: int, w: Workload, t0: float, answers: list[list[Any]]) -> None:
    """One chat's turns, for ever (the parent ends the process)."""
    rng = random.Random(k)
    chat = f"c{k}"
    deleted = False
    await _sleep_until(t0 + rng.uniform(0, w.think))
    while True:
        try:
            called = time.monotonic()
            if deleted:  # the user deleted it last turn: a new one
                answers.append(_answer("create", await lc.create_workspace(chat, owner=OWNER), called))
                deleted = False
            else:
                answers.append(_answer("start", await lc.ensure_running(chat, owner=OWNER), called))
            for _ in range(w.touches):
                await anyio.sleep(rng.expovariate(1 / w.touch_gap))
                await lc.touch(chat, owner=OWNER)
            end = rng.random()
            if end < w.stop_share:
                called = time.monotonic()
                answers.append(_answer("stop", await lc.stop_workspace(chat, owner=OWNER), called))
            elif end < w.stop_share + w.delete_share:
                called = time.monotonic()
                answers.append(_answer("delete", await lc.delete_workspace(chat, owner=OWNER), called))
                deleted = True
        except wl.errors.WorkspaceLifecycleError as exc:  # counted, not fatal: a bench reports it
            answers.append(["error", None, 0.0, time.monotonic(), f"{type(exc).__name__}: {exc}"])
        await anyio.sleep(rng.expovariate(1 / w.think))


async def replica_child(url: str, config: dict[str, Any]) -> None:
    """A replica: a Lifecycle on its own store, the callers of its share of the chats."""
    w = Workload(**config["workload"])
    index, replicas = config["index"], config["replicas"]
    await _set_up(config)
    async with wl.open_store(url) as store:
        source, notifications = notification_counter(store)
        async with wl.Lifecycle(store, build_timeout=120, agent_timeout=120) as lc:
            _print("ready")
            t0, t_from, t_to = await _go()
            answers: list[list[Any]] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(_until_eof, tg.cancel_scope)
                for k in range(index, w.workspaces, replicas):
                    tg.start_soon(_chat, lc, k, w, t0, answers)
                marks = await _meter(store, notifications, lc, t_from, t_to)
                # The load goes on until the parent closes stdin: its last sample of the
                # server sees every connection still open.
                _print({"role": "replica", "index": index, "source": source, "answers": answers, **marks})


async def _provision(
    store: wl.Store, w: Workload, worker: str, stamps: dict[str, list[float]], errors: list[str]
) -> None:
    """Claim builds for ever; stamp each awaited commit: a start's agent-ready report, a stop's finish."""

    async def complete(build: wl.Build) -> None:
        try:
            if build.transition is Transition.START:
                await anyio.sleep(w.start_delay)
                await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=True)
                await anyio.sleep(w.agent_delay)
                await store.report_agent(build.workspace_id, AgentLifecycle.STARTING)
                await anyio.sleep(w.agent_delay)
                called = time.monotonic()
                await store.report_agent(build.workspace_id, AgentLifecycle.READY)
            else:  # a stop or a delete
                await anyio.sleep(w.stop_delay)
                called = time.monotonic()
                await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
            stamps[build.build_id] = [called, time.monotonic()]
        except wl.errors.WorkspaceLifecycleError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    async with anyio.create_task_group() as tg:
        async for build in wl.claims(store, worker):
            tg.start_soon(complete, build)


async def builder_child(url: str, config: dict[str, Any]) -> None:
    """A provisioner process."""
    w = Workload(**config["workload"])
    await _set_up(config)
    async with wl.open_store(url) as store:
        source, notifications = notification_counter(store)
        _print("ready")
        _, t_from, t_to = await _go()
        stamps: dict[str, list[float]] = {}
        errors: list[str] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_until_eof, tg.cancel_scope)
            tg.start_soon(_provision, store, w, f"p{config['index']}", stamps, errors)
            marks = await _meter(store, notifications, None, t_from, t_to)
            _print(
                {
                    "role": "builder",
                    "index": config["index"],
                    "source": source,
                    "stamps": stamps,
                    "errors": errors,
                    **marks,
                }
            )


# --- the parent: processes, samples of the database, figures ------------------------------


@contextlib.contextmanager
def _processes(argvs: Sequence[Sequence[str]]) -> Iterator[list[common.Child]]:
    """Child processes that are all gone when this exits: on success their stdin is closed
    and they get 10 s to exit; on failure (or Ctrl-C), or past those 10 s, they are killed."""
    started: list[common.Child] = []
    ok = False
    try:
        for argv in argvs:
            started.append(common.Child(*argv))
        yield started
        ok = True
    finally:
        deadline = time.monotonic() + (10.0 if ok else 0.0)
        for child in started:
            with contextlib.suppress(BrokenPipeError, OSError):
                if child.proc.stdin is not None:
                    child.proc.stdin.close()
        for child in started:
            try:
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            if child.proc.stdout is not None:
                child.proc.stdout.close()


def _with_query(url: str, *params: str) -> str:
    for param in params:
        url += ("&" if "?" in url else "?") + param
    return url


def supported_options(pg_url: str, options: Sequence[str]) -> tuple[list[str], list[str]]:
    """The store options this PostgresStore accepts, and those it refuses (dropped)."""
    from workspace_lifecycle.adapters.postgres import PostgresStore

    ok, refused = [], []
    for option in options:
        try:
            PostgresStore.from_url(f"{pg_url}?schema=probe&{option}")
        except ValueError:
            refused.append(option)
        else:
            ok.append(option)
    return ok, refused


async def _setup(url: str, w: Workload) -> None:
    """``W`` chats with the idle policy, each with a workspace started and stopped."""
    async with wl.open_store(url) as store:
        policy = wl.Policy(idle_stop_after=w.idle_stop_after)
        for k in range(w.workspaces):
            await store.register_chat(f"c{k}", OWNER, policy=policy)
        await common.make_workspaces(store, w.workspaces, prefix="c")


def _proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (a PostgreSQL backend on this machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> tuple[float, float] | None:
    """(busy, total) jiffies of every CPU of the machine, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in first[1:8]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


class _Database:
    """What the parent reads of the server: counters at the window's edges, wait samples within."""

    def __init__(self, pg_url: str, schema: str, tag: str) -> None:
        self.pg_url, self.schema, self.tag = pg_url, schema, tag
        self.waits: Counter[str] = Counter()
        self.samples = 0
        self.notifies = 0
        self.backend_cpu: dict[int, list[float]] = {}  # pid -> [CPU seconds first seen, last seen]

    async def counters(self, conn: Any) -> dict[str, Any]:
        cur = await conn.execute(
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),"
            " pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
            f' (SELECT coalesce(max(seq), 0) FROM "{self.schema}".events)'
        )
        row = await cur.fetchone()
        return {
            "t": time.monotonic(),
            "xact_commit": int(row[0]),
            "xids": int(row[1]),
            "head": int(row[2]),
            "machine": _machine_busy(),
        }

    async def sample(self, conn: Any) -> None:
        """Our sessions' waits, and the CPU of their backends (first and last seen)."""
        cur = await conn.execute(
            "SELECT pid, wait_event_type, wait_event FROM pg_stat_activity WHERE application_name LIKE %s",
            (f"{self.tag}%",),
        )
        for pid, kind, event in await cur.fetchall():
            if kind in ("Lock", "LWLock", "IO", "IPC"):
                self.waits[f"{kind}:{event}"] += 1
            cpu = _proc_cpu(pid)
            if cpu is not None:
                # A backend born within the window started at 0: its whole life counts.
                self.backend_cpu.setdefault(pid, [cpu if self.samples == 0 else 0.0, cpu])[1] = cpu
        self.samples += 1

    async def background(self, seconds: float) -> float:
        """Commits/s of the database while our processes are up but idle: other sessions' share
        (the server is shared) plus our idle polls."""
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.pg_url, autocommit=True) as conn:
            first = await self.counters(conn)
            await anyio.sleep(seconds)
            last = await self.counters(conn)
        return float(last["xact_commit"] - first["xact_commit"]) / (last["t"] - first["t"])

    async def measure(self, t_from: float, t_to: float) -> dict[str, Any]:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.pg_url, autocommit=True) as conn:
            await _sleep_until(t_from)
            first = await self.counters(conn)
            while True:
                await self.sample(conn)
                if time.monotonic() >= t_to:
                    break
                await anyio.sleep(min(SAMPLE_EVERY, max(0.0, t_to - time.monotonic())))
            last = await self.counters(conn)
        return {"from": first, "to": last, "backend_cpu": sum(b - a for a, b in self.backend_cpu.values())}

    async def count_notifies(
        self, channels: Sequence[str], ready: anyio.Event, t_from: float, t_to: float
    ) -> None:
        """A listener of the parent on every channel of the store counts the NOTIFYs of the window."""
        import psycopg
        from psycopg import sql

        async with await psycopg.AsyncConnection.connect(self.pg_url, autocommit=True) as conn:
            for channel in channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            ready.set()
            while (left := t_to - time.monotonic()) > 0:
                async for _ in conn.notifies(timeout=left):
                    if t_from <= time.monotonic() <= t_to:
                        self.notifies += 1


async def run_config(
    pg_url: str, replicas: int, w: Workload, options: Sequence[str], *, overlap: bool = False
) -> dict[str, Any]:
    """One configuration in a fresh schema: its raw figures. With ``overlap`` (the quick mode)
    the processes start while the schema is set up, and open their stores once it is."""
    with common.pg_schema(pg_url) as url:
        schema = url.rsplit("schema=", 1)[1]
        tag = f"wlb_{schema[-10:]}_"
        url = _with_query(url, f"pool_max_size={POOL_MAX_SIZE}", *options)
        workload = asdict(w)
        after = {"after_setup": True} if overlap else {}
        argvs = [
            [
                "builder",
                _with_query(url, f"application_name={tag}p{i}"),
                "--config",
                json.dumps({"index": i, "workload": workload, **after}),
            ]
            for i in range(w.provisioners)
        ] + [
            [
                "replica",
                _with_query(url, f"application_name={tag}r{i}"),
                "--config",
                json.dumps({"index": i, "replicas": replicas, "workload": workload, **after}),
            ]
            for i in range(replicas)
        ]
        db = _Database(pg_url, schema, tag)
        if not overlap:
            await _setup(url, w)
        with _processes(argvs) as kids:
            if overlap:
                await _setup(url, w)
                for kid in kids:
                    kid.send("set up")
            for kid in kids:
                await kid.expect("ready")
            background = await db.background(min(w.warmup, 2.0))
            t0 = time.monotonic() + 0.3
            t_from = t0 + w.warmup
            t_to = t_from + w.window
            async with anyio.create_task_group() as tg:
                listening = anyio.Event()
                tg.start_soon(db.count_notifies, channels(url), listening, t_from, t_to)
                await listening.wait()
                for kid in kids:
                    kid.send(f"go {t0} {t_from} {t_to}")
                counters = await db.measure(t_from, t_to)
            outs = [await kid.json() for kid in kids]
            pids = [kid.proc.pid for kid in kids]
    return {
        "replicas": replicas,
        "schema": schema,
        "pids": pids,
        "outs": outs,
        "db": counters,
        "background_commits_per_s": background,
        "waits": dict(db.waits),
        "samples": db.samples,
        "notifies": db.notifies,
    }


def channels(url: str) -> list[str]:
    """Every channel a store of ``url`` may NOTIFY: its one channel, and with ``shards`` each
    shard's and the builds' (read from an unopened store: the names are the adapter's)."""
    from workspace_lifecycle.adapters.postgres import PostgresStore

    store = PostgresStore.from_url(url)
    names = [store._channel]
    if getattr(store, "shards", 0):
        names += [*getattr(store, "_shard_channels", ()), getattr(store, "_builds_channel", store._channel)]
    return list(dict.fromkeys(names))


def _server_started(pg_url: str) -> str | None:
    """When the server last started, or None while it is unreachable."""
    import psycopg

    try:
        with psycopg.connect(pg_url, connect_timeout=3) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    except psycopg.OperationalError:
        return None
    return None if row is None else str(row[0])


async def _run_config_once_more(
    result: Result, pg_url: str, replicas: int, w: Workload, options: Sequence[str], *, overlap: bool = False
) -> dict[str, Any]:
    """:func:`run_config`, run again once if the shared server restarted under it (another
    session's test may restart it): a run that lost its connections measures the restart."""
    for attempt in (1, 2):
        started = _server_started(pg_url)
        try:
            raw = await run_config(pg_url, replicas, w, options, overlap=overlap)
        except Exception as exc:
            if attempt == 2 or _server_started(pg_url) == started:
                raise
            why = f"failed ({exc!r:.120})"
        else:
            if _server_started(pg_url) == started:
                return raw
            if attempt == 2:
                result.note(f"{_plural(replicas)}: the PostgreSQL server restarted during the run again")
                return raw
            why = "was disturbed"
        result.note(
            f"{_plural(replicas)}: the PostgreSQL server restarted during the run, which {why}; ran again"
        )
        for _ in range(60):  # wait for it to answer again
            if _server_started(pg_url) is not None:
                break
            await anyio.sleep(1)
    raise AssertionError("unreachable")


def _delta(out: dict[str, Any], key: str) -> float | None:
    a, b = out["from"][key], out["to"][key]
    return None if a is None or b is None else b - a


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    """The figures of one configuration (rates per second of the window)."""
    db = raw["db"]
    first, last = db["from"], db["to"]
    seconds = last["t"] - first["t"]
    replicas = [o for o in raw["outs"] if o["role"] == "replica"]
    builders = [o for o in raw["outs"] if o["role"] == "builder"]
    stamps: dict[str, list[float]] = {}
    for b in builders:
        stamps.update(b["stamps"])
    per: list[dict[str, Any]] = []
    wake: list[float] = []
    wake_from_call: list[float] = []
    errors: list[str] = [e for b in builders for e in b["errors"]]
    answered = 0
    kinds: Counter[str] = Counter()  # answers by request
    waited: Counter[str] = Counter()  # of which waited for a provisioner's commit
    t_from, t_to = replicas[0]["from"]["t"], replicas[0]["to"]["t"]
    for r in replicas:
        span = r["to"]["t"] - r["from"]["t"]

        def rate(key: str, r: dict[str, Any] = r, span: float = span) -> float | None:
            d = _delta(r, key)
            return None if d is None else d / span

        per.append(
            {
                "cpu_percent": 100 * (r["to"]["cpu"] - r["from"]["cpu"]) / span,
                "notifications_per_s": rate("notifications"),
                "acted_per_s": rate("acted"),
                "round_trips_per_s": rate("round_trips"),
                "wire_round_trips_per_s": rate("wire_round_trips"),
                "events_applied_per_s": rate("events_applied"),
                "deadlines_fired": _delta(r, "deadlines_fired"),
                "source": r["source"],
            }
        )
        for kind, build_id, _called, done, error in r["answers"]:
            if not t_from <= done <= t_to:
                continue
            answered += 1
            kinds[kind] += 1
            if error:
                errors.append(f"{kind}: {error}")
                continue
            stamp = stamps.get(build_id) if build_id else None
            if stamp is not None and stamp[1] <= done + 1.0:  # the caller waited for this commit
                waited[kind] += 1
                wake.append((done - stamp[1]) * 1000)
                wake_from_call.append((done - stamp[0]) * 1000)
    builder_cpu = [
        100 * (b["to"]["cpu"] - b["from"]["cpu"]) / (b["to"]["t"] - b["from"]["t"]) for b in builders
    ]
    backend = db["backend_cpu"]
    machine = None
    if first["machine"] and last["machine"]:
        busy = last["machine"][0] - first["machine"][0]
        total = last["machine"][1] - first["machine"][1]
        machine = (os.cpu_count() or 1) * busy / total if total else None
    ours = (sum(p["cpu_percent"] for p in per) + sum(builder_cpu) + 100 * backend / seconds) / 100
    samples = max(raw["samples"], 1)
    waits = {k: v / samples for k, v in sorted(raw["waits"].items(), key=lambda kv: -kv[1])}
    lock_waits = sum(v for k, v in waits.items() if k.startswith(("Lock:", "LWLock:")))
    notifies = raw["notifies"] / seconds
    events = (last["head"] - first["head"]) / seconds

    def mean(key: str) -> float | None:
        values = [p[key] for p in per if p[key] is not None]
        return sum(values) / len(values) if values else None

    received = mean("notifications_per_s")
    return {
        "replicas": raw["replicas"],
        "schema": raw["schema"],
        "pids": raw["pids"],
        "seconds": seconds,
        "events_per_s": events,
        "notifies_per_s": notifies,
        "commits_per_s": (last["xact_commit"] - first["xact_commit"]) / seconds,
        "background_commits_per_s": raw["background_commits_per_s"],
        "write_xacts_per_s": (last["xids"] - first["xids"]) / seconds,
        "round_trips_per_s": sum(_delta(o, "round_trips") or 0 for o in raw["outs"]) / seconds,
        "wire_round_trips_per_s": sum(_delta(o, "wire_round_trips") or 0 for o in raw["outs"]) / seconds,
        "replica_cpu_percent": mean("cpu_percent"),
        "replica_cpu_percent_max": max(p["cpu_percent"] for p in per),
        "builder_cpu_percent": sum(builder_cpu) / len(builder_cpu),
        "backend_cpu_percent": 100 * backend / seconds,
        "machine_cores_busy": machine,
        "others_cores_busy": None if machine is None else max(0.0, machine - ours),
        "notifications_per_replica_per_s": received,
        "notification_share": None if received is None or not notifies else received / notifies,
        "acted_per_replica_per_s": mean("acted_per_s"),
        "round_trips_per_replica_per_s": mean("round_trips_per_s"),
        "events_applied_per_replica_per_s": mean("events_applied_per_s"),
        "deadlines_fired": sum(p["deadlines_fired"] or 0 for p in per),
        "answers": answered,
        "answers_by_request": dict(kinds),
        "wakeups_by_request": dict(waited),
        "wakeups": len(wake),
        "wake_p50_ms": common.pct(wake, 0.5) if wake else None,
        "wake_p99_ms": common.pct(wake, 0.99) if wake else None,
        "wake_p99_from_call_ms": common.pct(wake_from_call, 0.99) if wake_from_call else None,
        "wake_ms": wake,
        "lock_waits": lock_waits,
        "waits": waits,
        "errors": errors,
        "per_replica": per,
        "notification_source": per[0]["source"],
    }


COLUMNS = (
    ("R", "replicas", "{:d}"),
    ("events/s", "events_per_s", "{:.0f}"),
    ("NOTIFY/s", "notifies_per_s", "{:.0f}"),
    ("commits/s", "commits_per_s", "{:.0f}"),
    ("idle commits/s", "background_commits_per_s", "{:.0f}"),
    ("write tx/s", "write_xacts_per_s", "{:.0f}"),
    ("CPU/replica %", "replica_cpu_percent", "{:.1f}"),
    ("CPU/prov %", "builder_cpu_percent", "{:.1f}"),
    ("PG backends %", "backend_cpu_percent", "{:.0f}"),
    ("cores busy", "machine_cores_busy", "{:.2f}"),
    ("not ours", "others_cores_busy", "{:.2f}"),
    ("notif recv/replica/s", "notifications_per_replica_per_s", "{:.0f}"),
    ("recv/sent", "notification_share", "{:.2f}"),
    ("acted/replica/s", "acted_per_replica_per_s", "{:.1f}"),
    ("round trips/replica/s", "round_trips_per_replica_per_s", "{:.0f}"),
    ("round trips/s, all", "round_trips_per_s", "{:.0f}"),
    ("wire round trips/s, all", "wire_round_trips_per_s", "{:.0f}"),
    ("wake p50 ms", "wake_p50_ms", "{:.2f}"),
    ("wake p99 ms", "wake_p99_ms", "{:.2f}"),
    ("wake-ups", "wakeups", "{:d}"),
    ("lock waits", "lock_waits", "{:.2f}"),
)


def cpu_model(rows: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """Least squares of a replica's CPU per event of the whole system against its share of the
    chats (1/R): ``heard`` ms for every event (its listener, its pump, its deadlines) plus
    ``own`` ms for each event of its own chats (their requests)."""
    points = [
        (1 / f["replicas"], 10 * f["replica_cpu_percent"] / f["events_per_s"])
        for f in rows
        if f["events_per_s"]
    ]
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    own = sum((x - mx) * (y - my) for x, y in points) / sxx
    return {"heard_ms_per_event": my - own * mx, "own_ms_per_event": own}


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The figures of every configuration as a Markdown table."""
    lines = [
        "| " + " | ".join(title for title, _, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for f in rows:
        cells = [("—" if f[key] is None else form.format(f[key])) for _, key, form in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plural(n: int) -> str:
    return f"{n} replica{'s' if n > 1 else ''}"


def add_rows(result: Result, all_figures: Sequence[dict[str, Any]], mode: str = "") -> None:
    """The rows of one store mode (``mode``: its options, named in each row; "" for the default)."""
    base = all_figures[0]
    for f in all_figures:
        n = f["replicas"]
        head = f"PostgreSQL, {_plural(n)}" + (f" ({mode})" if mode else "")
        within = n <= WAKE_P99_GOAL_UP_TO
        result.add(
            Row(
                f"{head}: wake-up p50, provisioner's commit → caller's answer in a replica process",
                f["wake_p50_ms"],
                "ms",
                note=f"{f['wakeups']} wake-ups (start, create: agent ready; stop, delete: build finished)",
            )
        )
        p99 = f["wake_p99_ms"]
        result.add(
            Row(
                f"{head}: wake-up p99",
                p99,
                "ms",
                baseline=base["wake_p99_ms"] if n > 1 else None,
                baseline_name="1 replica" if n > 1 else "",
                ratio=common.ratio(p99, base["wake_p99_ms"]) if n > 1 else None,
                ratio_name=f"{n}/1" if n > 1 else "",
                goal=f"≤ {WAKE_P99_GOAL_MS:g} ms" if within else "",
                met=(p99 is not None and p99 <= WAKE_P99_GOAL_MS) if within else None,
                note=f"from the write call: p99 {common.fmt(f['wake_p99_from_call_ms'], 'ms')}",
            )
        )
        result.add(
            Row(
                f"{head}: CPU per replica process",
                f["replica_cpu_percent"],
                "% of a core",
                baseline=base["replica_cpu_percent"] if n > 1 else None,
                baseline_name="1 replica" if n > 1 else "",
                ratio=common.ratio(f["replica_cpu_percent"], base["replica_cpu_percent"]) if n > 1 else None,
                ratio_name=f"{n}/1" if n > 1 else "",
                note=(
                    f"max {f['replica_cpu_percent_max']:.1f}%; each provisioner {f['builder_cpu_percent']:.1f}%;"
                    f" our PostgreSQL backends {f['backend_cpu_percent']:.0f}%;"
                    + (
                        f" machine {f['machine_cores_busy']:.2f} of {os.cpu_count()} cores busy"
                        f" ({f['others_cores_busy']:.2f} not ours)"
                        if f["machine_cores_busy"] is not None
                        else ""
                    )
                ),
            )
        )
        share = f["notification_share"]
        last = n == max(x["replicas"] for x in all_figures) and n > 1
        result.add(
            Row(
                f"{head}: notifications received per replica",
                f["notifications_per_replica_per_s"],
                "/s",
                baseline=f["notifies_per_s"],
                baseline_name="NOTIFYs sent",
                ratio=share,
                ratio_name="received/sent",
                goal=f"≤ {SHARE_SLACK:g}/{n} (∝ its share)" if last else "",
                met=(share is not None and share <= SHARE_SLACK / n) if last else None,
                note=(
                    f"acted on {common.fmt(f['acted_per_replica_per_s'], '/s')};"
                    f" events applied to waiting requests {common.fmt(f['events_applied_per_replica_per_s'], '/s')};"
                    f" {f['events_per_s']:.0f} events/s in all; counted by {f['notification_source']}"
                ),
            )
        )
        result.add(
            Row(
                f"{head}: store round trips per replica",
                f["round_trips_per_replica_per_s"],
                "/s",
                baseline=f["events_per_s"],
                baseline_name="events/s",
                ratio=common.ratio(f["round_trips_per_replica_per_s"], f["events_per_s"]),
                ratio_name="per event",
                note="PostgresStore.round_trips: statements or transactions on the pool, each attempt",
            )
        )
        ours = f["commits_per_s"] - f["background_commits_per_s"]
        ours_base = base["commits_per_s"] - base["background_commits_per_s"]
        result.add(
            Row(
                f"{head}: database commits/s (pg_stat_database.xact_commit)",
                f["commits_per_s"],
                "/s",
                baseline=f["background_commits_per_s"],
                baseline_name="same database just before, our processes idle",
                note=(
                    "every session of the shared database, read-only transactions included;"
                    f" minus the background {ours:,.0f}/s"
                    + (f" ({common.fmt_ratio(common.ratio(ours, ours_base))} of 1 replica)" if n > 1 else "")
                    + f"; write transactions {f['write_xacts_per_s']:.0f}/s (xids assigned, cluster-wide);"
                    f" our processes' round trips {f['round_trips_per_s']:,.0f}/s"
                ),
            )
        )
        ratio = common.ratio(f["events_per_s"], base["events_per_s"])
        result.add(
            Row(
                f"{head}: events committed/s (our log)",
                f["events_per_s"],
                "/s",
                baseline=base["events_per_s"] if n > 1 else None,
                baseline_name="1 replica" if n > 1 else "",
                ratio=ratio if n > 1 else None,
                ratio_name=f"{n}/1" if n > 1 else "",
                goal=f"≥ {COMMITS_GOAL_RATIO:g}x of 1 replica" if last else "",
                met=(ratio is not None and ratio >= COMMITS_GOAL_RATIO) if last else None,
                note=(
                    "the issue's commits/s goal, judged on our own writes (xact_commit counts the shared"
                    f" database's other sessions); NOTIFYs {f['notifies_per_s']:.0f}/s, one per write statement"
                ),
            )
        )
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(f["waits"].items())[:4]) or "none seen"
        result.add(
            Row(
                f"{head}: lock waits, our sessions waiting on a Lock or LWLock",
                f["lock_waits"],
                "sessions (mean)",
                note=f"sampled every {SAMPLE_EVERY:g} s from pg_stat_activity; by wait event: {top}",
            )
        )


async def run_async(ctx: Context) -> Result:
    result = Result("replicas", ctx.quick)
    if ctx.pg_url is None:
        result.note("skipped: this benchmark needs PostgreSQL (--pg-url)")
        return result
    w = QUICK if ctx.quick else FULL
    counts = QUICK_REPLICAS if ctx.quick else REPLICAS
    options, refused = supported_options(ctx.pg_url, ctx.store_options)
    mode = " ".join(options) or "default"
    if refused:
        result.note(f"store options this PostgresStore does not know, dropped: {' '.join(refused)}")
    result.note(
        f"workload: {w.workspaces} chats, {w.provisioners} provisioner processes; a turn is ensure_running"
        f" (create_workspace after a delete), {w.touches} touches ~{w.touch_gap:g} s apart, an explicit"
        f" stop in {w.stop_share:.0%} of turns and a delete in {w.delete_share:.0%};"
        f" turns ~{w.think:g} s apart (exponential), idle_stop_after={w.idle_stop_after:g} s; start build"
        f" {w.start_delay:g} s, agent reports {w.agent_delay:g} s apart, stop build {w.stop_delay:g} s;"
        f" measured over {w.window:g} s after {w.warmup:g} s; store modes: default"
        + (f" and {mode}, interleaved per replica count" if options else "")
    )
    if ctx.quick:
        result.note(
            f"quick mode: {' and '.join(map(str, counts))} replicas; each configuration's processes start"
            " while its schema is set up and open their stores once it is"
        )
    # With store options, both modes run, interleaved per replica count (default, then the
    # options), so that the other load of a shared machine falls on both alike.
    modes: list[tuple[str, list[str]]] = [("", [])] + ([(mode, list(options))] if options else [])
    by_mode: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in modes}
    for n in counts:
        for label, opts in modes:
            raw = await _run_config_once_more(result, ctx.pg_url, n, w, opts, overlap=ctx.quick)
            f = figures(raw)
            by_mode[label].append(f)
            print(
                f"  measured {_plural(n)} ({label or 'default'}): {f['events_per_s']:.0f} events/s,"
                f" wake p99 {common.fmt(f['wake_p99_ms'], 'ms')}",
                flush=True,
            )
    all_figures = by_mode[""]
    models = {label or "default": cpu_model(figs) for label, figs in by_mode.items()}
    model = models["default"]
    result.data = {
        "mode": mode,
        "workload": asdict(w),
        "figures": all_figures,
        "cpu_model": model,
        "modes": {label or "default": figs for label, figs in by_mode.items()},
        "cpu_models": models,
    }
    for label, figs in by_mode.items():
        add_rows(result, figs, label)
        text = table(figs)
        print(f"{label or 'default'}:\n{text}", flush=True)
        result.note(
            f"the table, store mode {label or 'default'} (R = replica processes; per-replica figures are"
            f" means):\n\n{text}\n"
        )
        fit = models[label or "default"]
        if fit is not None:
            result.note(
                f"fit of a replica's CPU, store mode {label or 'default'}: {fit['heard_ms_per_event']:.2f} ms"
                " per event of the whole system (heard: listener, pump, deadlines) +"
                f" {fit['own_ms_per_event']:.2f} ms per event of its own chats"
            )
    all_figures = [f for figs in by_mode.values() for f in figs]
    errors = [e for f in all_figures for e in f["errors"]]
    if errors:
        result.note(f"{len(errors)} failed calls, e.g. {errors[0]}")
    cores = os.cpu_count() or 1
    if max(counts) + w.provisioners > cores:
        result.note(
            f"this machine has {cores} cores: {max(counts)} replicas + {w.provisioners} provisioners + the"
            " server's backends oversubscribe it (see the cores-busy column)"
        )
    return result


def run(ctx: Context) -> Result:
    return anyio.run(run_async, ctx, backend="asyncio")
