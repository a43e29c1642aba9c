"""What a worker holds while it works on a build: :class:`Held` (the build's lease, its fencing
token and the finish under it) and :func:`retrying` (a provisioner's store write retried with
backoff).

Apart from :mod:`workspace_lifecycle.provisioner` so that the lease keeper, which renews what a
:class:`Held` holds, and the provisioner, which runs the keeper, import it from below instead of
from each other. Both names are re-exported by the provisioner module and the package.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import attrs

from .adapters.base import Store
from .backoff import Backoff
from .errors import BuildConflictError, LeaseLostError, TransientStoreError
from .values import Build, JobStatus

__all__ = ["Held", "retrying"]

log = logging.getLogger("workspace_lifecycle.provisioner")

#: The first pause of :func:`retrying`; each next one doubles, up to its ``max_delay``.
_FIRST_RETRY_DELAY = 0.05


@attrs.define(eq=False)
class Held:
    """A build's lease as its worker holds it (see :func:`holding`)."""

    build: Build
    #: The lease was lost (it expired, or the build was finished or superseded without it):
    #: the work was cancelled and the store refuses this token.
    lost: bool = False
    #: Renewals that landed.
    renewals: int = 0

    @property
    def token(self) -> str:
        """The fencing token to pass as ``lease=`` to ``finish_build`` and ``report_agent``."""
        assert self.build.lease_token is not None, "a claimed build has a lease"
        return self.build.lease_token

    async def finish(
        self,
        store: Store,
        status: JobStatus,
        error: str | None = None,
        *,
        has_agent: bool = False,
        details: Mapping[str, Any] | None = None,
        retries: int = 8,
        max_delay: float = 2.0,
    ) -> bool:
        """Finish the build under this lease, retrying transient failures however long the store
        stays busy (a build left running because one write failed would never finish). True if
        the build ended ``status``; False if the lease was lost (then :attr:`lost`) or another
        party finished it otherwise. A conflict is otherwise an earlier attempt that committed
        although its caller saw an error: the stored outcome is the one that counts."""
        build_id = self.build.build_id
        try:
            await retrying(
                lambda: store.finish_build(
                    build_id, status, error, has_agent=has_agent, details=details, lease=self.token
                ),
                retries=retries,
                max_delay=max_delay,
                until_it_lands=True,
            )
        except LeaseLostError as exc:
            self.lost = True
            log.warning("provisioner: build %s: %s", build_id, exc)
            return False
        except BuildConflictError:
            return (await store.get_build(build_id)).status is status
        return True


async def retrying(
    call: Callable[[], Awaitable[object]], *, retries: int, max_delay: float, until_it_lands: bool = False
) -> None:
    """Run a provisioner's store write, retrying transient failures (a busy or restarted
    database) with backoff: ``retries`` times, or ``until_it_lands`` (only a caller error or a
    closed store ends it). Retrying is safe: ``finish_build`` refuses a second finish
    (``BuildConflictError``) and an agent report repeats harmlessly.
    """
    delays = Backoff(first=min(_FIRST_RETRY_DELAY, max_delay), cap=max_delay).delays()
    attempt = 0
    while True:
        try:
            await call()
            return
        except TransientStoreError as exc:
            if attempt >= retries and not until_it_lands:
                raise
            attempt += 1
            delay = next(delays)
            if attempt == 1 or attempt % 10 == 0:
                log.warning("provisioner: %s; retrying in %.2fs (attempt %d)", exc, delay, attempt)
            await anyio.sleep(delay)
