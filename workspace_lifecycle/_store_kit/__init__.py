"""The store conformance kit: :func:`check_store` (exported by :mod:`workspace_lifecycle.testing`).

Every store (ours and yours) must behave the same for the runtime to rely on it; the checks are
the rules the runtime relies on, split by concern: :mod:`.writes` (chats, creates, requests, the
provisioner side), :mod:`.log` (the event log, waking, pruning, a closed store) and
:mod:`.leases` (leases and deadlines, on the kit's virtual clock), :mod:`.deferred`
(requests deferred behind a build, fired by its finish), :mod:`.pools` (warm pools) and
:mod:`.holds` (turn holds and the idle stops they put off).
"""

from __future__ import annotations

from . import deferred as deferred
from . import holds as holds
from . import leases as leases
from . import limits as limits
from . import log as log
from . import pools as pools
from . import writes as writes
from ._kit import CHECKS as CHECKS
from ._kit import ClockedStoreFactory as ClockedStoreFactory
from ._kit import StoreCheckError as StoreCheckError
from ._kit import StoreReport as StoreReport
from ._kit import check_store as check_store

__all__ = ["CHECKS", "StoreCheckError", "ClockedStoreFactory", "StoreReport", "check_store"]
