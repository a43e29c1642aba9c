"""A memory store with a fast simulated provisioner and a Lifecycle: the stack the tests of the
faces (tools, MCP, integrations, telemetry) answer over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import workspace_lifecycle as wl


@asynccontextmanager
async def simulated_lifecycle(
    *, seconds: float = 0.01, chat: str | None = None, owner: str = "alice"
) -> AsyncIterator[wl.Lifecycle]:
    """A Lifecycle over ``memory://`` whose builds and agents take ``seconds``; with ``chat``, that
    chat is registered for ``owner`` first (as a host does before serving it)."""
    async with (
        wl.open_store("memory://") as store,
        wl.SimulatedProvisioner(store, build_seconds=seconds, agent_seconds=seconds),
        wl.Lifecycle(store) as lifecycle,
    ):
        if chat is not None:
            await lifecycle.register_chat(chat, owner=owner)
        yield lifecycle
