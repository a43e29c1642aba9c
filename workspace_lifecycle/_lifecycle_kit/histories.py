"""The histories' strategies: store operations (:func:`histories`, played by
:func:`run_history`) and perturbed deliveries of events (:func:`deliveries`, applied by
:func:`applied_states`). Exported by :mod:`workspace_lifecycle.testing`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import attrs
from hypothesis import strategies as st

from ..adapters.base import Store
from ..machine import Tracker
from ..values import AgentLifecycle, JobStatus, StoreEvent, Transition, WorkspaceState

T = TypeVar("T")

DEFAULT_CHATS = ("c1", "c2")
OWNER = "owner"

# --- histories ---------------------------------------------------------------------------------


@attrs.frozen
class Create:
    """Bind a new workspace (with its first start build) to ``chat``, if it has none alive."""

    chat: str


@attrs.frozen
class RequestBuild:
    """Append a ``transition`` build to ``chat``'s workspace if the machine would fire one."""

    chat: str
    transition: Transition


@attrs.frozen
class Claim:
    """A provisioner claims the oldest pending build."""

    worker: str = "history"


@attrs.frozen
class Finish:
    """Finish ``chat``'s in-progress build (claiming it first if it is still pending)."""

    chat: str
    status: JobStatus
    has_agent: bool = True
    error: str | None = None


@attrs.frozen
class Report:
    """The agent of ``chat``'s workspace reports a lifecycle state (if it has an agent)."""

    chat: str
    lifecycle: AgentLifecycle


HistoryOp = Create | RequestBuild | Claim | Finish | Report

FINAL = (JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


def history_ops(chats: Sequence[str] = DEFAULT_CHATS) -> st.SearchStrategy[HistoryOp]:
    """One store operation on one of ``chats``."""
    chat = st.sampled_from(list(chats))
    return st.one_of(
        st.builds(Create, chat),
        st.builds(RequestBuild, chat, st.sampled_from(list(Transition))),
        st.builds(Claim),
        st.builds(
            Finish,
            chat,
            st.sampled_from(FINAL),
            st.booleans(),
            st.sampled_from([None, "boom", "quota exceeded"]),
        ),
        st.builds(Report, chat, st.sampled_from(list(AgentLifecycle))),
    )


def histories(
    chats: Sequence[str] = DEFAULT_CHATS, *, min_size: int = 0, max_size: int = 40
) -> st.SearchStrategy[list[HistoryOp]]:
    """Sequences of store operations over ``chats`` (play them with :func:`run_history`).

    >>> from hypothesis import given
    >>> @given(histories(max_size=5))
    ... def test(ops): assert all(isinstance(op, HistoryOp) for op in ops)
    >>> test()
    """
    return st.lists(history_ops(chats), min_size=min_size, max_size=max_size)


async def run_history(store: Store, ops: Iterable[HistoryOp], *, owner: str = OWNER) -> None:
    """Play ``ops`` against ``store``; an operation that does not apply now is skipped.

    Requests follow the machine's decision (a start build only from stopped or failed, ...),
    as the runtime would; everything else is the store's own compare-and-set.
    """
    from ..machine import Decision, Request

    for op in ops:
        chat_id = op.chat if not isinstance(op, Claim) else None
        chat = await store.register_chat(chat_id, owner) if chat_id is not None else None
        ws_id = chat.workspace_id if chat is not None else None
        facts = await store.workspace_facts(ws_id) if ws_id is not None else None
        if isinstance(op, Create):
            if facts is None or facts.workspace.deleted:
                await store.create_workspace(op.chat, "dev", expected_workspace_id=ws_id)
        elif isinstance(op, RequestBuild):
            if facts is None:
                continue
            tracker = Tracker.from_facts(facts)
            if tracker.decide(Request(op.transition.value)) is Decision.FIRE:
                number = facts.latest_build.number if facts.latest_build else 0
                await store.request_build(facts.workspace_id, op.transition, expected_build_number=number)
        elif isinstance(op, Claim):
            await store.claim_build(op.worker)
        elif isinstance(op, Finish):
            build = facts.latest_build if facts is not None else None
            if build is None or build.status.finished:
                continue
            while build.status is JobStatus.PENDING:
                claimed = await store.claim_build("history")
                assert claimed is not None, "a pending build was not claimable"
                if claimed.build_id == build.build_id:
                    break
            await store.finish_build(build.build_id, op.status, op.error, has_agent=op.has_agent)
        elif facts is not None and facts.agent is not None and not facts.workspace.deleted:
            await store.report_agent(facts.workspace_id, op.lifecycle)


# --- delivery perturbations ----------------------------------------------------------------------


@st.composite
def _deliveries(
    draw: st.DrawFn, events: Sequence[T], reorder: bool, repeat: bool, max_repeats: int | None
) -> list[T]:
    n = len(events)
    order = list(draw(st.permutations(range(n)))) if reorder else list(range(n))
    if repeat and n:
        cap = n if max_repeats is None else max_repeats
        extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n)), max_size=cap))
        for index, position in extra:
            order.insert(min(position, len(order)), index)
    return [events[i] for i in order]


def deliveries(
    events: Sequence[T], *, reorder: bool = True, repeat: bool = True, max_repeats: int | None = None
) -> st.SearchStrategy[list[T]]:
    """A delivery of ``events``: every event at least once, some repeated, in any order.

    >>> from hypothesis import given
    >>> @given(deliveries([1, 2, 3]))
    ... def test(d): assert set(d) == {1, 2, 3}
    >>> test()
    """
    return _deliveries(list(events), reorder, repeat, max_repeats)


def applied_states(events: Iterable[StoreEvent]) -> dict[str, WorkspaceState]:
    """The state of each workspace reached by applying ``events`` to fresh trackers."""
    trackers: dict[str, Tracker] = {}
    for event in events:
        tracker = trackers.get(event.workspace_id)
        if tracker is None:
            tracker = trackers[event.workspace_id] = Tracker(event.workspace_id, event.chat_id)
        tracker.apply(event)
    return {ws: t.state for ws, t in trackers.items()}
