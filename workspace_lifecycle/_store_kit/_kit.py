"""The runner of the store conformance kit, the registry of its checks and their small helpers.

A check is an ``async def`` over a :class:`Ctx` (a fresh store from the user's factory, the
:class:`~workspace_lifecycle.clock.VirtualClock` that store stamps its times with, and the
factory itself for checks that need a second store). It states its expectations with
:func:`require` and :func:`refused` (not ``assert``: they must hold under ``python -O`` too);
the runner turns a failure into a :class:`StoreCheckError` that names the check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
import attrs

from ..adapters.base import Outcome, Store
from ..clock import VirtualClock
from ..values import Build, JobStatus

#: ``factory(clock)``: an async context manager that opens a *fresh, empty* store whose times
#: (events, leases, deadlines) come from ``clock``, and closes it (and drops what it made) on
#: exit. Called once per check, and a second time by the checks that need two stores.
ClockedStoreFactory = Callable[[VirtualClock], AbstractAsyncContextManager[Store]]

#: The time the kit's clocks start at (a fixed, recent-looking Unix time).
T0 = 2_000_000_000.0
#: The lease the kit's claims take (store time).
LEASE = 30.0

E = TypeVar("E", bound=BaseException)


class StoreCheckError(AssertionError):
    """A store broke a rule every store keeps. ``check`` is the failed check's name; the message
    says what the rule is and what the store did instead."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"store check {check!r} failed: {message}")
        self.check = check


@attrs.frozen
class StoreReport:
    """What :func:`check_store` ran: the checks' names, in order, and how long they took."""

    checks: tuple[str, ...]
    seconds: float


@attrs.define
class Ctx:
    """What a check gets: ``store`` (open, fresh, empty), the ``clock`` it runs on, and
    ``factory`` for a second store of the same kind."""

    store: Store
    clock: VirtualClock
    factory: ClockedStoreFactory


Check = Callable[[Ctx], Awaitable[None]]

#: Every check, by name, in the order they run (the check modules register themselves).
CHECKS: dict[str, Check] = {}


def check(fn: Check) -> Check:
    """Register ``fn`` under its name; its docstring's first line is the rule it checks."""
    CHECKS[fn.__name__] = fn
    return fn


class _Broken(Exception):
    """A rule broken inside a check (what :func:`require` raises)."""


def require(condition: object, what: str) -> None:
    """``what`` must hold; otherwise the check fails with ``what`` as the reason."""
    if not condition:
        raise _Broken(what)


async def refused(error: type[E], call: Awaitable[Any], what: str) -> E:
    """``call`` must raise ``error`` (and not something else, nor succeed); returns it."""
    try:
        await call
    except error as exc:
        return exc
    except Exception as exc:
        raise _Broken(f"{what}: expected {error.__name__}, got {type(exc).__name__}: {exc}") from exc
    raise _Broken(f"{what}: expected {error.__name__}, the call succeeded")


async def check_store(
    factory: ClockedStoreFactory, *, only: Collection[str] | None = None, check_timeout: float = 30.0
) -> StoreReport:
    """Run the store conformance checks against the stores ``factory`` opens; raise
    :class:`StoreCheckError` naming the first check that fails.

    Each check opens a fresh store with ``factory(clock)`` (``clock`` a
    :class:`~workspace_lifecycle.VirtualClock` the store must stamp every time with), uses it,
    and closes it. ``only`` runs the named checks alone (see ``CHECKS`` for the names);
    ``check_timeout`` bounds each check in seconds. Typical use, in a pytest test::

        async def test_my_store_conforms(tmp_path):
            await check_store(lambda clock: MyStore(tmp_path / f"{uuid.uuid4().hex}.db", clock=clock))

    What the checks cover: chats (registration, owners, exact strings), ``create_workspace``
    and ``request_build`` as compare-and-sets that fire exactly once among concurrent callers,
    the provisioner side (claims handed out once and oldest first, finishes and their effects,
    conflicts, unknown values refused), the event log (order, paging, events of each write,
    ``wait_for_change`` waking on a commit, pruning and expired cursors), deadlines (armed by a
    build's end, pushed by ``touch``, fired once and never early), leases with fencing (tokens,
    renewal, expiry once, a lost or wrong token refused with nothing changed) and a closed store
    raising :class:`~workspace_lifecycle.errors.StoreClosedError`.
    """
    unknown = sorted(set(only or ()) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown store checks: {', '.join(unknown)}; the checks are: {', '.join(CHECKS)}")
    names = tuple(name for name in CHECKS if only is None or name in only)
    started = anyio.current_time()
    for name in names:
        await _run(name, CHECKS[name], factory, check_timeout)
    return StoreReport(names, anyio.current_time() - started)


async def _run(name: str, fn: Check, factory: ClockedStoreFactory, limit: float) -> None:
    rule = (fn.__doc__ or name).strip().splitlines()[0]
    clock = VirtualClock(start=T0)
    try:
        with anyio.fail_after(limit):
            async with factory(clock) as store:
                await fn(Ctx(store, clock, factory))
    except _Broken as exc:
        raise StoreCheckError(name, f"{rule} ({exc})") from None
    except TimeoutError:
        raise StoreCheckError(name, f"{rule} (did not finish within {limit:g} s)") from None
    except Exception as exc:
        raise StoreCheckError(name, f"{rule} (raised {type(exc).__name__}: {exc})") from exc


# --- helpers the checks share -------------------------------------------------------------------


async def make_workspace(store: Store, chat: str = "c1", owner: str = "alice") -> Outcome:
    """Register ``chat`` and create its workspace (start build 1, pending)."""
    await store.register_chat(chat, owner)
    outcome = await store.create_workspace(chat, "dev", expected_workspace_id=None)
    require(outcome.fired and outcome.build is not None, "create_workspace on a new chat fires build 1")
    return outcome


async def finish_latest(
    store: Store, status: JobStatus = JobStatus.SUCCEEDED, *, has_agent: bool = True, error: str | None = None
) -> Build:
    """Claim the oldest pending build and finish it with ``status``."""
    build = await store.claim_build("w")
    require(build is not None, "a pending build is there to claim")
    assert build is not None
    return await store.finish_build(build.build_id, status, error, has_agent=has_agent)


async def claimed(store: Store, chat: str = "c1") -> Build:
    """A chat whose start build is claimed by worker ``w`` under a lease of ``LEASE``."""
    await store.register_chat(chat, "alice")
    await store.create_workspace(chat, "dev", expected_workspace_id=None)
    build = await store.claim_build("w", lease_seconds=LEASE)
    require(build is not None and build.lease_token, "a claim returns the build with a lease token")
    assert build is not None
    return build
