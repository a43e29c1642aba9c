"""Two invariants for random histories (reported bugs 1 to 3), as functions any history can call.

* :func:`check_unbound_workspaces`: a workspace no chat is bound to any more is stopped, deleted
  (``no_workspace``), failed, or building a stop/delete; never running, ``agent_ready`` or
  building a start (a late start revived a replaced workspace).
* :func:`check_answer_against_log`: an answer names a failure only for a build whose stored
  outcome is ``failed``/``canceled`` (or for a timeout), and says ``agent_status: "no_agent"``
  only for a build whose stored ``has_agent`` is false.

They take plain store reads and the raw event log, so ``tests/runtime/test_reliability_histories.py``
can call them too: in ``_play``, after ``_check_answer(c.verb, r)``, call
``check_answer_against_log(r, _builds(log))`` and after each round
``await check_unbound_workspaces(raw, chats)``. Here they run on histories of their own: two
runtimes over one memory store, a simulated provisioner whose builds fail at random, and rounds
of concurrent mixed requests (the interleavings that produce those bugs).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import anyio
import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

import workspace_lifecycle as wl

OWNER = "owner"
VERBS = ("create", "start", "stop", "delete")
FAILURE_PREFIXES = (
    "workspace build failed",
    "existing workspace build failed",
    "workspace start build failed",
    "workspace stop build failed",
    "workspace delete build failed",
    "waiting for in-progress build",
)


@attrs.frozen
class BuildOutcome:
    build_id: str
    workspace_id: str
    transition: wl.Transition | None
    status: wl.JobStatus | None
    has_agent: bool | None


def builds_from_log(events: Iterable[wl.StoreEvent]) -> dict[str, BuildOutcome]:
    """Each build's final outcome as the log records it (its build_finished event)."""
    out: dict[str, BuildOutcome] = {}
    for e in events:
        if e.build_id is None or e.kind not in (wl.EventKind.BUILD_QUEUED, wl.EventKind.BUILD_FINISHED):
            continue
        if e.kind is wl.EventKind.BUILD_FINISHED or e.build_id not in out:
            out[e.build_id] = BuildOutcome(e.build_id, e.workspace_id, e.transition, e.status, e.has_agent)
    return out


def check_answer_against_log(r: wl.ToolResult, builds: dict[str, BuildOutcome]) -> None:
    """(b): failures and no_agent only where the stored build says so."""
    if r.is_error:
        return
    build_id = r.data.get("build_id")
    build = builds.get(build_id) if build_id is not None else None
    error = r.data.get("error")
    if isinstance(error, str) and error.startswith(FAILURE_PREFIXES):
        reason = error.split(": ", 1)[1] if ": " in error else ""
        if "timed out" not in reason and build is not None:
            assert build.status in (wl.JobStatus.FAILED, wl.JobStatus.CANCELED), (
                f"answered {error!r} for build {build_id}, whose stored status is "
                f"{build.status.value if build.status else None}"
            )
    if r.data.get("agent_status") == "no_agent" and build is not None:
        assert build.has_agent is False, (
            f"answered no_agent for build {build_id}, whose stored has_agent is {build.has_agent}: {r.data} {build}"
        )


async def check_unbound_workspaces(store: wl.Store, events: Iterable[wl.StoreEvent]) -> None:
    """(a): every workspace of the log that its chat is no longer bound to costs nothing."""
    workspaces = {(e.workspace_id, e.chat_id) for e in events}
    for ws, chat_id in workspaces:
        chat = await store.get_chat(chat_id)
        if chat is not None and chat.workspace_id == ws:
            continue
        facts = await store.workspace_facts(ws)
        state = wl.derive_state(facts)
        latest = facts.latest_build
        building_down = (
            state is wl.WorkspaceState.BUILDING
            and latest is not None
            and latest.transition in (wl.Transition.STOP, wl.Transition.DELETE)
        )
        assert building_down or state in (
            wl.WorkspaceState.STOPPED,
            wl.WorkspaceState.NO_WORKSPACE,
            wl.WorkspaceState.FAILED,
        ), (
            f"workspace {ws}, no longer bound to chat {chat_id}, is {state.value} "
            f"(latest build {latest.transition.value if latest else None} {latest.status.value if latest else None})"
        )


@attrs.frozen
class Call:
    chat: int
    verb: str
    runtime: int


rounds = st.lists(
    st.builds(Call, st.integers(0, 1), st.sampled_from(VERBS), st.integers(0, 1)), min_size=1, max_size=6
)


async def quiesce(store: wl.Store, chats: list[str]) -> None:
    """Wait until no build of these chats is in flight (the provisioner finishes them)."""
    with anyio.fail_after(20):
        while True:
            cursor = await store.head()
            busy = False
            for chat in chats:
                row = await store.get_chat(chat)
                if row is not None and row.workspace_id is not None:
                    latest = (await store.workspace_facts(row.workspace_id)).latest_build
                    busy = busy or (latest is not None and latest.status.in_progress)
            if not busy:
                return
            with anyio.move_on_after(0.05):
                await store.wait_for_change(cursor)


async def _play(seed: int, history: list[list[Call]]) -> None:
    prefix = uuid.uuid4().hex[:6]
    chats = [f"{prefix}-c{i}" for i in range(2)]
    async with wl.open_store("memory://") as store:
        for chat in chats:
            await store.register_chat(chat, OWNER)
        async with (
            wl.SimulatedProvisioner(store, build_seconds=0.001, agent_seconds=0.002, fail=0.25, seed=seed),
            wl.Lifecycle(store, build_timeout=15, agent_timeout=1) as lc0,
            wl.Lifecycle(store, build_timeout=15, agent_timeout=1) as lc1,
        ):
            runtimes = [lc0, lc1]
            for calls in history:
                results: list[wl.ToolResult] = []

                async def call(c: Call, results: list[wl.ToolResult] = results) -> None:
                    method = getattr(runtimes[c.runtime], f"{c.verb}_workspace")
                    kwargs = {"name": "dev"} if c.verb == "create" else {}
                    results.append(await method(chats[c.chat], owner=OWNER, **kwargs))

                with anyio.fail_after(30):
                    async with anyio.create_task_group() as tg:
                        for c in calls:
                            tg.start_soon(call, c)
                await quiesce(store, chats)
                log = list(await store.read_events(0, limit=100_000))
                builds = builds_from_log(log)
                for r in results:
                    check_answer_against_log(r, builds)
                await check_unbound_workspaces(store, log)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), history=st.lists(rounds, min_size=3, max_size=10))
def test_histories_keep_unbound_workspaces_down_and_answers_true(
    seed: int, history: list[list[Call]]
) -> None:
    anyio.run(_play, seed, history, backend="asyncio")
