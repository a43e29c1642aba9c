"""Long random histories with faults on, across three Lifecycle runtimes on one store.

Each example opens one store, three runtimes (each behind its own :class:`FaultyStore`: writes
fail before or after committing, events are dropped, repeated and reordered, commits are
delayed, wake-ups are lost) and a simulated provisioner whose builds fail at random. It then plays rounds of
concurrent tool calls (``wait=True``) spread over the runtimes, and checks after every round:

* at most one build in flight per workspace, ever (read off the raw event log);
* in a round where every caller of a chat made the same request, the request fired exactly the
  builds SPEC says (one start build from ``stopped``/``failed``, none from ``running``, ...),
  and every caller was answered about that one build;
* in rounds mixing requests, every caller got a documented answer;
* the state derived from the rows equals the state reached by applying the raw log;
* every caller was answered (no exception, no hang) and no runtime leaked a tracked workspace.

The example count follows the Hypothesis profile: ``HYPOTHESIS_PROFILE=large`` runs 1,000
histories on the memory store (and 125 on SQLite / PostgreSQL).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import attrs
import pytest
from figures import FIGURES, flush
from hypothesis import given, settings
from hypothesis import strategies as st
from test_history_invariants import (
    builds_from_log,
    check_answer_against_log,
    check_unbound_workspaces,
    quiesce,
)

import workspace_lifecycle as wl
from workspace_lifecycle import answers
from workspace_lifecycle.faults import FaultyStore
from workspace_lifecycle.testing import applied_states

EXAMPLES = settings.default.max_examples
VERBS = ("create", "start", "stop", "delete")
OWNER = "owner"
DONE_KEY = {"create": "created", "start": "started", "stop": "stopped", "delete": "deleted"}

#: Where each request fires a build (SPEC), by the state at the start of the round.
FIRES = {
    "create": {"none", "deleted", "failed"},
    "start": {"stopped", "failed"},
    "stop": {"running", "agent_ready", "failed"},
    "delete": {"stopped", "running", "agent_ready", "failed"},
}
TRANSITION = {"start": wl.Transition.START, "stop": wl.Transition.STOP, "delete": wl.Transition.DELETE}


@pytest.fixture(scope="module", autouse=True)
def _write_figures() -> Iterator[None]:
    yield
    flush()


@attrs.frozen
class Call:
    chat: int
    verb: str
    runtime: int


@attrs.frozen
class Round:
    calls: tuple[Call, ...]
    mixed: bool


@st.composite
def rounds(draw: st.DrawFn, chats: int = 2) -> Round:
    mixed = draw(st.booleans())
    calls: list[Call] = []
    for chat in range(chats):
        verb = draw(st.sampled_from(VERBS))
        for _ in range(draw(st.integers(0, 3))):
            if mixed:
                verb = draw(st.sampled_from(VERBS))
            calls.append(Call(chat, verb, draw(st.integers(0, 2))))
    return Round(tuple(calls), mixed)


@attrs.frozen
class Faults:
    seed: int
    fail_before: float
    fail_after: float
    drop: float
    duplicate: float
    reorder: float
    delay: float
    lose_wakeups: float
    build_fail: float


faults = st.builds(
    Faults,
    seed=st.integers(0, 2**16),
    fail_before=st.sampled_from([0.0, 0.1, 0.3]),
    fail_after=st.sampled_from([0.0, 0.1, 0.3]),
    drop=st.sampled_from([0.0, 0.1, 0.5]),
    duplicate=st.sampled_from([0.0, 0.2]),
    reorder=st.sampled_from([0.0, 0.5]),
    delay=st.sampled_from([0.0, 0.3]),
    lose_wakeups=st.sampled_from([0.0, 0.0, 0.2]),
    build_fail=st.sampled_from([0.0, 0.3]),
)


async def _state(store: wl.Store, chat: str) -> tuple[str | None, str]:
    row = await store.get_chat(chat)
    if row is None or row.workspace_id is None:
        return None, "none"
    facts = await store.workspace_facts(row.workspace_id)
    if facts.workspace.deleted:
        return row.workspace_id, "deleted"
    return row.workspace_id, wl.derive_state(facts).value


def _check_log(events: list[wl.StoreEvent]) -> None:
    """At most one build in flight per workspace, over the whole log."""
    flying: dict[str, int] = {}
    for event in events:
        if event.kind is wl.EventKind.BUILD_QUEUED:
            assert event.workspace_id not in flying, (
                f"workspace {event.workspace_id}: build {event.build_number} queued while "
                f"build {flying[event.workspace_id]} was in flight"
            )
            flying[event.workspace_id] = event.build_number
        elif (
            event.kind is wl.EventKind.BUILD_FINISHED and flying.get(event.workspace_id) == event.build_number
        ):
            del flying[event.workspace_id]


def _check_answer(verb: str, r: wl.ToolResult) -> None:
    """Every answer is one SPEC documents."""
    if r.is_error:
        assert r.text in (answers.NO_WORKSPACE, answers.WORKSPACE_DELETED, answers.CHAT_NOT_FOUND), r.text
        return
    if "error" in r.data:
        assert r.data["error"].split(": ", 1)[0] in (
            "workspace build failed",
            "existing workspace build failed",
            f"workspace {verb} build failed",
            "waiting for in-progress build",
        ), r.data
        return
    assert r.data.get(DONE_KEY[verb]) is not None or r.data.get("status") is not None, r.data


async def _play(store_urls: list[str], shared: bool, f: Faults, history: list[Round]) -> None:
    prefix = uuid.uuid4().hex[:8]
    chats = [f"{prefix}-c{i}" for i in range(2)]
    async with AsyncExitStack() as stack:
        raw = await stack.enter_async_context(wl.open_store(store_urls[0]))
        start = await raw.head()
        for chat in chats:
            await raw.register_chat(chat, OWNER)
        await stack.enter_async_context(
            wl.SimulatedProvisioner(raw, build_seconds=0.002, fail=f.build_fail, seed=f.seed, agent="ready")
        )
        wrapped: list[FaultyStore] = []
        runtimes: list[wl.Lifecycle] = []
        for i in range(3):
            inner = raw if shared else await stack.enter_async_context(wl.open_store(store_urls[0]))
            faulty = FaultyStore(
                inner,
                seed=f.seed + i,
                fail_before=f.fail_before,
                fail_after=f.fail_after,
                drop=f.drop,
                duplicate=f.duplicate,
                reorder=f.reorder,
                delay=f.delay,
                lose_wakeups=f.lose_wakeups,
                max_delay=0.005,
                max_consecutive=2,
            )
            wrapped.append(faulty)
            runtimes.append(
                await stack.enter_async_context(
                    wl.Lifecycle(faulty, build_timeout=15, agent_timeout=1, resync_interval=0.05)
                )
            )
        for rnd in history:
            await quiesce(raw, chats)
            before = {chat: await _state(raw, chat) for chat in chats}
            head = await raw.head()
            results: list[tuple[Call, wl.ToolResult]] = []

            async def call(c: Call, results: list[tuple[Call, wl.ToolResult]] = results) -> None:
                method = getattr(runtimes[c.runtime], f"{c.verb}_workspace")
                kwargs = {"name": "dev"} if c.verb == "create" else {}
                results.append((c, await method(chats[c.chat], owner=OWNER, **kwargs)))

            try:
                with anyio.fail_after(30):  # every caller answered: a hang fails here
                    async with anyio.create_task_group() as tg:
                        for c in rnd.calls:
                            tg.start_soon(call, c)
            except TimeoutError:
                # Say what hung, for whoever meets it next (once seen in ~10 full runs, not reproduced).
                answered = [c for c, _ in results]
                raise AssertionError(
                    f"unanswered after 30 s: {[c for c in rnd.calls if c not in answered]}; head "
                    f"{await raw.head()}; pumps (cursor, waiters, kicks): "
                    f"{[(lc._pump.cursor, len(lc._pump._waiters), lc._pump.kicks) for lc in runtimes]}; "
                    f"tracked {[lc.tracked for lc in runtimes]}; resyncs {[lc.resyncs for lc in runtimes]}; "
                    f"rows {[await _state(raw, chat) for chat in chats]}"
                ) from None
            FIGURES["requests"] += len(results)
            FIGURES["rounds"] += 1
            await quiesce(raw, chats)
            events = list(await raw.read_events(head))
            everything = [e for e in await raw.read_events(start, limit=100_000) if e.chat_id in chats]
            builds = builds_from_log(everything)
            for c, r in results:
                _check_answer(c.verb, r)
                check_answer_against_log(r, builds)  # a failure or no_agent only where stored
            await check_unbound_workspaces(raw, everything)  # no unbound live workspace
            if not rnd.mixed:
                for index, chat in enumerate(chats):
                    mine = [(c, r) for c, r in results if c.chat == index]
                    if mine:
                        _check_round(mine[0][0].verb, chat, before[chat], events, [r for _, r in mine])
                        FIGURES["requests_raced"] += len(mine) if len(mine) > 1 else 0
        await quiesce(raw, chats)
        await anyio.sleep(0.01)  # the provisioner's trailing agent report
        log = [e for e in await raw.read_events(start, limit=100_000) if e.chat_id in chats]
        _check_log(log)
        applied = applied_states(log)
        for ws, state in applied.items():
            assert wl.derive_state(await raw.workspace_facts(ws)) is state, f"workspace {ws}: rows != events"
        FIGURES["histories"] += 1
        FIGURES["events_checked"] += len(log)
        for faulty in wrapped:
            FIGURES.update({f"faults_{k}": v for k, v in faulty.injected.items()})
        for lc in runtimes:
            FIGURES["write_retries"] += lc.write_retried
            FIGURES["resyncs_after_silence"] += lc.resyncs
            assert lc.tracked == 0, "a runtime kept a workspace tracked after every caller left"


def _check_round(
    verb: str, chat: str, before: tuple[str | None, str], events: list[wl.StoreEvent], rs: list[wl.ToolResult]
) -> None:
    """Callers that all made one request from one state fired exactly one build, except that a
    caller whose turn came after that build *failed* rightly decides again from ``failed``."""
    ws, state = before
    fires = state in FIRES[verb]
    failed = {
        e.build_id
        for e in events
        if e.kind is wl.EventKind.BUILD_FINISHED and e.status is not wl.JobStatus.SUCCEEDED
    }
    if verb == "create":
        bound = {e.workspace_id for e in events if e.kind is wl.EventKind.CHAT_BOUND and e.chat_id == chat}
        queued = [
            e
            for e in events
            if e.kind is wl.EventKind.BUILD_QUEUED and e.workspace_id in bound and e.build_number == 1
        ]
    else:
        queued = [
            e
            for e in events
            if e.kind is wl.EventKind.BUILD_QUEUED
            and e.workspace_id == ws
            and e.transition is TRANSITION[verb]
        ]
    duplicates = [e for e in queued[:-1] if e.build_id not in failed]
    FIGURES["duplicates"] += len(duplicates)
    assert not duplicates, f"{verb} from {state}: a second build after {duplicates[0]} succeeded"
    assert (len(queued) >= 1) if fires else not queued, f"{verb} from {state} queued {len(queued)} builds"
    if not fires:
        if state in ("none", "deleted") and verb != "create":
            sentence = answers.NO_WORKSPACE if state == "none" else answers.WORKSPACE_DELETED
            assert all(r.is_error and r.text == sentence for r in rs), [r.text for r in rs]
        elif verb != "create":
            assert all(r.data.get("no_build") is True for r in rs), [r.data for r in rs]
        return
    FIGURES["refired_after_failure"] += len(queued) - 1
    ids = {e.build_id for e in queued}
    succeeded = any(e.build_id not in failed for e in queued)
    for r in rs:
        if verb == "create" and r.data.get("created") is False:
            # A create that lost the race to another caller's is told the workspace exists.
            assert r.data.get("status") is not None and not r.is_error, r.data
            continue
        if succeeded and (r.data.get("no_build") is True or r.text == answers.WORKSPACE_DELETED):
            # A caller whose turn came (delayed by faults) after the build succeeded finds the
            # workspace already where it asked: nothing to fire, and it fired nothing.
            FIGURES["answered_after_the_build"] += 1
            continue
        assert not r.is_error and r.data.get("build_id") in ids, (r.data, ids)
        FIGURES["answered_with_their_build"] += 1


def _run(store_urls: list[str], shared: bool, examples: int, steps: int) -> None:
    @settings(max_examples=examples, deadline=None)
    @given(f=faults, history=st.lists(rounds(), min_size=3, max_size=steps))
    def play(f: Faults, history: list[Round]) -> None:
        anyio.run(_play, store_urls, shared, f, history, backend="asyncio")

    play()


def test_memory_histories_with_faults() -> None:
    _run(["memory://"], True, EXAMPLES, 12)


def test_sqlite_histories_with_faults(tmp_path: Path) -> None:
    """Three runtimes, each with its own connection to one SQLite file."""
    counter = iter(range(1_000_000))

    def fresh() -> list[str]:
        return [f"sqlite:///{tmp_path / f'h{next(counter)}.db'}"]

    @settings(max_examples=max(4, EXAMPLES // 8), deadline=None)
    @given(f=faults, history=st.lists(rounds(), min_size=3, max_size=6))
    def play(f: Faults, history: list[Round]) -> None:
        anyio.run(_play, fresh(), False, f, history, backend="asyncio")

    play()


@pytest.mark.postgres
def test_postgres_histories_with_faults(pg_schema_url: str) -> None:
    """Three runtimes, each with its own pool, on one PostgreSQL schema."""
    _run([pg_schema_url], False, max(4, EXAMPLES // 8), 6)
