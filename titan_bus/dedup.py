"""Idempotency: each event handled at most once per group, each key published once.

Handling side: after a handler succeeds, the processor sets
``<prefix>:{<topic>}:done:<group>:<event id>`` with an expiry (the window), in
the same pipeline as the ack. Before handling a batch it checks those marks in
one round trip and drops events already handled, e.g. redelivered after a
claim or a failover that lost an ack.

Publishing side: a publisher may pass an idempotency key; a Lua script writes
the event and remembers the key atomically, and a second publish with the key
returns the first event's id without writing.
"""

from __future__ import annotations

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
        self._window_ms = max(1, int(window_s * 1000))

    def mark(self, pipe: Any, event: Event) -> None:
        """Queue on ``pipe`` the mark that ``event`` was handled."""
        key = self._keys.done(event.topic, self._group, event.id)
        pipe.set(key, b"1", px=self._window_ms)

    async def handled(self, events: Sequence[Event]) -> list[bool]:
        """Return, for each event, whether this group already handled it."""
        if not events:
            return []

        pipe = self._client.pipeline(transaction=False)
        for event in events:
            pipe.exists(self._keys.done(event.topic, self._group, event.id))

        return [bool(n) for n in await pipe.execute()]


def publish_once_args(
    window_s: float, event_id: str, fields: dict[Any, Any]
) -> list[Any]:
    """Return ARGV for the publish-once script."""
    args: list[Any] = [max(1, int(window_s * 1000)), event_id]
    for name, value in fields.items():
        args.extend((name, value))

    return args
