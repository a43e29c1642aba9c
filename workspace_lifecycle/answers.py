"""The answers of the workspace tools, with Coder's JSON keys and sentences. Pure functions.

The runtime decides *what* happened; this module says it the way Coder's chat tools do, so a
model prompted for Coder sees the same answers from us.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .deadlines import in_words
from .values import AgentLifecycle, Deadline, JobStatus, ToolResult, Workspace, WorkspaceState

__all__ = [
    "CHAT_NOT_FOUND",
    "NO_WORKSPACE",
    "WORKSPACE_DELETED",
    "WORKSPACE_REPLACED",
    "agent_fields",
    "build_failed",
    "build_failure_reason",
    "create_existing",
    "done",
    "not_waiting",
    "quota_exceeded",
    "pool_empty",
    "timed_out",
    "with_deadline",
]

#: The ``error_code`` of an answer refused for an owner's limits, as Coder's quota failures.
INSUFFICIENT_QUOTA = "INSUFFICIENT_QUOTA"

NO_WORKSPACE = "chat has no workspace; use create_workspace first"
WORKSPACE_DELETED = "workspace was deleted; use create_workspace to make a new one"
CHAT_NOT_FOUND = "chat not found; the chat runtime must register it first"
WORKSPACE_REPLACED = "the chat's workspace was replaced while this request waited; ask again"

#: Keys each request answers a success with (``started: true`` ...).
DONE_KEY = {"start": "started", "stop": "stopped", "delete": "deleted", "create": "created"}


def agent_fields(
    *, has_agent: bool | None, lifecycle: AgentLifecycle | None, timed_out: bool
) -> dict[str, Any]:
    """Coder's agent fields: nothing when ready, else what went wrong.

    >>> agent_fields(has_agent=False, lifecycle=None, timed_out=False)
    {'agent_status': 'no_agent'}
    >>> agent_fields(has_agent=True, lifecycle=AgentLifecycle.START_ERROR, timed_out=False)
    {'startup_scripts': 'startup_scripts_failed', 'lifecycle_state': 'start_error'}
    >>> agent_fields(has_agent=True, lifecycle=AgentLifecycle.DISCONNECTED, timed_out=False)
    {'agent_status': 'not_ready', 'lifecycle_state': 'disconnected'}
    """
    if not has_agent or lifecycle is None:
        return {"agent_status": "no_agent"}
    if lifecycle is AgentLifecycle.READY:
        return {}
    if lifecycle is AgentLifecycle.DISCONNECTED:  # it was ready and stopped answering: not ready now
        return {"agent_status": "not_ready", "lifecycle_state": lifecycle.value}
    if lifecycle.pending:
        if timed_out:
            return {"startup_scripts": "startup_scripts_timeout"}
        return {"agent_status": "not_ready", "lifecycle_state": lifecycle.value}
    return {"startup_scripts": "startup_scripts_failed", "lifecycle_state": lifecycle.value}


def build_failure_reason(status: JobStatus | None, error: str | None) -> str:
    """The reason Coder's ``waitForBuild`` gives for a build that did not succeed."""
    if status is JobStatus.CANCELED:
        return "build was canceled"
    return error or "build failed"


def done(
    request: str,
    workspace: Workspace,
    *,
    build_id: str | None,
    agent: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> ToolResult:
    """``{"started": true, "workspace_name": ..., "build_id" | "no_build": ...}``.

    ``extra`` adds keys of this library's own (``superseded_by``) after Coder's.
    """
    name = workspace.full_name if request == "create" else workspace.name
    data: dict[str, Any] = {DONE_KEY[request]: True, "workspace_name": name}
    if build_id is None:
        data["no_build"] = True
    else:
        data["build_id"] = build_id
    data.update(agent or {})
    data.update(extra or {})
    return ToolResult.ok(data)


def build_failed(
    prefix: str,
    reason: str,
    build_id: str | None,
    extra: dict[str, Any] | None = None,
    *,
    details: Mapping[str, Any] | None = None,
) -> ToolResult:
    """Coder answers a failed build with ``is_error`` false and the sentence under ``error``.

    ``details`` are what the provisioner attached (validations, quota, next steps): merged
    beside ``error`` and ``build_id``, never over the library's own keys.

    >>> build_failed("workspace start build failed", "quota", "b1", details={"error": "x", "budget": 5}).data
    {'error': 'workspace start build failed: quota', 'build_id': 'b1', 'budget': 5}
    """
    data: dict[str, Any] = {"error": f"{prefix}: {reason}"}
    if build_id is not None:
        data["build_id"] = build_id
    data.update(extra or {})
    for key, value in (details or {}).items():
        data.setdefault(key, value)
    return ToolResult.ok(data)


#: What a build still in progress is doing, by its stored job status, for a wait that ran out.
_STILL = {
    JobStatus.PENDING: "no provisioner has claimed it",
    JobStatus.RUNNING: "the provisioner is still working on it",
    JobStatus.CANCELING: "the provisioner is canceling it",
}


def timed_out(
    request: str, *, own: bool, build_id: str | None, status: JobStatus | None, seconds: float | None = None
) -> ToolResult:
    """A wait for a build ran out while the build is still in progress: say what is true, that
    it timed out and what the build is doing now (its stored status), never that it failed.
    ``is_error`` stays false, as for every answer about a build.

    >>> timed_out("start", own=True, build_id="b1", status=JobStatus.PENDING).data["message"]
    'timed out waiting for the workspace start build; it is still pending: no provisioner has claimed it. It may still finish: ask workspace_status later'
    """
    status = status if status is not None and status.in_progress else JobStatus.PENDING
    what = f"the workspace {request} build" if own else "the in-progress workspace build"
    after = "" if seconds is None else f" after {seconds:g} s"
    message = (
        f"timed out{after} waiting for {what}; it is still {status.value}: {_STILL[status]}."
        " It may still finish: ask workspace_status later"
    )
    data: dict[str, Any] = {"timed_out": True, "build_status": status.value, "message": message}
    if build_id is not None:
        data["build_id"] = build_id
    return ToolResult.ok(data)


def not_waiting(
    workspace: Workspace,
    state: WorkspaceState,
    *,
    build_id: str | None,
    request: str,
    created: bool = False,
) -> ToolResult:
    """The answer of ``wait=False``: the request is decided, ``status`` is the state now.

    ``workspace_name`` follows the request's own answer: ``owner/name`` when this call
    ``created`` the workspace (as Coder's create_workspace), the bare name otherwise.
    """
    name = workspace.full_name if created else workspace.name
    data: dict[str, Any] = {"workspace_name": name, "status": state.value, "request": request}
    if build_id is None:
        data["no_build"] = True
    else:
        data["build_id"] = build_id
    return ToolResult.ok(data)


def create_existing(
    workspace: Workspace, state: WorkspaceState, *, build_id: str | None, agent: dict[str, Any]
) -> ToolResult:
    """``create_workspace`` when the chat already has a live workspace (Coder's answers)."""
    data: dict[str, Any] = {"created": False, "workspace_name": workspace.name}
    if state is WorkspaceState.STOPPED:
        data.update(status="stopped", message="workspace is stopped; use start_workspace to start it")
        return ToolResult.ok(data)
    data["status"] = "already_exists"
    if build_id is not None:
        data.update(message="workspace build completed", build_id=build_id)
    else:
        data["message"] = "workspace is already running and recently connected"
    data.update(agent)
    return ToolResult.ok(data)


def quota_exceeded(request: str, *, limit: str, used: int, allowed: int) -> ToolResult:
    """A create or start refused because the owner is at a limit, in the shape of Coder's quota
    failure: ``error``, ``error_code: "INSUFFICIENT_QUOTA"``, ``title``, ``message``,
    ``next_steps`` and ``quota`` (the ``limit`` hit, what is ``used``, what is ``allowed``).
    ``is_error`` stays false, as Coder answers a quota failure (and every failed build): the
    model is meant to read it and act (``next_steps``). No build was fired (``no_build``).

    >>> r = quota_exceeded("start", limit="running", used=2, allowed=2)
    >>> r.is_error, r.data["error_code"], r.data["quota"]
    (False, 'INSUFFICIENT_QUOTA', {'limit': 'running', 'used': 2, 'allowed': 2})
    """
    if limit == "running":
        what = "running workspaces"
        steps = [
            "Stop another of your running workspaces (stop_workspace in its chat), then retry.",
            "Or ask an administrator to raise your limit of running workspaces.",
        ]
    else:
        what = "workspaces"
        steps = [
            "Delete another of your workspaces (delete_workspace in its chat), then retry.",
            "Or ask an administrator to raise your limit of workspaces.",
        ]
    message = f"You have {used} {what} of the {allowed} allowed; this {request} would need one more."
    data: dict[str, Any] = {
        "error": f"workspace {request} refused: insufficient quota ({used} {what} of {allowed} allowed)",
        "error_code": INSUFFICIENT_QUOTA,
        "title": "Workspace quota exceeded",
        "message": message,
        "next_steps": steps,
        "quota": {"limit": limit, "used": used, "allowed": allowed},
        "request": request,
        "no_build": True,
    }
    return ToolResult.ok(data)


def with_deadline(result: ToolResult, deadline: Deadline | None, now: float) -> ToolResult:
    """``result`` with the workspace's next automatic action in words (``next_deadline``), so a
    model can keep the workspace with a touch; an error (a tool error, or an answer that carries
    an ``error`` as Coder's failed builds and quota refusals do), or nothing armed, is left as it is.

    >>> from workspace_lifecycle.values import Reason
    >>> with_deadline(ToolResult.ok({"status": "running"}), Deadline(1120.0, Reason.IDLE), 1000.0).text
    '{"next_deadline": "idle stop in 2 min", "status": "running"}'
    """
    words = in_words(deadline, now)
    if result.is_error or "error" in result.data or words is None:
        return result
    return ToolResult.ok({**result.data, "next_deadline": words})


def pool_empty(pool: str) -> str:
    """The sentence of a create that named a warm pool with no ready workspace in it.

    >>> pool_empty("default")
    "warm pool 'default' had no ready workspace, so this one was built for this chat (a cold create)"
    """
    return f"warm pool {pool!r} had no ready workspace, so this one was built for this chat (a cold create)"
