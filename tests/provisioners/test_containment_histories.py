"""Random histories with real processes: no process of a deleted workspace is alive (issue 29,
"the chaos tests gain: no process of a deleted workspace alive").

The random histories of ``workspace_lifecycle.testing`` run a simulated provisioner, which has
no processes; this machine drives a :class:`~workspace_lifecycle.ProcessProvisioner` through
create, stop, start, delete and provisioner restarts (with the workspace's main process
SIGKILLed while none runs, or not). Each workspace leaves two detached processes: one in a
session of its own (double fork + ``setsid``), one in a process group of its own that ignores
SIGTERM. After every delete that answers ``deleted``, and after every step since, no process
carries a deleted workspace's marker (read from ``/proc`` here, not by the library).

The runtime lives in an event loop of its own thread (an anyio blocking portal), since
Hypothesis's rules are plain calls. A few short histories: a multi-process test, ``slow``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from processes import marked, running

import workspace_lifecycle as wl

pytestmark = pytest.mark.slow

CHAT, OWNER = "c1", "alice"

#: What the histories did, over all examples (the test checks that deletes were checked).
SEEN: Counter[str] = Counter()

#: Serves ``{port}`` after leaving two detached processes: a double-forked one in its own
#: session, and one in its own process group that ignores SIGTERM.
DETACHING = r"""
import os, signal, socket, sys, time

def detach(new_session):
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    if new_session:
        os.setsid()
    else:
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork():
        os._exit(0)
    while True:
        time.sleep(60)

detach(True)
detach(False)
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(16)
while True:
    conn, _ = sock.accept()
    conn.close()
"""


class ContainmentHistories(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        self._dir = Path(self._stack.enter_context(TemporaryDirectory()))
        self.portal: BlockingPortal = self._stack.enter_context(start_blocking_portal())
        self.store = wl.MemoryStore()
        self._stack.enter_context(self.portal.wrap_async_context_manager(self.store))
        self.lc = wl.Lifecycle(self.store, build_timeout=30, agent_timeout=30)
        self._stack.enter_context(self.portal.wrap_async_context_manager(self.lc))
        self.portal.call(lambda: self.lc.register_chat(CHAT, owner=OWNER))
        self.provisioner: contextlib.AbstractContextManager[Any] | None = None
        self.main: int | None = None  # the running workspace's main process, as last seen
        self.ws: str | None = None  # the chat's workspace
        self.workspaces: list[str] = []  # every one made (cleaned up at the end)
        self.deleted: list[str] = []
        self._open_provisioner()

    def _open_provisioner(self) -> None:
        provisioner = wl.ProcessProvisioner(
            self.store,
            root=self._dir / "ws",
            command=[sys.executable, "-c", DETACHING, "{port}"],
            spawn_grace=0.1,
            stop_grace=0.3,
        )
        self.provisioner = self.portal.wrap_async_context_manager(provisioner)
        self.provisioner.__enter__()
        self.process_provisioner = provisioner

    def _close_provisioner(self) -> None:
        if self.provisioner is not None:
            self.provisioner.__exit__(None, None, None)
            self.provisioner = None

    def teardown(self) -> None:
        try:
            self._close_provisioner()
            self._stack.close()
        finally:
            for ws in self.workspaces:
                for pid in marked(ws):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)

    def _call(self, request: str) -> wl.ToolResult:
        method = getattr(self.lc, request)
        result: wl.ToolResult = self.portal.call(lambda: method(CHAT, owner=OWNER))
        return result

    def _note_main(self) -> None:
        pids = self.process_provisioner.pids
        self.main = pids[-1] if pids else None

    @precondition(lambda self: self.ws is None)
    @rule()
    def create(self) -> None:
        result = self.portal.call(lambda: self.lc.create_workspace(CHAT, owner=OWNER, name="dev"))
        assert result.data.get("created") is True, result.text
        chat = self.portal.call(lambda: self.store.get_chat(CHAT))
        assert chat is not None and chat.workspace_id is not None
        self.ws = chat.workspace_id
        self.workspaces.append(self.ws)
        SEEN["created"] += 1
        self._note_main()
        assert len(marked(self.ws)) >= 3, "the main process and its two detached ones"

    @precondition(lambda self: self.ws is not None)
    @rule()
    def stop(self) -> None:
        SEEN["stopped" if self._call("stop_workspace").data.get("stopped") is True else "stop answered"] += 1

    @precondition(lambda self: self.ws is not None)
    @rule()
    def start(self) -> None:
        result = self._call("start_workspace")
        if result.data.get("started") is True:
            self._note_main()
            SEEN["started"] += 1

    @precondition(lambda self: self.ws is not None)
    @rule()
    def delete(self) -> None:
        assert self.ws is not None
        result = self._call("delete_workspace")
        if result.data.get("deleted") is True:
            self.deleted.append(self.ws)
            self.ws = None
            SEEN["deleted"] += 1
            self.no_process_of_a_deleted_workspace()

    @rule(kill_main=st.booleans())
    def restart_provisioner(self, kill_main: bool) -> None:
        """The provisioner exits (its processes run on) and another opens on the same root;
        meanwhile the workspace's main process may die, leaving its detached ones."""
        self._close_provisioner()
        SEEN["restarted"] += 1
        if kill_main and self.main is not None and running(self.main):
            os.kill(self.main, signal.SIGKILL)
            SEEN["killed main"] += 1
        self._open_provisioner()

    @invariant()
    def no_process_of_a_deleted_workspace(self) -> None:
        for ws in self.deleted:
            assert marked(ws) == [], f"processes of deleted workspace {ws} alive: {marked(ws)}"


def test_no_process_of_a_deleted_workspace_is_alive() -> None:
    SEEN.clear()
    run_state_machine_as_test(
        ContainmentHistories,
        settings=settings(
            max_examples=6, stateful_step_count=8, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
    assert SEEN["deleted"] > 0, SEEN  # the invariant was put to the test
