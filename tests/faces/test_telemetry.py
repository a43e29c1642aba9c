"""Transition telemetry: one structured log record per state change, silent by default, and one
OpenTelemetry span per request with the transitions as span events."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from stacks import simulated_lifecycle

import workspace_lifecycle as wl
from workspace_lifecycle.telemetry import transition_logger

pytestmark = pytest.mark.anyio

LOGGER = "workspace_lifecycle.transitions"
FIELDS = ("chat", "workspace", "build", "from", "to", "event", "reason", "latency", "elapsed")


@pytest.fixture
async def lc() -> AsyncIterator[wl.Lifecycle]:
    async with simulated_lifecycle(chat="chat-1", owner="alice") as lifecycle:
        yield lifecycle


async def _scripted(lc: wl.Lifecycle) -> list[wl.StateChange]:
    """create, stop, start, delete chat-1; every state change seen by a watcher meanwhile."""
    changes: list[wl.StateChange] = []

    async def follow(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        watch = lc.watch("chat-1")
        task_status.started()  # the watch registers in its first step, before this task suspends
        async for change in watch:
            changes.append(change)

    async with anyio.create_task_group() as tg:
        await tg.start(follow)
        for result in [
            await lc.create_workspace("chat-1", owner="alice", name="dev"),
            await lc.stop_workspace("chat-1", owner="alice"),
            await lc.start_workspace("chat-1", owner="alice"),
            await lc.delete_workspace("chat-1", owner="alice"),
        ]:
            assert not result.is_error and "error" not in result.data, result.text
        await anyio.sleep(0.05)  # let the watcher take the last change
        tg.cancel_scope.cancel()
    return changes


def _as_tuple(change: wl.StateChange) -> tuple[Any, ...]:
    return (
        change.chat_id,
        change.workspace_id,
        change.build_number,
        change.from_state.value,
        change.to_state.value,
        change.event.value if change.event else "resync",
    )


class TestLogRecords:
    async def test_one_record_per_state_change_with_its_fields(
        self, lc: wl.Lifecycle, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger=LOGGER)
        changes = await _scripted(lc)
        records = [r for r in caplog.records if r.name == LOGGER]

        assert len(changes) >= 10  # 3 for create, 2 stop, 3 start, 2 delete
        assert [(r.chat, r.workspace, r.build, getattr(r, "from"), r.to, r.event) for r in records] == [  # type: ignore[attr-defined]
            _as_tuple(c) for c in changes
        ]
        for record in records:
            assert record.levelno == logging.INFO
            for field in FIELDS:
                assert hasattr(record, field), field
            assert isinstance(record.latency, float) and 0.0 <= record.latency < 5.0  # type: ignore[attr-defined]
            # Every change here happens while a request of the chat waits for it.
            assert isinstance(record.elapsed, float) and 0.0 <= record.elapsed < 5.0  # type: ignore[attr-defined]
            assert record.reason == "request"  # type: ignore[attr-defined]
            assert record.getMessage() == (
                f"chat-1: {getattr(record, 'from')} -> {record.to} ({record.event}, build {record.build}, request)"  # type: ignore[attr-defined]
            )

    async def test_no_request_waiting_means_no_elapsed(
        self, lc: wl.Lifecycle, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A change nobody waits for (wait=False) is still logged, with ``elapsed`` None."""
        caplog.set_level(logging.INFO, logger=LOGGER)
        changes: list[wl.StateChange] = []
        ready = anyio.Event()

        async def follow(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
            watch = lc.watch("chat-1")
            task_status.started()
            async for change in watch:
                changes.append(change)
                if change.to_state is wl.WorkspaceState.AGENT_READY:
                    ready.set()

        async with anyio.create_task_group() as tg:
            await tg.start(follow)
            result = await lc.create_workspace("chat-1", owner="alice", name="dev", wait=False)
            assert not result.is_error
            with anyio.fail_after(5):
                await ready.wait()
            tg.cancel_scope.cancel()
        records = [r for r in caplog.records if r.name == LOGGER]
        assert len(records) == len(changes)
        assert records[-1].to == "agent_ready"  # type: ignore[attr-defined]
        assert records[-1].elapsed is None  # type: ignore[attr-defined]

    async def test_a_create_nobody_watches_logs_its_first_change(
        self, lc: wl.Lifecycle, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger=LOGGER)
        result = await lc.create_workspace("chat-1", owner="alice", name="dev")
        assert not result.is_error
        steps = [(getattr(r, "from"), r.to) for r in caplog.records if r.name == LOGGER]  # type: ignore[attr-defined]
        assert steps == [("no_workspace", "building"), ("building", "running"), ("running", "agent_ready")]

    def test_the_logger_has_a_null_handler(self) -> None:
        assert transition_logger.name == LOGGER
        assert any(isinstance(h, logging.NullHandler) for h in transition_logger.handlers)

    def test_silent_without_configuration(self) -> None:
        """A whole chat's life, in a fresh interpreter without logging configured, prints nothing."""
        script = textwrap.dedent(
            """
            import anyio
            import workspace_lifecycle as wl

            async def main():
                async with (
                    wl.open_store("memory://") as store,
                    wl.SimulatedProvisioner(store, build_seconds=0.01, agent_seconds=0.01),
                    wl.Lifecycle(store) as lc,
                ):
                    await lc.register_chat("c", owner="o")
                    await lc.create_workspace("c", owner="o", name="dev")
                    await lc.stop_workspace("c", owner="o")
                    await lc.start_workspace("c", owner="o")

            anyio.run(main)
            """
        )
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert (done.stdout, done.stderr) == ("", "")


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """An in-memory exporter on the global tracer provider (set once per process, as OTel wants)."""
    memory = InMemorySpanExporter()
    processor = SimpleSpanProcessor(memory)
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(processor)
    yield memory
    # Stop exporting to this test's exporter; the global provider itself cannot be unset.
    memory.shutdown()


def _ours(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("workspace_lifecycle.")]


class TestSpans:
    async def test_a_start_request_is_one_span_with_its_transitions_as_events(
        self, lc: wl.Lifecycle, exporter: InMemorySpanExporter
    ) -> None:
        await lc.create_workspace("chat-1", owner="alice", name="dev")
        await lc.stop_workspace("chat-1", owner="alice")
        exporter.clear()

        result = await lc.start_workspace("chat-1", owner="alice")
        assert result.data.get("started") is True, result.text

        spans = _ours(exporter)
        assert [s.name for s in spans] == ["workspace_lifecycle.start"]
        span = spans[0]
        assert span.attributes is not None
        assert span.attributes["chat"] == "chat-1"
        assert span.attributes["build_id"] == result.data["build_id"]
        assert span.attributes["is_error"] is False
        transitions = [e for e in span.events if e.name == "transition"]
        steps = [(e.attributes or {}).get("from") for e in transitions] + [
            (transitions[-1].attributes or {}).get("to")
        ]
        assert steps == ["stopped", "building", "running", "agent_ready"]
        for event in transitions:
            attributes = event.attributes or {}
            assert attributes["build"] == 3  # create 1, stop 2, start 3
            assert attributes["event"] in {"build_queued", "build_updated", "build_finished", "agent_updated"}
            assert attributes["workspace"]
            assert 0.0 <= float(attributes["elapsed"]) < 5.0  # type: ignore[arg-type]
        assert span.events[0].name == "decision"

    async def test_each_request_its_own_span(self, lc: wl.Lifecycle, exporter: InMemorySpanExporter) -> None:
        exporter.clear()
        await lc.create_workspace("chat-1", owner="alice", name="dev")
        await lc.stop_workspace("chat-1", owner="alice")
        refused = await lc.start_workspace("chat-1", owner="mallory")
        assert refused.is_error
        spans = _ours(exporter)
        assert [s.name for s in spans] == [
            "workspace_lifecycle.create",
            "workspace_lifecycle.stop",
            "workspace_lifecycle.start",
        ]
        assert spans[2].attributes is not None and spans[2].attributes["is_error"] is True
        assert not [e for e in spans[2].events if e.name == "transition"]
