"""Coder's current chat tools: build parameters, structured failures, a bounded status wait.

The first tests port Coder's own chattool scenarios (their names, our API); the rest check the
bounded status wait and that hostile parameters and details are refused on every store.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import pytest

import workspace_lifecycle as wl
from workspace_lifecycle import JobStatus, Transition
from workspace_lifecycle.provisioner import simulated_endpoints

pytestmark = pytest.mark.anyio

CHAT, OWNER = "chat-1", "alice"
QUOTA_KEYS = {"error_code", "title", "message", "next_steps", "quota"}


class Recording(wl.MemoryStore):
    """Keeps every build a provisioner claimed (to see the parameters it was handed)."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed: list[wl.Build] = []

    async def claim_build(self, worker: str, *, lease_seconds: float = 30.0) -> wl.Build | None:
        build = await super().claim_build(worker, lease_seconds=lease_seconds)
        if build is not None:
            self.claimed.append(build)
        return build


async def stopped(lc: wl.Lifecycle) -> None:
    await lc.register_chat(CHAT, owner=OWNER)
    assert (await lc.create_workspace(CHAT, owner=OWNER, name="dev")).data["created"] is True
    assert (await lc.stop_workspace(CHAT, owner=OWNER)).data["stopped"] is True


class TestParameters:
    async def test_stopped_workspace_passes_no_parameters_when_none_were_given(self) -> None:
        """StoppedWorkspace: a start without parameters hands the provisioner none."""
        store = Recording()
        async with store, wl.SimulatedProvisioner(store), wl.Lifecycle(store) as lc:
            await stopped(lc)
            r = await lc.start_workspace(CHAT, owner=OWNER)
        assert r.data["started"] is True and "parameters_applied" not in r.data
        assert store.claimed[-1].transition is Transition.START
        assert dict(store.claimed[-1].parameters) == {}

    async def test_passes_parameters(self) -> None:
        """PassesParameters: the start build carries the parameters to the provisioner."""
        store = Recording()
        async with store, wl.SimulatedProvisioner(store), wl.Lifecycle(store) as lc:
            await stopped(lc)
            r = await lc.start_workspace(CHAT, owner=OWNER, parameters={"region": "eu", "cpu": "4"})
        assert r.data["started"] is True and r.data["build_id"] == store.claimed[-1].build_id
        assert dict(store.claimed[-1].parameters) == {"region": "eu", "cpu": "4"}

    async def test_create_passes_parameters(self) -> None:
        """create_workspace's first build carries its parameters too."""
        store = Recording()
        async with store, wl.SimulatedProvisioner(store), wl.Lifecycle(store) as lc:
            await lc.register_chat(CHAT, owner=OWNER)
            r = await lc.create_workspace(CHAT, owner=OWNER, name="dev", parameters={"region": "us"})
        assert r.data["created"] is True
        assert dict(store.claimed[0].parameters) == {"region": "us"}

    async def test_running_workspace_fires_nothing_and_says_so(self) -> None:
        """A start with parameters on a running workspace fires no build and says they were not applied."""
        store = Recording()
        async with store, wl.SimulatedProvisioner(store), wl.Lifecycle(store) as lc:
            await lc.register_chat(CHAT, owner=OWNER)
            await lc.create_workspace(CHAT, owner=OWNER, name="dev")
            builds = len(store.claimed)
            r = await lc.start_workspace(CHAT, owner=OWNER, parameters={"region": "eu"})
        assert r.data == {
            "started": True,
            "workspace_name": "dev",
            "no_build": True,
            "endpoints": simulated_endpoints(),
            "parameters_applied": False,
        }
        assert len(store.claimed) == builds

    @pytest.mark.parametrize(
        "parameters",
        [
            {"region": 3},
            {"": "x"},
            {"region": "eu\x00"},
            {"region": "x" * 5000},
            {f"p{i}": "v" for i in range(65)},
            {"nested": {"a": "b"}},
            ["region", "eu"],
        ],
        ids=["int", "empty-name", "nul", "huge", "too-many", "nested", "list"],
    )
    async def test_bad_parameters_are_refused_before_anything_is_written(self, parameters: Any) -> None:
        """Parameters are data: string names and values, bounded; anything else is a ValueError."""
        store = wl.MemoryStore()
        async with store, wl.Lifecycle(store) as lc:
            await stopped_without_provisioner(store, lc)
            head = await store.head()
            with pytest.raises(ValueError, match="parameter"):
                await lc.start_workspace(CHAT, owner=OWNER, parameters=parameters)
            assert await store.head() == head


async def stopped_without_provisioner(store: wl.Store, lc: wl.Lifecycle) -> None:
    await lc.register_chat(CHAT, owner=OWNER)
    await lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)


def failing(failure: wl.SimulatedFailure, *, number: int) -> Any:
    """A ``fail`` predicate: build ``number`` fails with ``failure``."""
    return lambda build: failure if build.number == number else None


class TestStructuredFailures:
    async def test_manual_update_required(self) -> None:
        """ManualUpdateRequired: validation details reach the model with the template id."""
        failure = wl.validation_failure(
            "template version requires a manual update",
            validations=[{"field": "region", "detail": "value 'mars' is not an option"}],
            template_id="tmpl-1",
        )
        store = wl.MemoryStore()
        async with (
            store,
            wl.SimulatedProvisioner(store, fail=failing(failure, number=3)),
            wl.Lifecycle(store) as lc,
        ):
            await stopped(lc)
            r = await lc.start_workspace(CHAT, owner=OWNER, parameters={"region": "mars"})
        assert r.is_error is False
        assert r.data["error"] == "workspace start build failed: the build was refused"
        assert r.data["detail"] == "template version requires a manual update"
        assert r.data["validations"] == [{"field": "region", "detail": "value 'mars' is not an option"}]
        assert r.data["template_id"] == "tmpl-1" and r.data["build_id"]

    async def test_responder_error_without_validations_omits_template_id(self) -> None:
        """ResponderErrorWithoutValidationsOmitsTemplateID."""
        failure = wl.validation_failure("the provisioner responded with an error", template_id="tmpl-1")
        store = wl.MemoryStore()
        async with (
            store,
            wl.SimulatedProvisioner(store, fail=failing(failure, number=3)),
            wl.Lifecycle(store) as lc,
        ):
            await stopped(lc)
            r = await lc.start_workspace(CHAT, owner=OWNER)
        assert r.data["detail"] == "the provisioner responded with an error"
        assert "template_id" not in r.data and "validations" not in r.data

    async def test_failed_build_quota(self) -> None:
        """FailedBuildQuota: create_workspace's build refused for quota, with every quota field."""
        failure = wl.quota_failure(credits_consumed=12, budget=10)
        store = wl.MemoryStore()
        async with (
            store,
            wl.SimulatedProvisioner(store, fail=failing(failure, number=1)),
            wl.Lifecycle(store) as lc,
        ):
            await lc.register_chat(CHAT, owner=OWNER)
            r = await lc.create_workspace(CHAT, owner=OWNER, name="dev")
        assert r.is_error is False
        assert r.data.keys() >= QUOTA_KEYS and r.data["error_code"] == "INSUFFICIENT_QUOTA"
        assert r.data["quota"] == {"credits_consumed": 12, "budget": 10}
        assert r.data["build_id"] and r.data["error"] == "workspace build failed: insufficient quota"

    async def test_start_triggered_quota_failure(self) -> None:
        """StartTriggeredQuotaFailure: the start build's quota failure carries the fields and build_id."""
        failure = wl.quota_failure(credits_consumed=5, budget=4)
        store = Recording()
        async with (
            store,
            wl.SimulatedProvisioner(store, fail=failing(failure, number=3)),
            wl.Lifecycle(store) as lc,
        ):
            await stopped(lc)
            r = await lc.start_workspace(CHAT, owner=OWNER)
        assert r.data.keys() >= QUOTA_KEYS
        assert r.data["build_id"] == store.claimed[-1].build_id
        assert r.data["error"] == "workspace start build failed: insufficient quota"

    async def test_start_triggered_build_failure(self) -> None:
        """StartTriggeredBuildFailure: a plain failure has no quota fields."""
        store = wl.MemoryStore()
        fail = failing(wl.SimulatedFailure("terraform apply failed"), number=3)
        async with store, wl.SimulatedProvisioner(store, fail=fail), wl.Lifecycle(store) as lc:
            await stopped(lc)
            r = await lc.start_workspace(CHAT, owner=OWNER)
        assert r.data["error"] == "workspace start build failed: terraform apply failed"
        assert not (QUOTA_KEYS & r.data.keys()) and r.data["build_id"]

    async def test_in_progress_build_failure_returns_build_id(self) -> None:
        """InProgressBuildFailureReturnsBuildID: joining another caller's build that fails."""
        store = wl.MemoryStore()
        async with store, wl.Lifecycle(store) as lc:
            await lc.register_chat(CHAT, owner=OWNER)
            await lc.create_workspace(CHAT, owner=OWNER, name="dev", wait=False)
            build = await store.claim_build("w")
            assert build is not None
            async with anyio.create_task_group() as tg:
                answer: list[wl.ToolResult] = []

                async def start() -> None:
                    answer.append(await lc.start_workspace(CHAT, owner=OWNER))

                tg.start_soon(start)
                await anyio.wait_all_tasks_blocked()
                await store.finish_build(
                    build.build_id, "failed", error="out of capacity", details={"next_steps": ["retry later"]}
                )
        assert answer[0].data == {
            "error": "waiting for in-progress build: out of capacity",
            "build_id": build.build_id,
            "next_steps": ["retry later"],
        }

    async def test_details_never_overwrite_the_library_keys(self) -> None:
        """A provisioner's ``error`` or ``build_id`` in details does not replace ours."""
        store = wl.MemoryStore()
        fail = failing(wl.SimulatedFailure("boom", {"error": "mine", "build_id": "x", "hint": "h"}), number=1)
        async with store, wl.SimulatedProvisioner(store, fail=fail), wl.Lifecycle(store) as lc:
            await lc.register_chat(CHAT, owner=OWNER)
            r = await lc.create_workspace(CHAT, owner=OWNER, name="dev")
        assert r.data["error"] == "workspace build failed: boom" and r.data["build_id"] != "x"
        assert r.data["hint"] == "h"


class TestStatus:
    async def test_status_names_the_state_and_why(self) -> None:
        """status, reason, build_id and wait_expired; another owner's chat reads as unknown."""
        store = wl.MemoryStore()
        fail = failing(wl.quota_failure(credits_consumed=3, budget=2), number=3)
        async with store, wl.SimulatedProvisioner(store, fail=fail), wl.Lifecycle(store) as lc:
            await stopped(lc)
            r = await lc.status(CHAT, owner=OWNER)
            assert r.data["status"] == "stopped" and r.data["wait_expired"] is False and r.data["build_id"]
            await lc.start_workspace(CHAT, owner=OWNER)
            r = await lc.status(CHAT, owner=OWNER)
            assert r.data["status"] == "failed"
            assert r.data["reason"] == "start build failed: insufficient quota"
            assert r.data["error_code"] == "INSUFFICIENT_QUOTA"
            unknown = await lc.status("nobody", owner=OWNER)
            other = await lc.status(CHAT, owner="mallory")
        assert unknown == other and unknown.data["status"] == "no_workspace"

    async def test_status_never_fires_a_build(self) -> None:
        """The status tool is read-only: on a stopped workspace it fires nothing, however long it waits."""
        store = wl.MemoryStore()
        async with store, wl.SimulatedProvisioner(store), wl.Lifecycle(store) as lc:
            await stopped(lc)
            head = await store.head()
            r = await lc.status(CHAT, owner=OWNER, wait_ms=50)
            assert r.data["status"] == "stopped" and r.data["wait_expired"] is False
            assert await store.head() == head

    async def test_wait_returns_when_the_state_settles(self) -> None:
        """status(wait_ms) during a build returns as soon as the build's event arrives."""
        store = wl.MemoryStore()
        async with store, wl.Lifecycle(store) as lc:
            await stopped_without_provisioner(store, lc)
            build = await store.claim_build("w")
            assert build is not None
            answer: list[wl.ToolResult] = []

            async def status() -> None:
                answer.append(await lc.status(CHAT, owner=OWNER, wait_ms=30_000))

            async with anyio.create_task_group() as tg:
                tg.start_soon(status)
                await anyio.wait_all_tasks_blocked()
                assert not answer  # still building: it waits
                started = time.monotonic()
                await store.finish_build(build.build_id, JobStatus.SUCCEEDED, has_agent=False)
            elapsed = time.monotonic() - started
        assert answer[0].data["status"] == "running" and answer[0].data["reason"] == "no_agent"
        assert answer[0].data["wait_expired"] is False
        assert elapsed < 5  # the event woke it; a wait that ran out would take 30 s

    async def test_wait_expired(self) -> None:
        """A build that does not end within wait_ms: the status says the wait ran out."""
        store = wl.MemoryStore()
        async with store, wl.Lifecycle(store) as lc:
            await stopped_without_provisioner(store, lc)
            started = time.monotonic()
            r = await lc.status(CHAT, owner=OWNER, wait_ms=100)
        assert time.monotonic() - started >= 0.1
        assert r.data["status"] == "building" and r.data["wait_expired"] is True
        assert r.data["reason"] == "start build is pending: no provisioner has claimed it yet"

    @pytest.mark.parametrize("wait_ms", [-1, 30_001, math.nan, math.inf, "5", True])
    async def test_bad_wait(self, wait_ms: Any) -> None:
        store = wl.MemoryStore()
        async with store, wl.Lifecycle(store) as lc:
            with pytest.raises(ValueError, match="wait_ms"):
                await lc.status(CHAT, owner=OWNER, wait_ms=wait_ms)


class TestOnEveryStore:
    """Parameters and details round-trip through every store; hostile ones are refused there."""

    @pytest.fixture
    def anyio_backend(self, store_backend: tuple[str, str]) -> str:
        return store_backend[1]

    async def test_parameters_and_details_round_trip(self, store: wl.Store) -> None:
        await store.register_chat(CHAT, OWNER)
        created = await store.create_workspace(CHAT, "dev", expected_workspace_id=None, parameters={"a": "1"})
        claimed = await store.claim_build("w")
        assert claimed is not None and dict(claimed.parameters) == {"a": "1"}
        details = {"error_code": "INSUFFICIENT_QUOTA", "quota": {"credits_consumed": 2, "budget": 1}}
        await store.finish_build(claimed.build_id, "failed", error="quota", details=details)
        facts = await store.workspace_facts(created.facts.workspace_id)
        assert facts.latest_build is not None and dict(facts.latest_build.details or {}) == details
        events = await store.read_events(0)
        finished = [e for e in events if e.kind is wl.EventKind.BUILD_FINISHED]
        assert finished and dict(finished[-1].details or {}) == details
        again = await store.request_build(
            facts.workspace_id, Transition.START, expected_build_number=1, parameters={"b": "2"}
        )
        assert again.build is not None and dict(again.build.parameters) == {"b": "2"}
        claimed = await store.claim_build("w")
        assert claimed is not None and dict(claimed.parameters) == {"b": "2"}

    @pytest.mark.parametrize(
        "details",
        [
            {"blob": "x" * 20_000},
            {"text": "a\x00b"},
            {"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}},
            {"n": math.nan},
            {"set": {1, 2}},
            ["not", "an", "object"],
            {1: "int key"},
        ],
        ids=["huge", "nul", "nested", "nan", "set", "list", "int-key"],
    )
    async def test_bad_details_are_refused_at_finish(self, store: wl.Store, details: Any) -> None:
        await store.register_chat(CHAT, OWNER)
        await store.create_workspace(CHAT, "dev", expected_workspace_id=None)
        claimed = await store.claim_build("w")
        assert claimed is not None
        head = await store.head()
        with pytest.raises(ValueError, match="details"):
            await store.finish_build(claimed.build_id, "failed", error="x", details=details)
        assert await store.head() == head  # nothing written: the build can still be finished
        await store.finish_build(claimed.build_id, "failed", error="x")

    async def test_bad_parameters_are_refused_by_the_store(self, store: wl.Store) -> None:
        await store.register_chat(CHAT, OWNER)
        head = await store.head()
        with pytest.raises(ValueError, match="parameter"):
            await store.create_workspace(CHAT, "dev", expected_workspace_id=None, parameters={"a": "\x00"})
        assert await store.head() == head
