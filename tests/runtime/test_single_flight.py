"""Single-flight: identical concurrent requests on one workspace in one process share one write.

Counted with :class:`~workspace_lifecycle.faults.FaultyStore` (its ``calls`` counter sees every
store write the runtime makes), injecting only a few milliseconds' delay into each write, so that
every caller decides before the first write lands, on every store (the memory store's calls
never yield, so without the delay its callers would not race at all). The answers are compared with the same race
run with single-flight switched off: the store sees one write instead of N, the callers read the
same answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import _flight
from workspace_lifecycle.faults import FaultyStore

pytestmark = pytest.mark.anyio

OWNER = "alice"
N = 20


def _normal(result: wl.ToolResult) -> dict[str, Any]:
    """An answer without what differs between two chats (names, build ids)."""
    data = dict(result.data)
    for key in ("build_id", "workspace_name"):
        if key in data:
            data[key] = "<" + key + ">"
    return {"is_error": result.is_error, **data}


async def _stopped(lc: wl.Lifecycle, chat: str) -> None:
    await lc.register_chat(chat, owner=OWNER)
    for call in (lc.create_workspace, lc.stop_workspace):
        r = await call(chat, owner=OWNER)
        assert not r.is_error and "error" not in r.data, r.text


async def _together(n: int, call: Callable[[], Awaitable[wl.ToolResult]]) -> list[wl.ToolResult]:
    results: list[wl.ToolResult] = []

    async def one() -> None:
        results.append(await call())

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results


class HeldRequests(FaultyStore):
    """Holds every ``request_build`` once :meth:`hold` is called until ``n`` callers have made
    one (or ten seconds pass, so that a broken race fails its assertion instead of hanging): no
    build lands before the last caller has decided, however slowly a loaded machine schedules
    the callers' reads."""

    def __init__(self, inner: wl.Store) -> None:
        super().__init__(inner, delay=1.0, max_delay=0.005, seed=1)
        self._all_in: anyio.Event | None = None
        self._expected = 0
        self._arrived = 0

    def hold(self, n: int) -> None:
        self._all_in, self._expected, self._arrived = anyio.Event(), n, 0

    async def request_build(self, *args: Any, **kwargs: Any) -> wl.Outcome:
        if self._all_in is not None:
            self._arrived += 1
            if self._arrived >= self._expected:
                self._all_in.set()
            with anyio.move_on_after(10):
                await self._all_in.wait()
        return await super().request_build(*args, **kwargs)


@pytest.fixture
def unshared(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Switch single-flight off (every caller runs its own write), as before it existed."""

    def off() -> None:
        async def run(self: Any, key: Any, call: Callable[[], Awaitable[Any]], share: Any) -> Any:
            return await call()

        monkeypatch.setattr(_flight.SingleFlight, "run", run)

    return off


async def test_concurrent_starts_share_one_request_build(
    store: wl.Store, unshared: Callable[[], None]
) -> None:
    counting = HeldRequests(store)
    async with (
        wl.SimulatedProvisioner(store, build_seconds=0.01),
        wl.Lifecycle(counting, build_timeout=30, agent_timeout=30) as lc,
    ):
        await _stopped(lc, "shared")
        await _stopped(lc, "unshared")

        before = counting.calls["request_build"]
        shared = await _together(N, lambda: lc.start_workspace("shared", owner=OWNER))
        shared_writes = counting.calls["request_build"] - before

        unshared()
        counting.hold(N)  # every caller decides on the stopped workspace before any build lands
        before = counting.calls["request_build"]
        each = await _together(N, lambda: lc.start_workspace("unshared", owner=OWNER))
        unshared_writes = counting.calls["request_build"] - before

    assert shared_writes == 1
    assert unshared_writes == N  # the same race without single-flight: every caller writes
    for results in (shared, each):
        assert all(not r.is_error and r.data.get("started") is True for r in results), results
        assert len({r.data["build_id"] for r in results}) == 1  # one build, everybody's answer
    assert sorted(map(str, map(_normal, shared))) == sorted(map(str, map(_normal, each)))
    assert await lc.state("shared") is wl.WorkspaceState.AGENT_READY


class HeldFlights(FaultyStore):
    """Holds the store's ``write`` (``create_workspace`` or ``request_build``) until :meth:`arm`'s
    ``n`` callers have asked the runtime's single-flight for that write (or ten seconds pass, so
    that a broken race fails its assertion instead of hanging): on a loaded machine the first
    write could otherwise land, and its build and agent be ready, before the last caller decided,
    which then answers "already running" as a later request does."""

    def __init__(self, inner: wl.Store, monkeypatch: pytest.MonkeyPatch, write: str) -> None:
        super().__init__(inner, delay=1.0, max_delay=0.005, seed=1)
        self._held_write = write
        self._all_in: anyio.Event | None = None
        self._expected = self.arrived = 0
        run = _flight.SingleFlight.run
        kind = {"create_workspace": "create", "request_build": "build"}[write]

        async def counted(flights: Any, key: Any, call: Callable[[], Awaitable[Any]], share: Any) -> Any:
            if self._all_in is not None and isinstance(key, tuple) and key[0] == kind:
                self.arrived += 1
                if self.arrived >= self._expected:
                    self._all_in.set()
            return await run(flights, key, call, share)

        monkeypatch.setattr(_flight.SingleFlight, "run", counted)

    def arm(self, n: int) -> None:
        self._all_in, self._expected, self.arrived = anyio.Event(), n, 0

    async def _held(self) -> None:
        if self._all_in is not None:
            with anyio.move_on_after(10):
                await self._all_in.wait()

    async def create_workspace(self, *args: Any, **kwargs: Any) -> wl.Outcome:
        if self._held_write == "create_workspace":
            await self._held()
        return await super().create_workspace(*args, **kwargs)

    async def request_build(self, *args: Any, **kwargs: Any) -> wl.Outcome:
        if self._held_write == "request_build":
            await self._held()
        return await super().request_build(*args, **kwargs)


class CountingReads(HeldFlights):
    """Counts the reads too (FaultyStore counts the writes); each read takes a millisecond, so
    that concurrent requests overlap on every store (the memory store's never yield). Its
    ``request_build`` is held as :class:`HeldFlights` holds it."""

    def __init__(self, inner: wl.Store, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__(inner, monkeypatch, "request_build")
        self.reads: Counter[str] = Counter()

    async def get_chat(self, chat_id: str) -> wl.Chat | None:
        self.reads["get_chat"] += 1
        await anyio.sleep(0.001)
        return await super().get_chat(chat_id)

    async def head(self) -> int:
        self.reads["head"] += 1
        await anyio.sleep(0.001)
        return await super().head()


async def test_concurrent_creates_share_one_create_workspace(
    store: wl.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = HeldFlights(store, monkeypatch, "create_workspace")
    async with (
        wl.SimulatedProvisioner(store, build_seconds=0.01),
        wl.Lifecycle(counting, build_timeout=30, agent_timeout=30) as lc,
    ):
        await lc.register_chat("c", owner=OWNER)
        counting.arm(N)  # the create lands once every caller has reached the flight
        results = await _together(N, lambda: lc.create_workspace("c", owner=OWNER, name="dev"))
    assert counting.arrived == N  # every caller asked the single-flight, one wrote
    assert counting.calls["create_workspace"] == 1
    assert sum(r.data.get("created") is True for r in results) == 1  # Coder's answer to its creator
    assert len({r.data["build_id"] for r in results}) == 1
    assert all(not r.is_error and "error" not in r.data for r in results), results


async def test_only_identical_writes_are_shared(store: wl.Store) -> None:
    """Different parameters are different compare-and-sets: both run, one loses (and says so)."""
    counting = FaultyStore(store, delay=1.0, max_delay=0.005, seed=1)
    async with (
        wl.SimulatedProvisioner(store, build_seconds=0.01),
        wl.Lifecycle(counting, build_timeout=30, agent_timeout=30) as lc,
    ):
        await _stopped(lc, "c")
        before = counting.calls["request_build"]
        results: list[wl.ToolResult] = []

        async def start(region: str) -> None:
            results.append(await lc.start_workspace("c", owner=OWNER, parameters={"region": region}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(start, "eu")
            tg.start_soon(start, "us")
        assert counting.calls["request_build"] - before == 2
    assert sorted(r.data.get("parameters_applied", True) for r in results) == [False, True]
    assert len({r.data["build_id"] for r in results}) == 1


async def test_a_write_after_the_flight_landed_runs_its_own(store: wl.Store) -> None:
    """Only a write in flight is shared: a later identical request writes (and is answered
    from the running workspace without a build, as always)."""
    counting = FaultyStore(store)
    async with (
        wl.SimulatedProvisioner(store, build_seconds=0.01),
        wl.Lifecycle(counting, build_timeout=30, agent_timeout=30) as lc,
    ):
        await _stopped(lc, "c")
        first = await lc.start_workspace("c", owner=OWNER)
        second = await lc.start_workspace("c", owner=OWNER)
    assert counting.calls["request_build"] == 2  # the stop's and the first start's
    assert first.data["started"] is True and "build_id" in first.data
    assert second.data.get("no_build") is True


# --- the primitive ---------------------------------------------------------------------------


async def test_followers_get_the_shared_result_and_the_leader_its_own() -> None:
    flights = _flight.SingleFlight[str]()
    calls = 0
    release = anyio.Event()

    async def call() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "won"

    got: list[str] = []

    async def one() -> None:
        got.append(await flights.run("k", call, lambda r: f"lost to {r}"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert calls == 1 and flights.shared == 4
    assert sorted(got) == ["lost to won"] * 4 + ["won"]


async def test_a_failed_or_cancelled_leader_leaves_each_follower_its_own_call() -> None:
    flights = _flight.SingleFlight[str]()
    attempts: list[str] = []
    release = anyio.Event()

    async def failing() -> str:
        attempts.append("fail")
        await release.wait()
        raise RuntimeError("boom")

    async def working() -> str:
        attempts.append("work")
        await anyio.lowlevel.checkpoint()  # in flight for a moment: the next followers join it
        return "done"

    got: list[str] = []
    errors: list[BaseException] = []

    async def leader() -> None:
        try:
            await flights.run("k", failing, lambda r: r)
        except RuntimeError as exc:
            errors.append(exc)

    async def follower() -> None:
        got.append(await flights.run("k", working, lambda r: f"shared {r}"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await anyio.wait_all_tasks_blocked()
        for _ in range(3):
            tg.start_soon(follower)
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert len(errors) == 1  # only the caller who made the failing call sees its error
    assert attempts == ["fail", "work"]  # one follower led the next flight, the others shared it
    assert sorted(got) == ["done", "shared done", "shared done"]

    # A cancelled leader: its followers carry on with a call of their own.
    async def slow() -> str:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    scope = anyio.CancelScope()
    results: list[str] = []

    async def cancelled_leader() -> None:
        with scope:
            await flights.run("k", slow, lambda r: r)

    async def after() -> None:
        results.append(await flights.run("k", working, lambda r: f"shared {r}"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancelled_leader)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(after)
        await anyio.wait_all_tasks_blocked()
        assert results == []  # waiting for the leader
        scope.cancel()
    assert results == ["done"]


# --- reads: shared only when they started after every caller asked ---------------------------


async def test_a_read_running_when_a_caller_asks_is_never_shared_with_it() -> None:
    """The caller waits for it and shares the next one, which starts after everyone asked."""
    reads = _flight.FreshRead[int]()
    version = 0  # what a read returns: the store's state when the read starts
    started: list[int] = []
    gate = anyio.Event()

    async def read() -> int:
        seen = version
        started.append(seen)
        await gate.wait()
        return seen

    got: dict[str, int] = {}

    async def ask(name: str) -> None:
        got[name] = await reads.run("k", read)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "first")  # its read sees version 0
        await anyio.wait_all_tasks_blocked()
        version = 1  # e.g. the later callers' own writes committed after that read began
        for name in ("a", "b", "c"):
            tg.start_soon(ask, name)
        await anyio.wait_all_tasks_blocked()
        assert started == [0]  # nobody started a read of their own meanwhile
        gate.set()
    assert got == {"first": 0, "a": 1, "b": 1, "c": 1}  # never older than when they asked
    assert started == [0, 1] and reads.shared == 2


async def test_concurrent_requests_share_their_first_reads(
    store: wl.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N concurrent starts: two or three chat reads and head reads, not N of each."""
    counting = CountingReads(store, monkeypatch)
    async with (
        wl.SimulatedProvisioner(store, build_seconds=0.01),
        wl.Lifecycle(counting, build_timeout=30, agent_timeout=30) as lc,
    ):
        await _stopped(lc, "c")
        counting.reads.clear()
        counting.arm(N)  # the start lands once every caller has decided (and asked the flight)
        results = await _together(N, lambda: lc.start_workspace("c", owner=OWNER))
    assert counting.arrived == N
    assert all(r.data.get("started") is True for r in results), results
    assert counting.reads["get_chat"] <= 3 and counting.reads["head"] <= 3, counting.reads
    assert len({r.data["build_id"] for r in results}) == 1


async def test_a_failed_shared_read_leaves_each_caller_its_own() -> None:
    reads = _flight.FreshRead[int]()
    gate = anyio.Event()
    calls: list[str] = []

    async def slow_ok() -> int:
        calls.append("first")
        await gate.wait()
        return 0

    async def failing() -> int:
        calls.append("shared")
        await anyio.lowlevel.checkpoint()
        raise RuntimeError("boom")

    async def own() -> int:
        calls.append("own")
        return 2

    got: list[int] = []
    errors: list[BaseException] = []

    async def planner() -> None:  # leads the next read, which fails
        try:
            await reads.run("k", failing)
        except RuntimeError as exc:
            errors.append(exc)

    async def member() -> None:
        got.append(await reads.run("k", own))

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: reads.run("k", slow_ok))
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(planner)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(member)
        tg.start_soon(member)
        await anyio.wait_all_tasks_blocked()
        gate.set()
    assert len(errors) == 1 and got == [2, 2]
    assert calls == ["first", "shared", "own", "own"]


async def test_a_create_follower_resumed_after_the_build_ended_answers_about_that_build(
    store: wl.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller that shared another's create, but was scheduled again only once that create's
    build had ended and its agent was ready (a loaded machine), answers as the other followers
    do, about the build the shared create fired, not "already running" without a build."""
    run = _flight.SingleFlight.run
    creator_answered = anyio.Event()

    async def late(flights: Any, key: Any, call: Callable[[], Awaitable[Any]], share: Any) -> Any:
        led = False

        async def leading() -> Any:
            nonlocal led
            led = True
            return await call()

        result = await run(flights, key, leading, share)
        if key[0] == "create" and not led:
            await creator_answered.wait()  # resumed only after the creator's whole answer
        return result

    monkeypatch.setattr(_flight.SingleFlight, "run", late)
    counting = FaultyStore(store, delay=1.0, max_delay=0.005, seed=1)
    results: list[wl.ToolResult] = []

    async def create() -> None:
        result = await lc.create_workspace("c", owner=OWNER, name="dev")
        results.append(result)
        if result.data.get("created") is True:
            creator_answered.set()

    async with (
        wl.SimulatedProvisioner(store, build_seconds=0.01),
        wl.Lifecycle(counting, build_timeout=30, agent_timeout=30) as lc,
    ):
        await lc.register_chat("c", owner=OWNER)
        async with anyio.create_task_group() as tg:
            tg.start_soon(create)
            tg.start_soon(create)
    assert counting.calls["create_workspace"] == 1
    creator, follower = sorted(results, key=lambda r: r.data.get("created") is not True)
    assert creator.data["created"] is True and follower.data["created"] is False, results
    assert follower.data.get("build_id") == creator.data["build_id"], follower.data
    assert follower.data["message"] == "workspace build completed"
