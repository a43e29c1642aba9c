"""Recovering builds whose provisioner died: the provisioner side's hung-build reaper.

A provisioner that is killed after :meth:`~workspace_lifecycle.adapters.base.Store.claim_build`
leaves its build ``running`` for ever: no other worker may claim it, the workspace stays
``building``, every caller waiting on it waits until its ``build_timeout``, and no new build can
be requested (the compare-and-set needs the latest build finished). Coder answers this with a
periodic job that fails provisioner jobs not updated for a while; :class:`BuildReaper` is that
job for any store, using only the store calls every provisioner makes.

A build is reaped (finished ``failed`` with a sentence naming its worker) when

* ``worker_alive(worker)`` says its worker is gone (at the next scan), or
* it has been in flight, as seen by this reaper, for ``stale_after`` seconds. Builds carry no
  heartbeat, so ``stale_after`` must exceed your longest build; a restarted reaper starts its
  clocks again, so it never reaps early.

The workspace then reads ``failed``: waiting callers get ``workspace start build failed: ...``,
and a retried ``start_workspace`` fires exactly one new build. A worker that was only slow and
finishes after the reaper meets :class:`~workspace_lifecycle.errors.BuildConflictError`, which
:class:`~workspace_lifecycle.provisioner.SimulatedProvisioner` already ignores.

Each scan reads every chat (:meth:`Store.list_chats`), so run one reaper per deployment (or a
few), every ``interval`` seconds, next to the provisioners::

    async with wl.open_store(url) as store:
        async with BuildReaper(store, worker_alive=local_worker_alive, interval=5.0):
            async with wl.SimulatedProvisioner(store, worker=local_worker_name()):
                ...

:func:`local_worker_name` and :func:`local_worker_alive` name workers ``host:pid`` so that a
reaper on the same host can tell a dead process at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from ._service import BackgroundService
from .adapters.base import Store
from .clock import Clock, as_clock
from .errors import BuildConflictError, CorruptStateError, NotFoundError, StoreClosedError, StoreError
from .values import Build, JobStatus

__all__ = ["BuildReaper", "local_worker_alive", "local_worker_name"]

log = logging.getLogger("workspace_lifecycle.reaper")


def local_worker_name(prefix: str = "worker") -> str:
    """``prefix:host:pid`` for this process, which :func:`local_worker_alive` can check."""
    return f"{prefix}:{socket.gethostname()}:{os.getpid()}"


def local_worker_alive(worker: str) -> bool:
    """False only for a :func:`local_worker_name` of this host whose process is gone.

    >>> local_worker_alive(local_worker_name())
    True
    >>> local_worker_alive("someone-else")
    True
    """
    parts = worker.rsplit(":", 2)
    if len(parts) != 3 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return True  # not ours to judge: only stale_after applies
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BuildReaper(BackgroundService):
    """Fails in-flight builds whose worker died (``worker_alive``) or that outlived ``stale_after``.

    ``clock`` (a :class:`~workspace_lifecycle.clock.Clock`, or a function of no arguments that
    reads seconds, monotonic by default) measures both the scan interval and the staleness, so
    a :class:`~workspace_lifecycle.clock.VirtualClock` steps a test through them.
    """

    def __init__(
        self,
        store: Store,
        *,
        stale_after: float = 900.0,
        interval: float = 30.0,
        worker_alive: Callable[[str], bool] | None = None,
        clock: Clock | Callable[[], float] = time.monotonic,
    ) -> None:
        if stale_after <= 0 or interval <= 0:
            raise ValueError("stale_after and interval must be positive")
        self.store = store
        self.stale_after = stale_after
        self.interval = interval
        self.worker_alive = worker_alive
        self._clock = as_clock(clock)
        self._seen: dict[str, float] = {}  # build id -> when this reaper first saw it in flight
        self.reaped = 0

    async def run(self) -> None:
        """Scan every ``interval`` seconds until cancelled (or the store closes)."""
        while True:
            try:
                await self.reap_once()
            except StoreClosedError:
                return
            except (StoreError, CorruptStateError) as exc:
                log.warning("reaper: %s; trying again in %.1fs", exc, self.interval)
            await self._clock.sleep_until(self._clock() + self.interval)

    async def reap_once(self) -> list[Build]:
        """One scan: fail the claimed builds that are stale; return them."""
        now = self._clock()
        flying: set[str] = set()
        reaped: list[Build] = []
        for row in await self.store.list_chats():
            if row.error is not None:  # one unreadable workspace must not stop the others' reaping
                log.error("reaper: skipping chat %s: %s", row.chat.chat_id, row.error)
            build = row.facts.latest_build if row.facts is not None else None
            if build is None or build.status not in (JobStatus.RUNNING, JobStatus.CANCELING):
                continue  # pending builds wait for any live worker; finished ones are done
            flying.add(build.build_id)
            first = self._seen.setdefault(build.build_id, now)
            worker = build.worker or "unknown"
            if self.worker_alive is not None and not self.worker_alive(worker):
                reason = f"provisioner worker {worker} stopped while running the build"
            elif now - first >= self.stale_after:
                reason = f"provisioner worker {worker} sent no result for {self.stale_after:g}s"
            else:
                continue
            with contextlib.suppress(BuildConflictError, NotFoundError):  # it finished meanwhile
                reaped.append(await self.store.finish_build(build.build_id, JobStatus.FAILED, reason))
                self.reaped += 1
                log.warning("reaper: failed build %s: %s", build.build_id, reason)
        self._seen = {k: v for k, v in self._seen.items() if k in flying}
        return reaped
