"""The NOTIFY channels of a schema: which ones a write notifies, which ones a topic needs.

Pure: the statement compiler asks which channels a write notifies, the listener which ones
an interest LISTENs to; both get the same answer in every process (see :func:`shard_of`).
"""

from __future__ import annotations

import zlib

import attrs

from ...values import EventKind
from ...writes import Write
from ..base import Topic, TopicKind

__all__ = ["Channels", "shard_of"]


def shard_of(key: str, shards: int) -> int:
    """The notification shard of a workspace or chat id: the same in every process (CRC-32,
    not Python's salted ``hash``).

    >>> shard_of("w1", 8), shard_of("w1", 8) == shard_of("w1", 8)
    (4, True)
    """
    return zlib.crc32(key.encode(errors="surrogatepass")) % shards


def channel_name(schema: str, suffix: str = "") -> str:
    """The NOTIFY channel of ``schema`` (with ``suffix``), within PostgreSQL's 63 bytes."""
    return f"workspace_lifecycle_{schema}"[: 63 - len(suffix)] + suffix


@attrs.frozen
class Channels:
    """The channels of ``schema`` with ``shards`` notification shards (0: one channel).

    >>> Channels.of("app", 2).shard("w1")
    'workspace_lifecycle_app_s0'
    """

    main: str
    shards: tuple[str, ...]
    builds: str

    @classmethod
    def of(cls, schema: str, shards: int) -> Channels:
        return cls(
            channel_name(schema),
            tuple(channel_name(schema, f"_s{i}") for i in range(shards)),
            channel_name(schema, "_builds"),
        )

    def shard(self, key: str) -> str:
        return self.shards[shard_of(key, len(self.shards))]

    def of_write(self, write: Write) -> list[str]:
        """The channels ``write``'s NOTIFY goes to: the store's one channel, or with shards the
        shard of each workspace it writes, the shard of the chat it binds to a new workspace (a
        watcher of that chat follows the workspace from that event) and, when it queues a
        build, the builds channel (provisioners claim the builds of every workspace)."""
        if not self.shards:
            return [self.main]
        channels: dict[str, None] = {}  # ordered, without repeats
        for event in write.events:
            channels[self.shard(event.workspace_id)] = None
            if event.kind is EventKind.CHAT_BOUND:
                channels[self.shard(event.chat_id)] = None
            elif event.kind is EventKind.BUILD_QUEUED:
                channels[self.builds] = None
        return list(channels)

    def of_topic(self, topic: Topic) -> tuple[str, ...]:
        """The channels a waiter on ``topic`` needs (with shards)."""
        if topic.kind is TopicKind.WORKSPACE or topic.kind is TopicKind.CHAT:
            return (self.shard(topic.key),)
        if topic.kind is TopicKind.BUILDS:
            return (self.builds,)
        return self.shards  # every workspace: each of them is in one shard
