"""Transition telemetry: one structured log record per state change, and optional spans.

Records go to the ``workspace_lifecycle.transitions`` logger at ``INFO``; it has a
``NullHandler`` and so is silent until the application configures logging. Each record carries
these attributes of the ``LogRecord``:

- ``chat``, ``workspace``, ``build`` (the build number), ``from`` and ``to`` (state names) and
  ``event`` (the store event kind, or ``resync`` when re-reading the rows moved the state);
- ``latency``: seconds from the store write that caused the change to its delivery here;
- ``elapsed``: seconds since the oldest tool request of this chat still running in this process
  began (how long the caller has waited so far), or ``None`` when no request is waiting.

``from`` is a Python keyword: read it with ``getattr(record, "from")``, or ``%(from)s`` in a
format string.

When ``opentelemetry-api`` is importable, each tool request is a span named
``workspace_lifecycle.<request>`` and every state change seen while it runs is a span event.
There is no hard dependency on OpenTelemetry.

A replica whose clock is off the store's by more than a fraction of the lease says so on the
``workspace_lifecycle.clock`` logger (:func:`report_skew`; see :mod:`workspace_lifecycle.skew`).

Each expiry warning (``deadline_approaching``) is one ``INFO`` record on the
``workspace_lifecycle.deadlines`` logger, written by the replica that wrote the warning (so once
across replicas), with the attributes ``chat``, ``workspace``, ``reason`` (``idle`` or
``retention``), ``deadline`` (its wall-clock time), ``warn_at`` and ``left`` (seconds to go); and
a ``deadline_approaching`` event on the chat's open request spans (:func:`log_warning`).
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

from .skew import ClockSkew
from .values import Deadline, StateChange, ToolResult

__all__ = [
    "RequestSpan",
    "clock_logger",
    "deadline_logger",
    "log_change",
    "log_warning",
    "report_skew",
    "transition_logger",
]

transition_logger = logging.getLogger("workspace_lifecycle.transitions")
transition_logger.addHandler(logging.NullHandler())

#: Clock skew against the store above its bound (see :func:`report_skew`).
clock_logger = logging.getLogger("workspace_lifecycle.clock")

#: Expiry warnings this replica wrote (see :func:`log_warning`).
deadline_logger = logging.getLogger("workspace_lifecycle.deadlines")
deadline_logger.addHandler(logging.NullHandler())

try:  # pragma: no cover - depends on the environment
    from opentelemetry import trace as _otel_trace

    _tracer: Any = _otel_trace.get_tracer("workspace_lifecycle")
except ImportError:  # pragma: no cover - depends on the environment
    _tracer = None

#: The open request spans of each chat: a state change visits only its own chat's requests, so
#: its cost does not grow with the number of requests waiting on other chats.
_spans: dict[str, set[RequestSpan]] = {}


def log_change(change: StateChange, now: float) -> None:
    """Log one state change (and add it to every open request span of its chat)."""
    latency = max(0.0, now - change.at) if change.at else None
    mono = time.monotonic()
    waiting = list(_spans.get(change.chat_id, ()))
    elapsed = mono - min(span.started for span in waiting) if waiting else None
    if transition_logger.isEnabledFor(logging.INFO):
        transition_logger.info(
            "%s: %s -> %s (%s, build %d, %s)",
            change.chat_id,
            change.from_state.value,
            change.to_state.value,
            change.event.value if change.event else "resync",
            change.build_number,
            change.reason.value if change.reason else "no build",
            extra={
                "chat": change.chat_id,
                "workspace": change.workspace_id,
                "build": change.build_number,
                "from": change.from_state.value,
                "to": change.to_state.value,
                "event": change.event.value if change.event else "resync",
                "reason": change.reason.value if change.reason else None,
                "latency": latency,
                "elapsed": elapsed,
            },
        )
    for span in waiting:
        span.transition(change, latency, mono - span.started)


def log_warning(chat_id: str, workspace_id: str, deadline: Deadline, now: float) -> None:
    """One expiry warning this replica wrote (see the module docstring)."""
    left = max(0.0, deadline.at - now)
    attributes: dict[str, Any] = {
        "chat": chat_id,
        "workspace": workspace_id,
        "reason": deadline.reason.value,
        "deadline": deadline.at,
        "warn_at": deadline.warn_at,
        "left": left,
    }
    if deadline_logger.isEnabledFor(logging.INFO):
        deadline_logger.info(
            "%s: %s in %.0f s (deadline_approaching)",
            chat_id,
            "idle stop" if deadline.reason.value == "idle" else "retention delete",
            left,
            extra=attributes,
        )
    for span in list(_spans.get(chat_id, ())):
        if span._span is not None:  # pragma: no cover - depends on the environment
            span._span.add_event(
                "deadline_approaching", {k: v for k, v in attributes.items() if v is not None}
            )


def report_skew(measured: ClockSkew, *, bound: float) -> None:
    """A skew against the store's clock above ``bound`` seconds: one ``WARNING`` record on the
    ``workspace_lifecycle.clock`` logger, with the attributes ``skew`` (the store's clock minus
    this replica's, seconds), ``uncertainty`` (half the round trip) and ``bound``; and, with
    OpenTelemetry, a ``workspace_lifecycle.clock_skew`` span carrying the same attributes."""
    clock_logger.warning(
        "this replica's clock is %.3fs %s the store's (within %.3fs; above the %.3gs that leases "
        "and deadlines are meant to tolerate: sync the hosts' clocks)",
        abs(measured.offset),
        "behind" if measured.offset > 0 else "ahead of",
        measured.uncertainty,
        bound,
        extra={"skew": measured.offset, "uncertainty": measured.uncertainty, "bound": bound},
    )
    if _tracer is not None:  # pragma: no cover - depends on the environment
        span = _tracer.start_span(
            "workspace_lifecycle.clock_skew",
            attributes={"skew": measured.offset, "uncertainty": measured.uncertainty, "bound": bound},
        )
        span.end()


class RequestSpan:
    """One tool request, as an OpenTelemetry span when the API is installed (else a no-op)."""

    def __init__(self, request: str, chat_id: str) -> None:
        self.request = request
        self.chat_id = chat_id
        self.started = time.monotonic()
        self._cm: Any = None
        self._span: Any = None

    @classmethod
    def none(cls) -> RequestSpan:
        return cls("deferred", "")

    def __enter__(self) -> RequestSpan:
        self.started = time.monotonic()
        if self.chat_id:
            _spans.setdefault(self.chat_id, set()).add(self)  # also without OpenTelemetry: for ``elapsed``
            if _tracer is not None:
                # The API without an SDK hands out non-recording spans: then skip making it the
                # current span (a generator, a context and a token per request, for nothing).
                span = _tracer.start_span(f"workspace_lifecycle.{self.request}")
                if span.is_recording():
                    self._cm = _otel_trace.use_span(span, end_on_exit=True)
                    self._span = self._cm.__enter__()
                    self._span.set_attribute("chat", self.chat_id)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        spans = _spans.get(self.chat_id)
        if spans is not None:
            spans.discard(self)
            if not spans:
                del _spans[self.chat_id]
        if self._cm is not None:
            self._cm.__exit__(exc_type, exc, tb)

    def decision(self, decision: str, state: str) -> None:
        if self._span is not None:
            self._span.add_event("decision", {"decision": decision, "state": state})

    def fired(self, build_id: str) -> None:
        if self._span is not None:
            self._span.set_attribute("build_id", build_id)

    def claimed(self, workspace_id: str) -> None:
        """The create took a ready workspace of a warm pool."""
        if self._span is not None:
            self._span.set_attribute("pooled_workspace", workspace_id)

    def transition(self, change: StateChange, latency: float | None, elapsed: float) -> None:
        if self._span is not None:
            attributes: dict[str, Any] = {
                "from": change.from_state.value,
                "to": change.to_state.value,
                "workspace": change.workspace_id,
                "build": change.build_number,
                "event": change.event.value if change.event else "resync",
                "elapsed": elapsed,
            }
            if change.reason is not None:
                attributes["reason"] = change.reason.value
            if latency is not None:
                attributes["latency"] = latency
            self._span.add_event("transition", attributes)

    def result(self, result: ToolResult) -> None:
        if self._span is not None:
            self._span.set_attribute("is_error", result.is_error)
