"""Idempotency: each event handled at most once per group, each key published once.

Handling side: after handlers succeed, the processor adds the event ids to
the sorted set ``<prefix>:{<topic>}:done:<group>`` (scored by the time, in
Unix ms), in the same pipeline as the acks: one command per topic per flush.
Before handling a batch it checks the ids with ``ZMSCORE``, one command per
topic, and drops events already handled, e.g. redelivered after a claim or a
failover that lost an ack. Maintenance removes marks older than the window.

Publishing side: a publisher may pass an idempotency key; a Lua script writes
the event and remembers the key atomically, and a second publish with the key
returns the first event's id without writing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from titan_bus.events import Event
from titan_bus.keys import KeySpace

# KEYS[1] idempotency key; KEYS[2] lane stream; ARGV[1] window in ms;
# ARGV[2] event id; ARGV[3..] entry fields (name, value, ...).
PUBLISH_ONCE_LUA = """
local prior = redis.call('GET', KEYS[1])
if prior then return prior end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
return ARGV[2]
"""


class HandledMarks:
    """Marks and checks events handled by one group within a time window.

    Args:
        client: an asyncio Redis client.
        keys: the key space.
        group: the consumer group.
        window_s: how long a mark lasts, in seconds.
    """

    def __init__(
        self, client: aioredis.Redis, *, keys: KeySpace, group: str, window_s: float
    ) -> None:
        self._client = client
        self._keys = keys
        self._group = group
        self.window_ms = max(1, int(window_s * 1000))

    def mark(self, pipe: Any, topic: str, event_ids: Sequence[str]) -> None:
        """Queue on ``pipe`` the marks that ``event_ids`` of ``topic`` were handled."""
        now_ms = int(time.time() * 1000)
        key = self._keys.done(topic, self._group)
        pipe.zadd(key, dict.fromkeys(event_ids, now_ms))

    async def handled(self, events: Sequence[Event]) -> list[bool]:
        """Return, for each event, whether this group already handled it."""
        if not events:
            return []

        by_topic: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            by_topic.setdefault(event.topic, []).append(index)
        pipe = self._client.pipeline(transaction=False)
        for topic, indexes in by_topic.items():
            ids = [events[i].id for i in indexes]
            pipe.zmscore(self._keys.done(topic, self._group), ids)

        seen = [False] * len(events)
        replies = await pipe.execute()
        for indexes, scores in zip(by_topic.values(), replies, strict=True):
            for index, score in zip(indexes, scores, strict=True):
                seen[index] = score is not None

        return seen

    async def expire(self, topic: str) -> int:
        """Remove marks of ``topic`` older than the window; return how many."""
        cutoff = int(time.time() * 1000) - self.window_ms
        key = self._keys.done(topic, self._group)

        return int(await self._client.zremrangebyscore(key, "-inf", cutoff))


def publish_once_args(
    window_s: float, event_id: str, fields: dict[Any, Any]
) -> list[Any]:
    """Return ARGV for the publish-once script."""
    args: list[Any] = [max(1, int(window_s * 1000)), event_id]
    for name, value in fields.items():
        args.extend((name, value))

    return args
