"""``Lifecycle.logs``: the reads of the ``workspace_logs`` tool; :mod:`.buildlogs` decides the
answer."""

from __future__ import annotations

from . import buildlogs
from .adapters.base import Store
from .answers import NO_WORKSPACE
from .errors import NotFoundError
from .values import ToolResult

__all__ = ["read_logs"]


async def read_logs(
    store: Store, chat_id: str, owner: str, build: int | str | None, limit: int, after: int | None
) -> ToolResult:
    """The page of the chat's build ``build`` (its number or id; ``None``: the latest) for
    ``owner``; another owner's chat is answered exactly as one without a workspace."""
    buildlogs.check_page(build, limit, after)
    chat = await store.get_chat(chat_id)
    if chat is None or chat.owner != owner or chat.workspace_id is None:
        return ToolResult.error(NO_WORKSPACE)
    if isinstance(build, str) and build.isdecimal() and len(build) < 10:
        build = int(build)  # a number given as text (the tool's argument is a string)
    number = build if isinstance(build, int) else None
    if isinstance(build, str):
        try:
            named = await store.get_build(build)
        except NotFoundError:
            return buildlogs.answer(None, build, limit=limit, after=after)
        if named.workspace_id != chat.workspace_id:  # another workspace's: not this chat's to read
            return buildlogs.answer(None, build, limit=limit, after=after)
        number = named.number
    found = await store.read_log(chat.workspace_id, number)
    return buildlogs.answer(found, build, limit=limit, after=after)
