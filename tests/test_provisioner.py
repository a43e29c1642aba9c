"""SimulatedProvisioner: builds complete, failures are chosen, transient store errors are retried."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import AgentLifecycle, JobStatus, WorkspaceState

pytestmark = pytest.mark.anyio


class FlakyFinish(wl.MemoryStore):
    """finish_build fails ``failures`` times, once before and once after committing."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def finish_build(
        self, build_id: str, status: JobStatus | str, error: str | None = None, **options: Any
    ) -> wl.Build:
        if self.failures > 0:
            self.failures -= 1
            if self.failures % 2:
                raise wl.StoreUnavailableError("connection lost before commit")
            await super().finish_build(build_id, status, error, **options)
            raise wl.StoreUnavailableError("connection lost during commit; the write may have been applied")
        return await super().finish_build(build_id, status, error, **options)


async def test_transient_errors_are_retried_until_the_build_finishes() -> None:
    """A build is not left running because one finish_build call failed (before or after commit)."""
    store = FlakyFinish(failures=2)
    async with store, wl.SimulatedProvisioner(store) as prov, wl.Lifecycle(store, build_timeout=10) as lc:
        await lc.register_chat("c", owner="o")
        with anyio.fail_after(10):
            r = await lc.create_workspace("c", owner="o", name="dev")
        assert r.data["created"] is True
        assert await lc.state("c") is WorkspaceState.AGENT_READY
        assert store.failures == 0 and prov.builds_done == 1


class BusyFinish(wl.MemoryStore):
    """finish_build stays busy (another program holds the write lock) ``failures`` times."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def finish_build(
        self, build_id: str, status: JobStatus | str, error: str | None = None, **options: Any
    ) -> wl.Build:
        if self.failures > 0:
            self.failures -= 1
            raise wl.StoreBusyError("database is locked")
        return await super().finish_build(build_id, status, error, **options)


async def test_finish_is_retried_until_it_lands_past_the_retry_budget() -> None:
    """Hardening 10: a long foreign lock outlasts ``retries``; the finish still lands when it ends.

    Before: the provisioner gave up after ``retries`` and left the build running for good.
    """
    store = BusyFinish(failures=30)
    async with (
        store,
        wl.SimulatedProvisioner(store, retries=2, max_retry_delay=0.01) as prov,
        wl.Lifecycle(store, build_timeout=10) as lc,
    ):
        await lc.register_chat("c", owner="o")
        with anyio.fail_after(10):
            r = await lc.create_workspace("c", owner="o", name="dev")
        assert r.data["created"] is True, r.text
        assert store.failures == 0 and prov.builds_done == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_fail_predicate_and_agent_outcome() -> None:
    """``fail`` picks the failing build; ``agent`` is where the agent lands."""
    store = wl.MemoryStore()
    async with (
        store,
        wl.SimulatedProvisioner(store, fail=lambda b: b.number == 1, agent="start_error"),
        wl.Lifecycle(store) as lc,
    ):
        await lc.register_chat("c", owner="o")
        with anyio.fail_after(10):
            first = await lc.create_workspace("c", owner="o", name="dev")
            assert first.data["error"] == "workspace build failed: simulated failure"
            second = await lc.start_workspace("c", owner="o")
        assert second.data["startup_scripts"] == "startup_scripts_failed"
        assert second.data["lifecycle_state"] == AgentLifecycle.START_ERROR.value


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="probability"):
        wl.SimulatedProvisioner(wl.MemoryStore(), fail=1.5)
    with pytest.raises(ValueError, match="negative"):
        wl.SimulatedProvisioner(wl.MemoryStore(), build_seconds=-1)
    with pytest.raises(ValueError):
        wl.SimulatedProvisioner(wl.MemoryStore(), agent="sleepy")


class RefusesFirstFinish(wl.MemoryStore):
    """finish_build of the first build raises a caller error (as a store with a bug might)."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    async def finish_build(
        self, build_id: str, status: JobStatus | str, error: str | None = None, **options: Any
    ) -> wl.Build:
        if not self.refused:
            self.refused.append(build_id)
            raise wl.NotFoundError(f"no build {build_id!r} (refused once by the test)")
        return await super().finish_build(build_id, status, error, **options)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_an_error_in_one_build_does_not_stop_the_provisioner() -> None:
    """A store error inside the lease's block reaches the provisioner's handler as itself (not
    wrapped in an exception group, which no handler catches): the provisioner logs it and goes
    on serving other builds."""
    store = RefusesFirstFinish()
    async with store, wl.SimulatedProvisioner(store) as prov, wl.Lifecycle(store, build_timeout=5) as lc:
        for chat in ("c1", "c2"):
            await lc.register_chat(chat, owner="o")
        first = await lc.create_workspace("c1", owner="o", name="dev", wait=False)
        assert not first.is_error
        with anyio.fail_after(10):
            second = await lc.create_workspace("c2", owner="o", name="dev")
        assert second.data["created"] is True, second.text
        assert len(store.refused) == 1 and prov.builds_done == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_holding_raises_the_bodys_error_as_itself() -> None:
    async with wl.MemoryStore() as store:
        await store.register_chat("c", "o")
        await store.create_workspace("c", "dev", expected_workspace_id=None)
        build = await store.claim_build("w")
        assert build is not None
        with pytest.raises(wl.StoreBusyError, match="busy"):
            async with wl.holding(store, build, lease_seconds=1):
                raise wl.StoreBusyError("busy")
