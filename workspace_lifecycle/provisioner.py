"""A simulated provisioner: claims pending builds and completes them, like a real one would.

It uses only the provisioner side of the store (``claim_build``, ``finish_build``,
``report_agent``), the same calls a real provisioner makes, from any process. It wakes on the
store's events, so an idle provisioner costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

import anyio

from ._service import BackgroundService
from .adapters.base import Store
from .errors import BuildConflictError, CallerError, StoreClosedError, StoreError, TransientStoreError
from .values import AgentLifecycle, Build, JobStatus, Transition

__all__ = ["SimulatedProvisioner"]

log = logging.getLogger("workspace_lifecycle.provisioner")

FailSpec = Callable[[Build], bool] | float | None


class SimulatedProvisioner(BackgroundService):
    """Completes builds after ``build_seconds``; the agent reaches ``agent`` ``agent_seconds`` later.

    ``fail`` is a predicate on the build, or a probability in [0, 1], that makes a build fail;
    ``agent`` is the agent's final lifecycle state (``"ready"``, ``"start_error"``, ...) or
    ``None`` for workspaces without an agent. ``seed`` makes probabilistic failures repeatable.

    >>> SimulatedProvisioner(None, fail=2.0)  # type: ignore[arg-type]
    Traceback (most recent call last):
    ...
    ValueError: fail must be a predicate or a probability in [0, 1], not 2.0
    """

    def __init__(
        self,
        store: Store,
        *,
        build_seconds: float = 0.0,
        agent_seconds: float = 0.0,
        fail: FailSpec = None,
        agent: str | AgentLifecycle | None = "ready",
        seed: int | None = None,
        worker: str = "simulated",
        retries: int = 8,
        max_retry_delay: float = 2.0,
    ) -> None:
        if isinstance(fail, (int, float)) and not isinstance(fail, bool) and not 0.0 <= fail <= 1.0:
            raise ValueError(f"fail must be a predicate or a probability in [0, 1], not {fail!r}")
        if build_seconds < 0 or agent_seconds < 0:
            raise ValueError("build_seconds and agent_seconds must not be negative")
        self.store = store
        self.build_seconds = build_seconds
        self.agent_seconds = agent_seconds
        self.fail = fail
        self.agent = None if agent is None else AgentLifecycle(agent)
        self.worker = worker
        self.retries = retries
        self.max_retry_delay = max_retry_delay
        self._random = random.Random(seed)
        self.builds_done = 0

    def _fails(self, build: Build) -> bool:
        if self.fail is None:
            return False
        if callable(self.fail):
            return bool(self.fail(build))
        return self._random.random() < self.fail

    async def run(self) -> None:
        """Claim and complete builds until cancelled (or the store closes)."""
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    cursor = await self.store.head()
                    build = await self.store.claim_build(self.worker)
                    if build is None:
                        await self.store.wait_for_change(cursor)
                        continue
                except StoreClosedError:
                    return
                except TransientStoreError as exc:
                    log.warning("provisioner: %s; retrying", exc)
                    await anyio.sleep(0.1)
                    continue
                tg.start_soon(self._complete, build)

    async def _complete(self, build: Build) -> None:
        try:
            await anyio.sleep(self.build_seconds)
            if self._fails(build):
                await self._finish(build, JobStatus.FAILED, "simulated failure", has_agent=False)
                return
            has_agent = self.agent is not None and build.transition is Transition.START
            await self._finish(build, JobStatus.SUCCEEDED, None, has_agent=has_agent)
            if has_agent and self.agent is not None:
                await anyio.sleep(self.agent_seconds)
                agent = self.agent
                await self._retrying(lambda: self.store.report_agent(build.workspace_id, agent))
        except (StoreError, CallerError) as exc:
            log.warning("provisioner: build %s: %s", build.build_id, exc)

    async def _finish(self, build: Build, status: JobStatus, error: str | None, *, has_agent: bool) -> None:
        # A conflict means an earlier attempt committed although its caller saw an error (or
        # another party, a reaper, finished it). Until then the finish is retried however long
        # the store stays busy: a build left running because one write failed never finishes.
        with contextlib.suppress(BuildConflictError):
            await self._retrying(
                lambda: self.store.finish_build(build.build_id, status, error, has_agent=has_agent),
                until_it_lands=True,
            )
        self.builds_done += 1

    async def _retrying(self, call: Callable[[], Awaitable[object]], *, until_it_lands: bool = False) -> None:
        """Run a store write, retrying transient failures (a busy or restarted database) with
        backoff: ``retries`` times, or ``until_it_lands`` (only a caller error or a closed store
        ends it). Retrying is safe because ``finish_build`` refuses a second finish
        (``BuildConflictError``).
        """
        delay = 0.05
        attempt = 0
        while True:
            try:
                await call()
                return
            except TransientStoreError as exc:
                if attempt >= self.retries and not until_it_lands:
                    raise
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("provisioner: %s; retrying in %.2fs (attempt %d)", exc, delay, attempt)
                await anyio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
