"""A :class:`~workspace_lifecycle.runtime.Lifecycle`'s warm pools: the pools it was given,
checked and by name, the one a create claims from, their status, and their keeper.

The keeping itself (filling, retiring) is :class:`~workspace_lifecycle._pools.PoolKeeper`'s;
the decisions are :mod:`workspace_lifecycle.pools`'.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import pools as pools_core
from ._pools import PoolKeeper
from .adapters.base import Store
from .clock import Clock
from .pools import Pool

__all__ = ["WarmPools"]


class WarmPools:
    """The pools of one runtime: ``by_name`` (checked: Pool values, distinct names, ``default``
    one of them) and, with ``keep`` and at least one pool, the ``keeper`` that keeps them full."""

    def __init__(
        self, store: Store, pools: Sequence[Pool], default: str | None, clock: Clock, *, keep: bool
    ) -> None:
        pool_list = list(pools)
        self.store = store
        self.clock = clock
        self.by_name = _pools_by_name(pool_list, default)
        self.keeper = PoolKeeper(store, pool_list, clock) if pool_list and keep else None

    def check(self, pool: str | None) -> str | None:
        """``pool`` (a create's, or the default) if it names one of these pools (or is ``None``),
        else ``ValueError`` listing them."""
        if pool is not None and pool not in self.by_name:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise ValueError(f"no warm pool {pool!r} in this Lifecycle (its pools: {known})")
        return pool

    async def status(self) -> list[dict[str, object]]:
        """Each pool's counts (:func:`~workspace_lifecycle.pools.counts`), read from the store."""
        now = self.clock()
        out = []
        for pool in self.by_name.values():
            members = await self.store.pool_members(pool.name)
            out.append(pools_core.counts(pool, members, now).as_dict())
        return out


def _pools_by_name(pools: list[Pool], default: str | None) -> dict[str, Pool]:
    """A Lifecycle's warm pools by name, checked: Pool values, distinct names, the default one
    of them."""
    if not all(isinstance(pool, Pool) for pool in pools):
        raise ValueError("pools must be workspace_lifecycle.Pool values")
    by_name = {pool.name: pool for pool in pools}
    if len(by_name) != len(pools):
        raise ValueError("two pools have the same name")
    if default is not None and default not in by_name:
        raise ValueError(f"default_pool {default!r} is not one of this Lifecycle's pools")
    return by_name
