"""What a restarted provisioner does with a workspace process it finds: adopt it, end it, or
report that it ended. Pure.

Theory of operation
-------------------
A provisioner that runs workspaces as processes keeps, in each workspace's directory, the
process it started there: its pid, the build that started it and that build's lease token. A
provisioner started on the same root (after a crash, a deploy) finds those records, asks the
system whether each process still runs, and reads the workspace's rows from the store. This
module decides from those facts alone, so the rule is in one place and tested over every
combination; the provisioner gathers the facts and executes the answer.

* A process that **ended** while no provisioner watched is recorded as ended. If it was the
  workspace's current process (its start build is the latest, succeeded, the workspace is not
  deleted) and its agent was ``ready`` (or ``disconnected``: ready once, then deaf) or still on
  its way, the agent is reported: ``off`` for one that was ready, ``start_error`` for one that
  never got there.
* A process that **still runs** is adopted (watched until it ends). It is ended at once when the
  store says nothing should run there: the workspace is deleted, or its latest build is neither
  the one that started it (succeeded) nor a newer one still in flight (a stop or start the
  provisioner will claim). Otherwise, if its agent is not ready (not yet, or no longer), the
  probe resumes; once ready, its readiness is followed (``disconnected`` when it stops answering).
* **Leftovers**: processes that carry the workspace's marker (see ``_containment``) but are not
  the running recorded process or its build's (a daemon of a process that died, of an older
  build, of a workspace whose end was already recorded) are ended, whatever the store says:
  a workspace's processes never outlive the process that started them. A process whose end
  was already recorded (``recorded=False``) is never reported again.

Reports carry the lease token of the build that started the process, recorded with it; a record
written before leases existed falls back to the token of that build as stored.

Rules for this module: no I/O, no awaits, no clocks, no anyio.
"""

from __future__ import annotations

import enum

import attrs

from .values import AgentLifecycle, JobStatus, WorkspaceFacts

__all__ = ["Adopt", "Afterwards", "Ended", "Found", "reconcile"]


@attrs.frozen
class Found:
    """What the provisioner found of one workspace's process on this host."""

    #: The process recorded for the workspace still runs (the same process, not a reused pid).
    alive: bool
    #: The number of the build that started it, as recorded.
    build_number: int
    #: The lease token of that build, as recorded (``None`` in a record older than leases).
    lease: str | None = None
    #: Processes of the workspace run that are not the recorded process's own: descendants of
    #: a process that ended, or of an older build's.
    leftovers: bool = False
    #: The process's end is not recorded yet (False: it was seen to end, or never recorded):
    #: only such an end is reported.
    recorded: bool = True


class Afterwards(enum.Enum):
    """What to do with an adopted process once it is watched."""

    WATCH = "watch"  # its end is what to report (and, if ready, whether it stops answering)
    PROBE = "probe"  # its agent is not ready yet: probe it until it is
    END = "end"  # the store says nothing should run here: end it


@attrs.frozen
class Adopt:
    """Watch the running process; report its agent with ``lease``; then ``afterwards``."""

    lease: str | None
    #: Its agent was known ready (``ready`` or ``disconnected``: a later end is reported
    #: ``off``, not ``start_error``).
    ready: bool
    afterwards: Afterwards
    #: End the processes of the workspace's older builds (its leftovers).
    end_leftovers: bool = False


@attrs.frozen
class Ended:
    """Record the process as ended; if ``report`` is set, report the agent so, with ``lease``;
    if ``end_leftovers``, end every process left of the workspace."""

    report: AgentLifecycle | None = None
    lease: str | None = None
    end_leftovers: bool = False


def reconcile(facts: WorkspaceFacts | None, found: Found) -> Adopt | Ended:
    """The decision for a process ``found`` on the host, given its workspace's stored ``facts``
    (``None``: the store does not know the workspace, so nothing of it may run).

    >>> from workspace_lifecycle.values import Agent, Build, Transition, Workspace
    >>> ws = Workspace("w1", "c1", "alice", "dev")
    >>> b1 = Build("b1", "w1", 1, Transition.START, JobStatus.SUCCEEDED, lease_token="t1")
    >>> ready = Agent("w1", 1, AgentLifecycle.READY)
    >>> reconcile(WorkspaceFacts(ws, b1, ready, seq=4), Found(alive=False, build_number=1))
    Ended(report=<AgentLifecycle.OFF: 'off'>, lease='t1', end_leftovers=False)
    >>> reconcile(WorkspaceFacts(ws, b1, ready, seq=4), Found(alive=True, build_number=1, lease="t1"))
    Adopt(lease='t1', ready=True, afterwards=<Afterwards.WATCH: 'watch'>, end_leftovers=False)
    >>> reconcile(WorkspaceFacts(ws, b1, ready, seq=4), Found(alive=False, build_number=1, leftovers=True))
    Ended(report=<AgentLifecycle.OFF: 'off'>, lease='t1', end_leftovers=True)
    """
    if facts is None:
        if found.alive:
            return Adopt(found.lease, False, Afterwards.END, end_leftovers=found.leftovers)
        return Ended(end_leftovers=found.leftovers)
    build = facts.latest_build
    agent = facts.agent
    # The agent in the store is this process's (made by the build that started it).
    ours = agent is not None and agent.build_number == found.build_number
    # This process is the workspace's current one: its start build is the latest and succeeded.
    current = (
        build is not None
        and build.number == found.build_number
        and build.status is JobStatus.SUCCEEDED
        and not facts.workspace.deleted
    )
    if not found.alive:
        # Its leftovers end with it: a dead process's daemons are a dead workspace's.
        end = found.leftovers
        if found.recorded and current and ours and agent is not None:
            if agent.lifecycle.was_ready:
                return Ended(AgentLifecycle.OFF, build.lease_token if build else None, end)
            if agent.lifecycle.pending:
                return Ended(AgentLifecycle.START_ERROR, build.lease_token if build else None, end)
        return Ended(end_leftovers=end)
    lease = found.lease
    if lease is None and build is not None and build.number == found.build_number:
        lease = build.lease_token  # a record written before leases
    ready = ours and agent is not None and agent.lifecycle.was_ready
    answering = ready and agent is not None and agent.lifecycle is AgentLifecycle.READY
    newer_in_flight = build is not None and build.status.in_progress and build.number > found.build_number
    if facts.workspace.deleted or (not current and not newer_in_flight):
        afterwards = Afterwards.END
    elif not answering and ours:
        afterwards = Afterwards.PROBE
    else:
        afterwards = Afterwards.WATCH
    # Older builds' processes never share the workspace with the running one.
    return Adopt(lease, ready, afterwards, end_leftovers=found.leftovers)
