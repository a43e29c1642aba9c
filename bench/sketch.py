"""The lower bound of the scale run: the same flow with nothing but its skeleton.

N chats each go register → create → stop → start (the start answered once the agent is
ready), as in :mod:`bench.scale`, but on the least machinery that can do it honestly:

* a dict transition table (state, event) -> state, written by hand;
* an append-only event log (a list) with a sequence number, each write a compare-and-set on
  the workspace's latest build number that appends its event;
* one pump task that reads the log from a cursor, applies each event to its workspace's state
  through the table and wakes that workspace's waiters (one ``anyio.Event`` per delivery);
* one provisioner task that claims pending builds and completes each in a task of its own
  (build finished, then the agent's ready report for a start build);
* one anyio task per chat; each request fires if the table allows, then sleeps until the pump
  has applied its build's outcome (and the agent's readiness for a create or start).

No answers, no retries, no tracing, no stale-event filter, no store interface: everything the
library adds on top of this is what the ratio against it measures.
"""

from __future__ import annotations

import time
from collections import deque

import anyio
import anyio.lowlevel

TABLE = {
    ("no_workspace", "queued"): "building",
    ("stopped", "queued"): "building",
    ("building", "succeeded_start"): "running",
    ("building", "succeeded_stop"): "stopped",
    ("running", "agent_ready"): "agent_ready",
    ("agent_ready", "queued"): "building",
    ("running", "queued"): "building",
}
FIRES = {"create": {"no_workspace"}, "stop": {"running", "agent_ready"}, "start": {"stopped"}}


class Workspace:
    __slots__ = ("agent_ready", "build", "changed", "finished", "state")

    def __init__(self) -> None:
        self.state = "no_workspace"
        self.build = 0  # latest build number known to the pump
        self.finished = 0  # latest build number the pump saw finish
        self.agent_ready = False
        self.changed = anyio.Event()


class Sketch:
    def __init__(self) -> None:
        self.log: list[tuple[int, str, str, int]] = []  # (seq, chat, event, build number)
        self.latest: dict[str, tuple[int, str]] = {}  # chat -> (build number, transition)
        self.chats: set[str] = set()
        self.ws: dict[str, Workspace] = {}
        self.pending: deque[tuple[str, int, str]] = deque()
        self.grew = anyio.Event()  # the log grew: wakes the pump
        self.queued = anyio.Event()  # a build is pending: wakes the provisioner
        self.cursor = 0

    def _append(self, chat: str, event: str, number: int) -> None:
        self.log.append((len(self.log) + 1, chat, event, number))
        self.grew.set()

    def request(self, chat: str, transition: str, expected: int) -> bool:
        """The store's compare-and-set: append a build if ``expected`` is still the latest."""
        number, _ = self.latest.get(chat, (0, ""))
        if number != expected:
            return False
        self.latest[chat] = (number + 1, transition)
        self.pending.append((chat, number + 1, transition))
        self.queued.set()
        self._append(chat, "queued", number + 1)
        return True

    async def pump(self) -> None:
        while True:
            if self.cursor == len(self.log):
                self.grew = anyio.Event()
                await self.grew.wait()
            while self.cursor < len(self.log):
                _, chat, event, number = self.log[self.cursor]
                self.cursor += 1
                ws = self.ws[chat]
                ws.state = TABLE.get((ws.state, event), ws.state)
                if event == "queued":
                    ws.build, ws.agent_ready = number, False
                elif event == "agent_ready":
                    ws.agent_ready = True
                else:
                    ws.finished = number
                ws.changed.set()
                ws.changed = anyio.Event()

    async def provisioner(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                while self.pending:
                    tg.start_soon(self._complete, *self.pending.popleft())
                self.queued = anyio.Event()
                await self.queued.wait()

    async def _complete(self, chat: str, number: int, transition: str) -> None:
        await anyio.lowlevel.checkpoint()
        self._append(chat, f"succeeded_{transition}", number)
        if transition == "start":
            await anyio.lowlevel.checkpoint()
            self._append(chat, "agent_ready", number)

    async def call(self, chat: str, request: str) -> None:
        ws = self.ws[chat]
        expected = ws.build
        if ws.state not in FIRES[request] or not self.request(
            chat, "stop" if request == "stop" else "start", expected
        ):
            raise AssertionError(f"{request} of {chat} in {ws.state} did not fire")
        number = expected + 1
        while ws.finished < number or (request != "stop" and not ws.agent_ready):
            await ws.changed.wait()

    async def flow(self, chat: str) -> None:
        self.chats.add(chat)
        self.ws[chat] = Workspace()
        for request in ("create", "stop", "start"):
            await self.call(chat, request)


async def run(n: int) -> float:
    """Seconds for ``n`` chats through the flow (the sketch's lower bound of ``bench.scale``)."""
    sketch = Sketch()
    async with anyio.create_task_group() as service:
        service.start_soon(sketch.pump)
        service.start_soon(sketch.provisioner)
        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(sketch.flow, f"s{i}")
        elapsed = time.monotonic() - t0
        assert all(ws.state == "agent_ready" for ws in sketch.ws.values())
        assert len(sketch.log) == 8 * n
        service.cancel_scope.cancel()
    return elapsed


if __name__ == "__main__":
    import sys

    print(f"{anyio.run(run, int(sys.argv[1]) if len(sys.argv) > 1 else 10_000):.2f} s")
