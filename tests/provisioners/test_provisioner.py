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


class BrokenFirstFinish(wl.MemoryStore):
    """The first finish_build fails for good (a StoreError that is not transient)."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = 1

    async def finish_build(
        self, build_id: str, status: JobStatus | str, error: str | None = None, **options: Any
    ) -> wl.Build:
        if self.broken > 0:
            self.broken -= 1
            raise wl.StoreError("the database refused the write")
        return await super().finish_build(build_id, status, error, **options)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_finish_that_fails_for_good_is_logged_and_the_provisioner_serves_on() -> None:
    """The build's error, raised inside ``holding``, is the provisioner's to log (as itself,
    not an exception group that ends the provisioner); its lease then runs out."""
    store = BrokenFirstFinish()
    async with (
        store,
        wl.SimulatedProvisioner(store, lease_seconds=0.3) as prov,
        wl.Lifecycle(store, build_timeout=10) as lc,
    ):
        await lc.register_chat("c1", owner="o")
        await lc.register_chat("c2", owner="o")
        with anyio.fail_after(10):
            first = await lc.create_workspace("c1", owner="o", name="dev")
            assert "lost its lease" in first.text, first.text
            second = await lc.create_workspace("c2", owner="o", name="dev")
        assert second.data["created"] is True, second.text
        assert prov.reaper is not None and prov.reaper.expired == 1


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


@pytest.mark.parametrize("fail", ["5", "0.5", True, -0.1, 1.5, float("nan"), float("inf"), [0.5], b"1"])
def test_a_fail_that_is_neither_a_probability_nor_a_predicate_is_refused_at_construction(
    fail: object,
) -> None:
    """Found by an independent attack: ``fail="5"`` passed construction and raised ``TypeError``
    at the first build, ending the provisioner and its host's ``async with``."""
    with pytest.raises(ValueError, match="fail must be a predicate or a probability in \\[0, 1\\]"):
        wl.SimulatedProvisioner(wl.MemoryStore(), fail=fail)  # type: ignore[arg-type]


@pytest.mark.parametrize("fail", [None, 0, 1, 0.3, lambda build: False])
def test_a_probability_or_a_predicate_is_a_fail(fail: object) -> None:
    assert wl.SimulatedProvisioner(wl.MemoryStore(), fail=fail).fail is fail  # type: ignore[arg-type]
