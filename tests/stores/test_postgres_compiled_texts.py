"""The compiler's text cache: a write's statement is built once per shape, and what the cache
returns is always the text a fresh build gives for that write (no server needed)."""

from __future__ import annotations

from typing import Any

import attrs
from psycopg.types.json import Jsonb

from workspace_lifecycle import AgentLifecycle, JobStatus, Transition, writes
from workspace_lifecycle.adapters.postgres import compiler
from workspace_lifecycle.adapters.postgres.compiler import compile_write
from workspace_lifecycle.adapters.postgres.guards import Seen
from workspace_lifecycle.values import Agent, Chat, Policy, WorkspaceFacts

LOCK = (11, 22)


def many_writes() -> list[writes.Write]:
    """Writes of every shape the store persists: new chats and workspaces, requests, claims,
    renewals, finishes, agent reports, a chat's policy."""
    created = writes.create_workspace(
        Chat("c1", "alice"), expected_workspace_id=None, workspace_id="w1", build_id="b1", name="dev", at=5.0
    )
    assert created is not None and created.build is not None and created.workspace is not None
    ws, build = created.workspace, created.build
    claim = writes.claim_build(build, ws, worker="wk", at=6.0, token="t", lease_seconds=30)
    assert claim.build is not None
    renew = writes.renew_lease(claim.build, ws, "t", at=7.0, lease_seconds=30)
    finish = writes.finish_build(
        claim.build, ws, JobStatus.SUCCEEDED, None, has_agent=True, at=8.0, lease="t"
    )
    assert finish.build is not None
    facts = WorkspaceFacts(ws, finish.build, Agent("w1", 1, AgentLifecycle.CREATED), 3)
    stop = writes.request_build(
        facts, chat=None, transition=Transition.STOP, expected_build_number=1, build_id="b2", at=9.0
    )
    assert stop is not None
    report = writes.report_agent(facts.agent, ws, AgentLifecycle.READY, at=10.0)
    assert report is not None
    policy = writes.Write(events=(), chat=Chat("c1", "alice", "w1", policy=Policy(idle_stop_after=60)))
    return [created, claim, renew, finish, stop, report, policy]


def compiled(
    write: writes.Write, seen: Seen | None, options: dict[str, Any]
) -> tuple[str, dict[str, object]]:
    """The text and the parameters (JSON ones as their values: ``Jsonb`` compares by identity)."""
    text, params = compile_write(write, seen, log_lock=LOCK, **options)
    return text, {k: v.obj if isinstance(v, Jsonb) else v for k, v in params.items()}


def fresh(write: writes.Write, seen: Seen | None, options: dict[str, Any]) -> tuple[str, dict[str, object]]:
    compiler._TEXTS.clear()
    return compiled(write, seen, options)


def test_the_cache_returns_the_text_a_fresh_build_gives() -> None:
    """Every write, under every guard and option, compiled after all the others (the cache
    full of their shapes) gives the text and parameters it gets from an empty cache."""
    guards = [None, Seen("w1", 4), Seen("w1", 4, "c1", 2)]
    options: list[dict[str, Any]] = [
        {},
        {"skip_locked": True},
        {"new_chat": True},
        {"channels": ("a",)},
        {"channels": ("a", "b")},
    ]
    cases = [(w, g, o) for w in many_writes() for g in guards for o in options]
    expected = [fresh(w, g, o) for w, g, o in cases]
    compiler._TEXTS.clear()
    for _ in range(2):  # the second pass all from the cache
        for (w, g, o), want in zip(cases, expected, strict=True):
            assert compiled(w, g, o) == want


def test_one_text_per_shape() -> None:
    """Writes of one shape with other values share one text: the values are parameters."""
    report = many_writes()[5]
    other = attrs.evolve(report, events=tuple(attrs.evolve(e, workspace_id="w9") for e in report.events))
    compiler._TEXTS.clear()
    a, pa = compile_write(report, Seen("w1", 4), log_lock=LOCK)
    b, pb = compile_write(other, Seen("w9", 5), log_lock=LOCK)
    assert a is b and len(compiler._TEXTS) == 1
    assert (pa["g_w"], pb["g_w"], pb["e0w"]) == ("w1", "w9", "w9")
