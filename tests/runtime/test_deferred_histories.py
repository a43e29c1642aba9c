"""Random histories on one chat, where requests deferred behind a build are frequent: no
accepted request is dropped, even when the runtime that accepted it is dropped
(``LifecycleMachine.restart_runtime``) before the build it waits out ends (issue 29 item 9).

One chat instead of the default three makes "a request of another kind during a build, then
that build's finish" common enough that 60 examples meet it every run (with the finish's
firing disabled, this test failed in each of several runs; the three-chat machine of
``tests/core/test_properties.py`` met it in about two runs of three).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from hypothesis import settings

import workspace_lifecycle as wl
from workspace_lifecycle.testing import make_lifecycle_machine

OneChatMachine = make_lifecycle_machine(
    lambda: wl.open_store("memory://"), chats=["c1"], name="OneChatMachine"
)
OneChatMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=25)
TestOneChatMachine = OneChatMachine.TestCase


def test_sqlite_one_chat_machine(tmp_path: Path) -> None:
    """The same over SQLite: the deferred request is a column of the workspace row, fired by
    the finishing transaction (a fresh database file per example)."""
    machine = make_lifecycle_machine(
        lambda: wl.open_store(f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"),
        chats=["c1"],
        name="SQLiteOneChatMachine",
    )
    machine.TestCase.settings = settings(max_examples=10, stateful_step_count=25)
    machine.TestCase().runTest()
