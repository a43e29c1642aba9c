"""The plans of :class:`~.store.DriverStore` for warm pools: claim a ready member, fill a pool,
read its members."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from .. import pools, writes
from ..errors import NotFoundError
from ..limits import Limits
from ..values import WorkspaceFacts
from .base import PoolClaim
from .driver import Plan, Read, Rows

__all__ = ["ClaimPooled", "FillPool", "PoolMembers"]


class ClaimPooled(Plan[PoolClaim]):
    op = "claim_pooled"
    __slots__ = ("_claim", "_write", "clock", "expected", "limits", "name", "pool")

    def __init__(
        self,
        chat_id: str,
        pool: str,
        name: str,
        expected: str | None,
        limits: Limits | None,
        clock: Callable[[], float],
    ) -> None:
        # A claim gives the owner a (running) workspace more: it counts its usage.
        read = Read.pool(pools.holder_id(pool), chat_id)
        super().__init__(read._replace(usage=True, limited=limits is not None))
        self.pool, self.name, self.expected, self.clock, self.limits = pool, name, expected, clock, limits

    def decide(self, rows: Rows) -> writes.Write | None:
        chat = rows.chat
        if chat is None:
            raise NotFoundError(f"no chat {self.read.claimant!r}")
        bound = rows.facts
        write = writes.claim_pooled(
            chat,
            rows.members,
            pool=self.pool,
            expected_workspace_id=self.expected,
            replaced=bound if self.expected is not None else None,
            name=self.name,
            at=self.clock(),
            usage=rows.usage,
            limits=self.limits,
        )
        self._write = write
        if write is None:
            if chat.workspace_id == self.expected:  # nothing ready: the caller builds one
                self._claim = PoolClaim(False, None)
                return None
            if bound is None:
                raise NotFoundError(f"chat {self.read.claimant!r} has no workspace")
            self._claim = PoolClaim(False, bound)  # lost to another create
            return None
        assert write.workspace is not None
        claimed = write.workspace.workspace_id
        self._claim = PoolClaim(True, next(m for m in rows.members if m.workspace_id == claimed))
        return write

    def answer(self, head: int) -> PoolClaim:
        claim, write = self._claim, self._write
        if write is None or claim.facts is None:
            return claim
        return PoolClaim(True, writes.applied(claim.facts, write, head))


class FillPool(Plan[WorkspaceFacts | None]):
    op = "fill_pool"
    __slots__ = ("_facts", "clock", "new_id", "pool")

    def __init__(self, pool: pools.Pool, clock: Callable[[], float], new_id: Callable[[], str]) -> None:
        super().__init__(Read.pool(pool.holder))
        self.pool, self.clock, self.new_id = pool, clock, new_id

    def decide(self, rows: Rows) -> writes.Write | None:
        write = writes.fill_pool(
            rows.chat,
            rows.members,
            self.pool,
            workspace_id=self.new_id(),
            build_id=self.new_id(),
            at=self.clock(),
        )
        self._facts = None
        if write is not None:
            assert write.workspace is not None
            self._facts = WorkspaceFacts(write.workspace, write.build, None, 0)
        return write

    def answer(self, head: int) -> WorkspaceFacts | None:
        facts = self._facts
        return None if facts is None else attrs.evolve(facts, seq=head)


class PoolMembers(Plan[Sequence[WorkspaceFacts]]):
    op = "pool_members"
    __slots__ = ("_members",)

    def __init__(self, pool: str) -> None:
        super().__init__(Read.pool(pools.holder_id(pool)))

    def decide(self, rows: Rows) -> writes.Write | None:
        self._members = rows.members
        return None

    def answer(self, head: int) -> Sequence[WorkspaceFacts]:
        return self._members
