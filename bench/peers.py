"""11. Peers: the request cycle a chat runtime lives on, ours against the job queues it could use.

A cycle: a caller makes a request, a worker **in another process** claims it once and finishes
it, the waiting caller is answered. The same cycle on five systems, each in its recommended
configuration, its worker started once as a child process and kept for the whole run:

* **ours, PostgreSQL** and **ours, SQLite** (a file): a ``wl.Lifecycle`` caller alternating
  ``start_workspace`` and ``stop_workspace`` (``wait=True``) on pre-created workspaces, one per
  caller; the worker is ``wl.SimulatedProvisioner(build_seconds=0, agent_seconds=0,
  agent=None)`` on its own store (a build is the job: it holds a lease, the reaper runs);
* **procrastinate** (PostgreSQL, its LISTEN/NOTIFY worker, ``concurrency=16`` since the task is
  async): the caller ``defer_async``\\ s a task that does nothing. Procrastinate has no way to
  wait for a job's end, so the bench adds one trigger on its jobs table that NOTIFYs when a job
  reaches a final status, and the caller's process LISTENs for it (one connection);
* **Celery with Redis** (broker and result backend; ``celery worker --pool=solo``, otherwise
  Celery's defaults): the caller calls ``apply_async(...).get()``, from a thread per caller
  (Celery's client is synchronous; its result backend is per thread by default);
* **a hand-written LISTEN/NOTIFY + ``FOR UPDATE SKIP LOCKED`` loop** with psycopg: a ``jobs``
  table in a throwaway schema; a caller inserts the job and NOTIFYs in one statement (one
  transaction) on its own connection and waits for the job's done notification (one LISTEN
  connection per process); the worker process LISTENs on one connection and runs 4 claimers,
  each on its own connection, each claiming the oldest pending job ``FOR UPDATE SKIP LOCKED``,
  marking it done and NOTIFYing in the same transaction.

Measured in interleaved rounds (each round runs every system once, the order rotated each
round; the figures are the median of the rounds): after a short warm-up, one caller for a few
seconds (p50 and p99 of a cycle, cycles/s), then 16 concurrent callers (cycles/s). Ratios are
against the hand-written loop of the same run. For ours, store round trips per cycle, caller
and worker together: ``PostgresStore.round_trips`` on PostgreSQL, and on SQLite the read and
write transactions (each one hop to the store's thread), counted in both processes (the worker
reports its own on request).

Parts whose server or library is missing are skipped with a note (PostgreSQL: ours,
procrastinate, the loop; Redis or Celery: Celery; procrastinate not installed: procrastinate).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import anyio.abc

import workspace_lifecycle as wl

from . import common
from .common import Context, Result
from .compare import GuardedRow

REDIS_URL = os.environ.get("WORKSPACE_LIFECYCLE_REDIS_URL", "redis://127.0.0.1:6379/0")
CALLERS = 16
OWNER = "bench"
#: The issue's goals for ours on PostgreSQL (issue 25, judged in the full mode only).
P50_GOAL = 1.5  # ≤ this times the hand-written loop's p50
RATE16_GOAL = 0.5  # ≥ this times the hand-written loop's cycles/s at 16 callers
ROUND_TRIPS_GOAL = 6.0  # ≤ store round trips per cycle, caller and worker together
#: Claimers of the hand-written loop's worker process, each on its own connection (SKIP LOCKED
#: is what lets several claim side by side).
LOOP_CLAIMERS = 4


@dataclass(frozen=True)
class Plan:
    rounds: int
    warmup: float  # seconds of 1 caller, then of CALLERS callers, before each system's turn
    one: float  # seconds with 1 caller
    many: float  # seconds with CALLERS callers


FULL = Plan(rounds=3, warmup=0.5, one=4.0, many=4.0)
QUICK = Plan(rounds=1, warmup=0.02, one=0.1, many=0.1)

GUARANTEES = {
    "ours-postgres": (
        "exactly-once claim (a guarded write: one worker claims a build); durable (committed in"
        " PostgreSQL before the answer); a crashed worker's build is failed by the lease reaper"
        " once its lease (30 s) runs out, and the caller is answered (not retried); ordered events"
        " (one log, read in commit order)"
    ),
    "ours-sqlite": (
        "exactly-once claim (a guarded write); durable on a file (WAL, synchronous=NORMAL: a process"
        " crash loses nothing, a power loss may lose the last commits); a crashed worker's build is"
        " failed when its lease (30 s) runs out; ordered events (one log); one machine only"
    ),
    "procrastinate": (
        "exactly-once claim (FOR UPDATE SKIP LOCKED, status doing); durable (PostgreSQL); a crashed"
        " worker's job stays 'doing': workers heartbeat, and stalled jobs are retried only by code that"
        " calls get_stalled_jobs/retry (not by default); no event log, no way to wait for a job's end"
        " (the bench adds a NOTIFY trigger)"
    ),
    "celery": (
        "no exactly-once: with the default early ack a delivered job is gone, a worker crash loses it"
        " (at most once); with acks_late it is redelivered after Redis' visibility timeout (1 h),"
        " at least once; durable only as far as Redis persists (here appendonly no); no ordered events;"
        " results over Redis pub/sub"
    ),
    "loop": (
        "exactly-once claim (FOR UPDATE SKIP LOCKED; the row stays locked while it works, marked done in"
        " the same transaction); durable (PostgreSQL); a worker crash rolls the transaction back and the"
        " job is claimed again (the open transaction is the lease: a long job holds one open); no ordered"
        " events (a notification missed is gone)"
    ),
}

LABELS = {
    "ours-postgres": "ours, PostgreSQL",
    "ours-sqlite": "ours, SQLite",
    "procrastinate": "procrastinate (PostgreSQL, LISTEN/NOTIFY)",
    "celery": "Celery + Redis",
    "loop": "hand-written loop (PostgreSQL LISTEN/NOTIFY + SKIP LOCKED)",
}


# --- the systems ---------------------------------------------------------------------------


class Peer:
    """One system: ``cycle(i)`` is caller ``i``'s request, answered; ``sync`` peers are driven
    from threads by ``cycle_sync``; ``counters()`` are (caller, worker) round trips so far."""

    key = ""
    sync = False
    counted = ""  # what the round-trip counters count ("" if none)

    async def cycle(self, caller: int) -> None:
        raise NotImplementedError

    def cycle_sync(self, caller: int) -> None:
        raise NotImplementedError

    async def counters(self) -> tuple[int | None, int | None]:
        return None, None


def _pg_schema_name(url: str) -> str:
    return parse_qs(urlsplit(url).query)["schema"][0]


def _pg_base(url: str) -> str:
    return url.split("?", 1)[0]


def counting(store: wl.Store) -> tuple[wl.Store, str, Callable[[], int | None]]:
    """``store`` (or a wrapper of it to use instead), what its counter counts, and the counter.

    ``PostgresStore.round_trips`` where the store has it; else the SQLite store's read and write
    transactions, counted by wrapping its two methods on this one object (no library change);
    else a driver store's driver calls (:class:`bench.common.CountingStore`); else none."""
    if isinstance(getattr(store, "wire_round_trips", None), int):
        what = (
            "PostgresStore.wire_round_trips (round trips on the wire of the pool; the listener's reads none)"
        )
        return store, what, lambda: int(store.wire_round_trips)  # type: ignore[attr-defined]
    if isinstance(getattr(store, "round_trips", None), int):
        what = "PostgresStore.round_trips (a guarded write's read and statement count one; the listener's reads none)"
        return store, what, lambda: int(store.round_trips)  # type: ignore[attr-defined]
    read, write = getattr(store, "_read", None), getattr(store, "_write", None)
    if callable(read) and callable(write):
        seen = [0]

        def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def counted(*args: Any, **kwargs: Any) -> Any:
                seen[0] += 1
                return await fn(*args, **kwargs)

            return counted

        store._read = wrap(read)  # type: ignore[attr-defined]
        store._write = wrap(write)  # type: ignore[attr-defined]
        return store, "read and write transactions (one hop each to the store's thread)", lambda: seen[0]
    try:
        wrapped = common.CountingStore(store)
    except TypeError:
        return store, "", lambda: None
    return wrapped, "driver calls (reads and write tries)", lambda: wrapped.queries


class Ours(Peer):
    def __init__(self, key: str, url: str, *, overlap: bool = False) -> None:
        """``overlap`` (the quick mode): the worker process starts (and imports) while the
        workspaces are set up, and opens its store once they are."""
        self.key, self.url, self.overlap = key, url, overlap
        self.chats: list[str] = []
        self.running: list[bool] = []

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        config = json.dumps({"system": "ours", **({"after_setup": True} if self.overlap else {})})
        argv = ["peer", self.url, "--config", config]
        if self.overlap:
            [self.child] = stack.enter_context(common.children(argv))
        async with wl.open_store(self.url) as store:  # before the worker runs: setup claims builds itself
            self.chats = await common.make_workspaces(store, CALLERS, prefix="peer")
        self.running = [False] * CALLERS
        if self.overlap:
            self.child.send("set up")
        else:
            [self.child] = stack.enter_context(common.children(argv))
        await self.child.expect("ready")
        store = await stack.enter_async_context(wl.open_store(self.url))
        store, self.counted, self._count = counting(store)
        self.lc = await stack.enter_async_context(wl.Lifecycle(store, build_timeout=60, agent_timeout=60))

    async def cycle(self, caller: int) -> None:
        chat, running = self.chats[caller], self.running[caller]
        call = self.lc.stop_workspace if running else self.lc.start_workspace
        r = await call(chat, owner=OWNER)
        if r.is_error or "error" in r.data:
            raise RuntimeError(f"{self.key}: {r.text}")
        self.running[caller] = not running

    async def counters(self) -> tuple[int | None, int | None]:
        self.child.send("stats")
        worker = (await self.child.json()).get("count")
        return self._count(), worker


class DoneWaiter:
    """One LISTEN connection of the callers' process: a job's done notification (its id as the
    payload) wakes the caller waiting for it, even if it came before the caller waits."""

    def __init__(self, conninfo: str, channel: str) -> None:
        self.conninfo, self.channel = conninfo, channel
        self.events: dict[int, anyio.Event] = {}

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as conn:
            await conn.execute(f'LISTEN "{self.channel}"')
            task_status.started()
            async for note in conn.notifies():
                self.events.setdefault(int(note.payload), anyio.Event()).set()

    async def wait(self, job: int) -> None:
        await self.events.setdefault(job, anyio.Event()).wait()
        del self.events[job]


async def _start_listener(stack: contextlib.AsyncExitStack, waiter: DoneWaiter) -> None:
    tg = await stack.enter_async_context(anyio.create_task_group())
    stack.callback(tg.cancel_scope.cancel)  # runs first on exit: the listener ends, the group exits
    await tg.start(waiter.run)


async def _ddl(pg_url: str, schema: str, *statements: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        for statement in statements:
            await conn.execute(statement)


def procrastinate_app(pg_url: str, schema: str, queue: str) -> Any:
    """The bench's procrastinate app: its schema in ``schema`` (the connections' search_path)
    and one async task that does nothing."""
    import procrastinate

    connector = procrastinate.PsycopgConnector(
        conninfo=pg_url, kwargs={"options": f"-c search_path={schema}"}, min_size=1, max_size=10
    )
    app = procrastinate.App(connector=connector)

    @app.task(name="bench_noop", queue=queue)
    async def noop() -> None:
        return None

    return app


class Procrastinate(Peer):
    key = "procrastinate"

    def __init__(self, url: str) -> None:
        self.pg, self.schema = _pg_base(url), _pg_schema_name(url)
        self.queue = f"q_{self.schema}"
        self.channel = f"done_{self.schema}"

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        await _ddl(self.pg, self.schema)
        self.app = procrastinate_app(self.pg, self.schema, self.queue)
        await stack.enter_async_context(self.app.open_async())
        await self.app.schema_manager.apply_schema_async()
        s, ch = self.schema, self.channel
        await _ddl(
            self.pg,
            s,
            f"""CREATE FUNCTION "{s}".bench_job_done() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('{ch}', NEW.id::text); RETURN NEW; END $$""",
            f"""CREATE TRIGGER bench_job_done AFTER UPDATE OF status ON "{s}".procrastinate_jobs
            FOR EACH ROW WHEN (NEW.status IN ('succeeded', 'failed', 'aborted'))
            EXECUTE FUNCTION "{s}".bench_job_done()""",
        )
        config = json.dumps({"system": "procrastinate", "schema": s, "queue": self.queue})
        [child] = stack.enter_context(common.children(["peer", self.pg, "--config", config]))
        await child.expect("ready")
        self.waiter = DoneWaiter(self.pg, self.channel)
        await _start_listener(stack, self.waiter)
        self.task = self.app.tasks["bench_noop"]

    async def cycle(self, caller: int) -> None:
        job = await self.task.defer_async()
        await self.waiter.wait(job)


class Loop(Peer):
    key = "loop"

    def __init__(self, url: str) -> None:
        self.pg, self.schema = _pg_base(url), _pg_schema_name(url)
        self.new, self.done = f"new_{self.schema}", f"done_{self.schema}"
        self.conns: list[Any] = []

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        import psycopg

        s = self.schema
        await _ddl(
            self.pg,
            s,
            f"""CREATE TABLE "{s}".jobs (id bigserial PRIMARY KEY, state text NOT NULL DEFAULT 'pending',
            created_at timestamptz NOT NULL DEFAULT now(), done_at timestamptz)""",
            f"""CREATE INDEX ON "{s}".jobs (id) WHERE state = 'pending'""",
        )
        config = json.dumps({"system": "loop", "schema": s, "new": self.new, "done": self.done})
        [child] = stack.enter_context(common.children(["peer", self.pg, "--config", config]))
        await child.expect("ready")
        self.waiter = DoneWaiter(self.pg, self.done)
        await _start_listener(stack, self.waiter)
        for _ in range(CALLERS):
            conn = await psycopg.AsyncConnection.connect(self.pg, autocommit=True)
            stack.push_async_callback(conn.close)
            self.conns.append(conn)
        self.insert = (
            f'WITH j AS (INSERT INTO "{s}".jobs DEFAULT VALUES RETURNING id)'
            f" SELECT id, pg_notify('{self.new}', id::text) FROM j"
        )

    async def cycle(self, caller: int) -> None:
        cur = await self.conns[caller].execute(self.insert)
        row = await cur.fetchone()
        await self.waiter.wait(row[0])


class CeleryPeer(Peer):
    key = "celery"
    sync = True

    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp, self.redis_url = tmp, redis_url
        self.queue = f"bench_peers_{uuid.uuid4().hex[:10]}"

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        from . import _peers_celery

        stack.enter_context(self._worker())
        self.app = _peers_celery.make_app(self.redis_url, self.queue)
        self.noop = self.app.tasks[_peers_celery.TASK]
        stack.callback(self._cleanup)
        # The worker is up when it answers (its start-up takes a second or two).
        await anyio.to_thread.run_sync(lambda: self.noop.apply_async().get(timeout=60))

    @contextlib.contextmanager
    def _worker(self) -> Iterator[None]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.ROOT), env.get("PYTHONPATH")]))
        env["BENCH_REDIS_URL"], env["BENCH_CELERY_QUEUE"] = self.redis_url, self.queue
        log = self.tmp / f"celery-{self.queue}.log"
        argv = [sys.executable, "-m", "celery", "-A", "bench._peers_celery", "worker", "--pool=solo"]
        argv += ["-Q", self.queue, "--loglevel=WARNING", "--without-gossip", "--without-mingle"]
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=common.ROOT, env=env)
        try:
            yield
        finally:
            proc.terminate()  # Celery's warm shutdown
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(self.redis_url)
            client.delete(
                self.queue, f"_kombu.binding.{self.queue}", f"_kombu.binding_permanent.{self.queue}"
            )
            self.app.close()

    def cycle_sync(self, caller: int) -> None:
        self.noop.apply_async().get(timeout=30)


# --- the worker processes (``python -m bench._child peer URL --config JSON``) ---------------


def _print(obj: Any) -> None:
    print(obj if isinstance(obj, str) else json.dumps(obj), flush=True)


async def _serve_stdin(scope: anyio.CancelScope, stats: Callable[[], dict[str, Any]]) -> None:
    """Answer each ``stats`` line with one JSON line; cancel ``scope`` when stdin closes."""
    while line := await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
        if line.strip() == "stats":
            _print(stats())
    scope.cancel()


async def child(url: str, config: dict[str, Any]) -> None:
    system = config["system"]
    if config.get("after_setup"):  # the parent sets up meanwhile: its word first
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if line.strip() != "set up":
            raise SystemExit(f"expected 'set up', got {line!r}")
    if system == "ours":
        await _ours_worker(url)
    elif system == "procrastinate":
        await _procrastinate_worker(url, config["schema"], config["queue"])
    elif system == "loop":
        await _loop_worker(url, config["schema"], config["new"], config["done"])
    else:
        raise SystemExit(f"unknown peer system {system!r}")


async def _ours_worker(url: str) -> None:
    async with wl.open_store(url) as raw:
        store, source, count = counting(raw)
        async with (
            wl.SimulatedProvisioner(store, build_seconds=0, agent_seconds=0, agent=None, worker="peers"),
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(
                _serve_stdin,
                tg.cancel_scope,
                lambda: {
                    "count": count(),
                    "source": source,
                    "by_kind": getattr(raw, "round_trips_by_kind", None),
                },
            )
            await anyio.sleep(0.05)
            _print("ready")


async def _procrastinate_worker(pg_url: str, schema: str, queue: str) -> None:
    app = procrastinate_app(pg_url, schema, queue)
    async with app.open_async(), anyio.create_task_group() as tg:
        tg.start_soon(_serve_stdin, tg.cancel_scope, dict)
        tg.start_soon(
            lambda: app.run_worker_async(
                queues=[queue], concurrency=CALLERS, install_signal_handlers=False, name="bench"
            )
        )
        await anyio.sleep(0.2)
        _print("ready")


async def _loop_worker(pg_url: str, schema: str, new: str, done: str) -> None:
    """LOOP_CLAIMERS claimers, each on its own connection, woken by one LISTEN connection."""
    import psycopg

    claim = f"""SELECT id FROM "{schema}".jobs WHERE state = 'pending' ORDER BY id
        LIMIT 1 FOR UPDATE SKIP LOCKED"""
    finish = f"""WITH u AS (UPDATE "{schema}".jobs SET state = 'done', done_at = now() WHERE id = %s
        RETURNING id) SELECT pg_notify('{done}', id::text) FROM u"""
    # One token per NOTIFY wakes one idle claimer (no herd); a token sent while every claimer
    # is busy waits for the next idle one, so no wake-up is lost.
    send, receive = anyio.create_memory_object_stream[None](math.inf)

    async def listener(conn: Any) -> None:
        async for _ in conn.notifies():
            send.send_nowait(None)

    async def claimer() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as work:
            while True:
                async with work.transaction():
                    row = await (await work.execute(claim)).fetchone()
                    if row is not None:  # the work would run here, its row locked by this transaction
                        await work.execute(finish, (row[0],))
                if row is None:  # nothing pending: sleep until a NOTIFY (or a second, as a fallback)
                    with anyio.move_on_after(1.0):
                        await receive.receive()

    async with (
        await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as listen,
        anyio.create_task_group() as tg,
    ):
        await listen.execute(f'LISTEN "{new}"')
        tg.start_soon(_serve_stdin, tg.cancel_scope, dict)
        tg.start_soon(listener, listen)
        for _ in range(LOOP_CLAIMERS):
            tg.start_soon(claimer)
        await anyio.sleep(0.1)
        _print("ready")


# --- measuring -----------------------------------------------------------------------------


@dataclass
class Phase:
    callers: int
    cycles: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    round_trips: tuple[float | None, float | None] = (None, None)  # per cycle: caller, worker

    @property
    def rate(self) -> float:
        return self.cycles / self.seconds if self.seconds else 0.0


async def drive(peer: Peer, callers: int, seconds: float) -> Phase:
    """``callers`` concurrent callers making cycles for ``seconds``, each at least one (a short
    window on a loaded machine may be over before a caller's first: no phase without a cycle)."""
    latencies: list[float] = []
    before = await peer.counters()
    deadline = time.perf_counter() + seconds

    async def caller(i: int) -> None:
        while True:
            t0 = time.perf_counter()
            await peer.cycle(i)
            latencies.append((time.perf_counter() - t0) * 1000)
            if time.perf_counter() >= deadline:
                return

    def caller_sync(i: int) -> None:
        while True:
            t0 = time.perf_counter()
            peer.cycle_sync(i)
            latencies.append((time.perf_counter() - t0) * 1000)
            if time.perf_counter() >= deadline:
                return

    limiter = anyio.CapacityLimiter(callers)

    async def in_thread(i: int) -> None:
        await anyio.to_thread.run_sync(caller_sync, i, limiter=limiter)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(callers):
            if peer.sync:
                tg.start_soon(in_thread, i)
            else:
                tg.start_soon(caller, i)
    elapsed = time.perf_counter() - started
    after = await peer.counters()
    n = len(latencies)
    per_cycle = tuple(
        (a - b) / n if a is not None and b is not None and n else None
        for a, b in zip(after, before, strict=True)
    )
    return Phase(callers, n, elapsed, latencies, (per_cycle[0], per_cycle[1]))


async def measure(peer: Peer, plan: Plan) -> dict[str, Any]:
    await drive(peer, 1, plan.warmup)
    await drive(peer, CALLERS, plan.warmup)
    one = await drive(peer, 1, plan.one)
    many = await drive(peer, CALLERS, plan.many)
    return {
        "p50_ms": common.pct(one.latencies_ms, 0.5),
        "p99_ms": common.pct(one.latencies_ms, 0.99),
        "rate_1": one.rate,
        "rate_16": many.rate,
        "p50_16_ms": common.pct(many.latencies_ms, 0.5),
        "max_ms": max(one.latencies_ms + many.latencies_ms),
        "over_1s": sum(v > 1000 for v in one.latencies_ms + many.latencies_ms),
        "cycles_1": one.cycles,
        "cycles_16": many.cycles,
        "round_trips_caller": one.round_trips[0],
        "round_trips_worker": one.round_trips[1],
        "round_trips_caller_16": many.round_trips[0],
        "round_trips_worker_16": many.round_trips[1],
    }


@contextlib.asynccontextmanager
async def opened(peers: Sequence[Any], result: Result) -> AsyncIterator[list[Peer]]:
    """Each peer opened (its worker started); one that cannot open is dropped with a note."""
    async with contextlib.AsyncExitStack() as stack:
        ready: list[Peer] = []
        for peer in peers:
            inner = contextlib.AsyncExitStack()
            try:
                await inner.__aenter__()
                await peer.open(inner)
            except Exception as exc:
                await inner.aclose()
                result.note(f"{LABELS[peer.key]} skipped: could not start ({exc!r})")
                continue
            stack.push_async_callback(inner.aclose)
            ready.append(peer)
        yield ready


def _median(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def _redis_up(url: str) -> str | None:
    """None if Redis and Celery are usable, else why not."""
    try:
        import celery  # noqa: F401
        import redis
    except ImportError as exc:
        return f"not installed ({exc.name}; pip install 'celery[redis]')"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {url} unreachable ({exc.__class__.__name__})"
    return None


def _figure_rows(result: Result, med: dict[str, dict[str, Any]], quick: bool) -> None:
    loop = med.get("loop")

    def base(key: str, field_: str) -> tuple[float | None, str]:
        if loop is None or key == "loop":
            return None, ""
        return loop[field_], "hand-written loop"

    for key, m in med.items():
        label = LABELS[key]
        ours = key.startswith("ours")
        is_pg = key == "ours-postgres"
        b50, bname = base(key, "p50_ms")
        r50 = common.ratio(m["p50_ms"], b50)
        result.add(
            GuardedRow(
                f"{label}: cycle p50, 1 caller",
                m["p50_ms"],
                "ms",
                b50,
                bname,
                r50,
                "this/loop" if bname else "",
                goal=f"≤ {P50_GOAL:g}x" if is_pg and bname else "",
                met=(r50 is not None and r50 <= P50_GOAL) if is_pg and bname else None,
                note=GUARANTEES[key],
                better="lower" if ours and not (is_pg and bname) else "",
            )
        )
        b99, bname = base(key, "p99_ms")
        result.add(
            GuardedRow(
                f"{label}: cycle p99, 1 caller",
                m["p99_ms"],
                "ms",
                b99,
                bname,
                common.ratio(m["p99_ms"], b99),
                "this/loop" if bname else "",
                better="lower" if ours else "",
            )
        )
        b1, bname = base(key, "rate_1")
        result.add(
            GuardedRow(
                f"{label}: cycles/s, 1 caller",
                m["rate_1"],
                "cycles/s",
                b1,
                bname,
                common.ratio(m["rate_1"], b1),
                "this/loop" if bname else "",
                better="higher" if ours else "",
            )
        )
        b16, bname = base(key, "rate_16")
        r16 = common.ratio(m["rate_16"], b16)
        result.add(
            GuardedRow(
                f"{label}: cycles/s, {CALLERS} callers",
                m["rate_16"],
                "cycles/s",
                b16,
                bname,
                r16,
                "this/loop" if bname else "",
                goal=f"≥ {RATE16_GOAL:g}x" if is_pg and bname else "",
                met=(r16 is not None and r16 >= RATE16_GOAL) if is_pg and bname else None,
                note=f"p50 of a cycle with {CALLERS} callers {common.fmt(m['p50_16_ms'], 'ms')}",
                better="higher" if ours and not (is_pg and bname) else "",
            )
        )
    pg = med.get("ours-postgres")
    rivals = {k: med[k] for k in ("procrastinate", "celery") if k in med}
    if pg is not None and rivals:
        for field_, what in (("rate_1", "1 caller"), ("rate_16", f"{CALLERS} callers")):
            best = max(rivals, key=lambda k: rivals[k][field_])
            r = common.ratio(pg[field_], rivals[best][field_])
            result.add(
                GuardedRow(
                    f"{LABELS['ours-postgres']}: cycles/s, {what}, against the faster of procrastinate and Celery",
                    pg[field_],
                    "cycles/s",
                    rivals[best][field_],
                    LABELS[best],
                    r,
                    "ours/peer",
                    goal="> 1x (ahead)",
                    met=r is not None and r > 1,
                )
            )
    for key in ("ours-postgres", "ours-sqlite"):
        if key not in med:
            continue
        m = med[key]
        caller, worker = m["round_trips_caller"], m["round_trips_worker"]
        if caller is None:
            result.note(f"{LABELS[key]}: its store counts no round trips this bench can read")
            continue
        total = caller + (worker or 0)
        is_pg = key == "ours-postgres"
        what = "store round trips" if is_pg else "store transactions (reads and writes)"
        worker_text = (
            f"worker {worker:.1f}"
            if worker is not None
            else "the worker's store not reachable: caller side only"
        )
        c16, w16 = m["round_trips_caller_16"], m["round_trips_worker_16"]
        result.add(
            GuardedRow(
                f"{LABELS[key]}: {what} per cycle, caller and worker",
                total,
                "per cycle",
                goal=f"≤ {ROUND_TRIPS_GOAL:g}" if is_pg else "",
                met=total <= ROUND_TRIPS_GOAL if is_pg else None,
                note=(
                    f"caller {common.fmt(caller)}, {worker_text}; with {CALLERS} callers caller"
                    f" {common.fmt(c16)}, worker {common.fmt(w16)}; counted by {m['counted'] or 'n/a'}"
                ),
                better="lower" if not is_pg else "",
            )
        )


def table(med: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| system | p50 ms | p99 ms | cycles/s, 1 caller | cycles/s, 16 callers | store round trips/cycle | guarantees |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, m in med.items():
        rt = "—"
        if m.get("round_trips_caller") is not None:
            worker = m.get("round_trips_worker")
            rt = f"{m['round_trips_caller'] + (worker or 0):.1f}" + (
                "" if worker is not None else " (caller only)"
            )
        lines.append(
            f"| {LABELS[key]} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {m['rate_1']:,.0f} | {m['rate_16']:,.0f} |"
            f" {rt} | {GUARANTEES[key]} |"
        )
    return "\n".join(lines)


async def run_async(ctx: Context) -> Result:
    result = Result("peers", ctx.quick)
    plan = QUICK if ctx.quick else FULL
    result.note(
        f"{plan.rounds} interleaved round(s), the order rotated each round; per system and round"
        f" a warm-up ({plan.warmup:g} s with 1 caller, {plan.warmup:g} s with {CALLERS}), then {plan.one:g} s"
        f" with 1 caller and {plan.many:g} s with {CALLERS} callers; figures are the median of the rounds; each worker is one process started once"
    )
    if ctx.quick:
        result.note(
            "quick mode: each caller makes at least one cycle per phase; ours' worker processes start"
            " while their workspaces are set up"
        )
    async with contextlib.AsyncExitStack() as schemas:
        peers: list[Any] = []
        if ctx.pg_url is not None:
            peers.append(
                Ours("ours-postgres", schemas.enter_context(common.pg_schema(ctx.pg_url)), overlap=ctx.quick)
            )
        else:
            result.note(
                "PostgreSQL skipped (no server): ours on PostgreSQL, procrastinate, the hand-written loop"
            )
        if ctx.local:
            sqlite_url = f"sqlite:///{ctx.tmp / f'peers-{time.monotonic_ns()}.db'}"
            peers.append(Ours("ours-sqlite", sqlite_url, overlap=ctx.quick))
        if ctx.pg_url is not None:
            try:
                import procrastinate  # noqa: F401
            except ImportError:
                result.note("procrastinate skipped: not installed (pip install procrastinate)")
            else:
                peers.append(Procrastinate(schemas.enter_context(common.pg_schema(ctx.pg_url))))
        why = _redis_up(REDIS_URL) if ctx.local else "only the PostgreSQL parts were asked for"
        if why is None:
            peers.append(CeleryPeer(ctx.tmp, REDIS_URL))
        else:
            result.note(f"Celery skipped: {why}")
        if ctx.pg_url is not None:
            peers.append(Loop(schemas.enter_context(common.pg_schema(ctx.pg_url))))
        rounds: list[dict[str, dict[str, Any]]] = []
        async with opened(peers, result) as ready:
            for r in range(plan.rounds):
                order = ready[r % len(ready) :] + ready[: r % len(ready)] if ready else []
                figures: dict[str, dict[str, Any]] = {}
                for peer in order:
                    try:
                        figures[peer.key] = await measure(peer, plan)
                    except Exception as exc:  # one system failing must not lose the others
                        result.note(f"round {r + 1}: {LABELS[peer.key]} failed: {exc!r}")
                        continue
                    figures[peer.key]["counted"] = peer.counted
                    f = figures[peer.key]
                    print(
                        f"  round {r + 1}: {LABELS[peer.key]}: p50 {f['p50_ms']:.2f} ms, {f['rate_1']:.0f}/s,"
                        f" {f['rate_16']:.0f}/s with {CALLERS}",
                        flush=True,
                    )
                rounds.append(figures)
                for key, f in figures.items():
                    if f["over_1s"]:
                        result.note(
                            f"round {r + 1}: {LABELS[key]}: {f['over_1s']} cycle(s) over 1 s, the slowest"
                            f" {f['max_ms'] / 1000:.2f} s (it counts in that round's figures)"
                        )
    keys = [k for k in LABELS if any(k in f for f in rounds)]
    med: dict[str, dict[str, Any]] = {}
    for key in keys:
        per = [f[key] for f in rounds if key in f]
        med[key] = {name: _median([p[name] for p in per]) for name in per[0] if name != "counted"}
        med[key]["counted"] = per[0]["counted"]
        med[key]["rounds"] = len(per)
    _figure_rows(result, med, ctx.quick)
    if med:
        text = table(med)
        print(text, flush=True)
        result.note(f"the table (median of the rounds):\n\n{text}\n")
    result.data = {
        "plan": asdict(plan),
        "callers": CALLERS,
        "rounds": rounds,
        "medians": med,
        "guarantees": GUARANTEES,
        "redis": REDIS_URL if "celery" in med else None,
    }
    return result


def run(ctx: Context) -> Result:
    return anyio.run(run_async, ctx, backend="asyncio")
