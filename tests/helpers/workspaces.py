"""Test set-up shared by several test modules: workspaces in a known state."""

from __future__ import annotations

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, Transition


async def stopped(store: wl.Store, chat: str = "c1", owner: str = "alice", *, has_agent: bool = False) -> str:
    """Register ``chat`` and give it a workspace whose latest build (2) is a succeeded stop;
    returns the workspace id. Builds are claimed and finished here, not by a provisioner."""
    await store.register_chat(chat, owner)
    ws = (await store.create_workspace(chat, "dev", expected_workspace_id=None)).facts.workspace_id
    for transition in (None, Transition.STOP):
        if transition is not None:
            assert (await store.request_build(ws, transition, expected_build_number=1)).fired
        build = await store.claim_build("setup")
        assert build is not None
        await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=has_agent)
    return ws
