"""The testing kit: Hypothesis strategies for histories, and a stateful test over any store.

Install the ``test`` extra (it brings Hypothesis). Four tools:

* :func:`histories` draws sequences of store operations (create, request start/stop/delete,
  claim, finish with succeeded/failed/canceled, agent reports); :func:`run_history` plays one
  against a store.
* :func:`deliveries` draws a perturbed delivery of an event list (repeats and reorders), and
  :func:`applied_states` feeds one to a fresh :class:`~workspace_lifecycle.machine.Tracker` per
  workspace: SPEC's property is that the result equals :func:`~workspace_lifecycle.machine.derive_state` over the rows.
* :func:`make_lifecycle_machine` builds a ``RuleBasedStateMachine`` that drives a
  :class:`~workspace_lifecycle.runtime.Lifecycle` over *your* store (any async context manager
  factory), optionally with your provisioner, and checks SPEC's invariants after every step.
* :func:`check_provisioner` checks *your* provisioner against the provisioner protocol (claims
  once, finishes and reports with its lease token, renews its lease while it works, gives up on
  a build whose lease it lost, honours stop and delete); its docstring shows a pytest test.
* :func:`check_store` checks *your* store against the rules every store keeps (compare-and-sets
  that fire once, the event log, waking, leases, deadlines); raises :class:`StoreCheckError`.

Hypothesis' stateful tests are synchronous; the machine runs the store, the runtime and the
provisioner on an event loop of their own behind an ``anyio.from_thread`` blocking portal, so
any store works, on asyncio or trio.

Example (a pytest module)::

    import workspace_lifecycle as wl
    from workspace_lifecycle.testing import make_lifecycle_machine

    MemoryLifecycle = make_lifecycle_machine(lambda: wl.open_store("memory://"))
    TestMemoryLifecycle = MemoryLifecycle.TestCase

    # with your own provisioner (any ``store -> async context manager``):
    Simulated = make_lifecycle_machine(
        lambda: wl.open_store("memory://"),
        provisioner=lambda store: wl.SimulatedProvisioner(store, fail=0.3, seed=1),
    )
    TestSimulated = Simulated.TestCase

The store factory of :func:`make_lifecycle_machine` must return a *fresh, empty* store on every call (one per example), e.g.
``lambda: wl.open_store(f"sqlite:///{tmp}/{uuid.uuid4().hex}.db")``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._lifecycle_kit.base import MachineBase, ProvisionerFactory, StoreFactory
from ._lifecycle_kit.histories import (
    DEFAULT_CHATS,
    Claim,
    Create,
    Finish,
    HistoryOp,
    Report,
    RequestBuild,
    applied_states,
    deliveries,
    histories,
    history_ops,
    run_history,
)
from ._lifecycle_kit.histories import (
    OWNER as OWNER,  # kept importable from here, as before the split
)
from ._lifecycle_kit.holds import HoldRules
from ._lifecycle_kit.invariants import Invariants
from ._lifecycle_kit.provisioning import ProvisionerRules
from ._lifecycle_kit.requests import RequestRules
from ._lifecycle_kit.warm_pools import PoolRules
from ._provisioner_kit import (
    LeasedProvisionerFactory,
    ProvisionerCheckError,
    ProvisionerReport,
    check_provisioner,
)
from ._store_kit import ClockedStoreFactory, StoreCheckError, StoreReport, check_store
from .values import ToolResult

__all__ = [
    "Claim",
    "LeasedProvisionerFactory",
    "ProvisionerCheckError",
    "ProvisionerReport",
    "check_provisioner",
    "ClockedStoreFactory",
    "StoreCheckError",
    "StoreReport",
    "check_store",
    "Create",
    "Finish",
    "HistoryOp",
    "LifecycleMachine",
    "Report",
    "RequestBuild",
    "applied_states",
    "deliveries",
    "histories",
    "history_ops",
    "make_lifecycle_machine",
    "run_history",
]


class LifecycleMachine(Invariants, PoolRules, ProvisionerRules, RequestRules, MachineBase, HoldRules):
    """Drives a :class:`~workspace_lifecycle.runtime.Lifecycle` over a store and checks SPEC's
    invariants after every step.

    Do not subclass directly; :func:`make_lifecycle_machine` makes a configured subclass.
    Invariants:

    * for every workspace, :func:`~workspace_lifecycle.machine.derive_state` over its rows
      equals the state reached by applying the store's events, in order, to a
      :class:`~workspace_lifecycle.machine.Tracker`; re-delivering an applied event changes
      nothing;
    * at most one build per workspace is in flight (queued and not finished);
    * every start request from ``stopped``/``failed`` fires exactly one start build, and every
      concurrent caller is answered with that build's id; other requests fire at most one
      build of their kind;
    * requests are answered as SPEC's table says (error sentences, ``status`` with
      ``wait=False``, ``started``/``build_id``/``no_build`` with ``wait=True``);
    * no accepted request is dropped: a ``wait=False`` request deferred behind another build
      (the latest one wins: a later request of another kind replaces it, one joining the build
      in flight withdraws it) fires in the very write that finishes that build, when the table
      allows it then, even after the runtime that accepted it was dropped (``restart_runtime``).
    * warm pools (a pool of :attr:`pool_size`, filled and built by rules of their own, claimed
      by ``create_workspace(..., pool=...)``): a create claims a member when one is ready and
      says ``pooled: true``, else builds and says ``pooled: false`` with a sentence; a claimed
      workspace belongs to the claiming chat for good; no workspace is two chats', no member
      is a chat's, and the pool never holds more than its size ready or on their way.
    * on a virtual clock (``clocked``), with turns holding workspaces and time passing: no idle
      stop fires while a hold is live, nor within ``idle_stop_after`` of its end (its release,
      or its lapse when its holder died)
      (:class:`~workspace_lifecycle._lifecycle_kit.holds.HoldRules`).

    The rules and invariants are mixins, one concern each
    (:mod:`workspace_lifecycle._lifecycle_kit`).
    """


def make_lifecycle_machine(
    store_factory: StoreFactory,
    *,
    provisioner: ProvisionerFactory | None = None,
    backend: str = "asyncio",
    chats: Sequence[str] = DEFAULT_CHATS,
    agent_timeout: float = 1.0,
    build_timeout: float = 10.0,
    name: str = "LifecycleStateMachine",
    clocked: bool = False,
) -> type[LifecycleMachine]:
    """A :class:`LifecycleMachine` over the stores ``store_factory()`` opens.

    ``store_factory`` returns an async context manager that yields a fresh, empty store (one
    per example). Without ``provisioner`` the machine plays the provisioner itself (claims,
    finishes with succeeded/failed/canceled, agent reports) and requests use ``wait=False``, so
    every answer is checked exactly. With ``provisioner`` (``store -> async context manager``,
    e.g. ``lambda s: wl.SimulatedProvisioner(s)``) your provisioner completes the builds and
    requests use ``wait=True``. ``backend`` is the anyio backend of the store's event loop.
    With ``clocked``, ``store_factory(clock)`` gets the
    :class:`~workspace_lifecycle.clock.VirtualClock` the store must stamp its times with: the
    chats stop after idleness, and turn holds, their ends and time passing join the rules (with
    the invariant that no idle stop fires past a hold).

    >>> import workspace_lifecycle as wl
    >>> Machine = make_lifecycle_machine(lambda: wl.open_store("memory://"))
    >>> Machine.TestCase.settings = Machine.TestCase.settings.__class__(max_examples=2, stateful_step_count=5)
    >>> Machine.TestCase().runTest()
    """
    if not chats:
        raise ValueError("make_lifecycle_machine needs at least one chat id")
    attributes: dict[str, Any] = {
        "store_factory": staticmethod(store_factory),
        "provisioner_factory": staticmethod(provisioner) if provisioner is not None else None,
        "backend": backend,
        "chats": tuple(chats),
        "agent_timeout": agent_timeout,
        "build_timeout": build_timeout,
        "clocked": clocked,
    }
    return type(name, (LifecycleMachine,), attributes)


def _dump(result: ToolResult) -> str:  # pragma: no cover - a debugging aid
    return json.dumps({"is_error": result.is_error, "data": result.data}, sort_keys=True)
