"""What a publish must pass besides validation: quotas, backlog, durability.

- Publisher quotas: a publisher identity (the event ``source``, e.g. a
  plugin's name) may have its own publish rate; a shared token bucket in Redis
  (see :mod:`titan_bus.limits`) enforces it across all its processes.
- Backpressure: a topic may set ``max_backlog``, the most unacknowledged
  events it holds; over it, publishing fails or waits, by configuration.
  ``maxlen`` is retention and never refuses a publish.
- Durability: a publish may require replicas to confirm the write (``WAIT``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from titan_bus.errors import BacklogFullError, RateLimitError, ReplicationError
from titan_bus.limits import Bucket, parse_grant
from titan_bus.outgoing import StreamWrite
from titan_bus.topics import Topic

BACKLOG_POLL_S = 0.05

# KEYS the lane streams of one topic. Returns the unacknowledged events: per
# lane the largest (pending + lag) over its groups; a lane without groups, or
# whose lag Redis cannot tell (after deletions), counts its whole length.
_BACKLOG_LUA = """
local total = 0
for _, key in ipairs(KEYS) do
  local len = redis.call('XLEN', key)
  local worst = 0
  if len > 0 then
    local groups = redis.call('XINFO', 'GROUPS', key)
    if #groups == 0 then worst = len end
    for _, g in ipairs(groups) do
      local f = {}
      for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      local lag = f['lag']
      if type(lag) ~= 'number' then lag = len end
      worst = math.max(worst, tonumber(f['pending']) + lag)
    end
  end
  total = total + worst
end
return total
"""


@dataclass(frozen=True)
class Durability:
    """How sure a publish must be before it returns.

    Attributes:
        min_replicas: replicas that must confirm each write (0: the primary only).
        replica_timeout_ms: how long to wait for them, in milliseconds.
        idempotency_window_s: how long a publisher's idempotency key is kept, s.
    """

    min_replicas: int = 0
    replica_timeout_ms: int = 1000
    idempotency_window_s: float = 3600.0

    def replicas(self, override: int | None) -> int:
        """Return the replica count to wait for, ``override`` first."""
        return self.min_replicas if override is None else override

    def check(self, confirmed: int, wanted: int) -> None:
        """Raise unless ``confirmed`` replicas reach ``wanted``.

        Raises:
            ReplicationError: they do not; the event is stored on the primary
                and may still be delivered, but could be lost in a failover.
        """
        if int(confirmed) < wanted:
            raise ReplicationError(
                f"only {confirmed} of {wanted} replicas confirmed the write within "
                f"{self.replica_timeout_ms} ms; the event is on the primary and may "
                "be lost if it fails over now"
            )


class Admission:
    """Checks publisher quotas and topic backlogs before a write.

    Args:
        client: an asyncio Redis client.
        quotas: publisher identity to its rate bucket.
        lane_keys: topic name to its lane stream keys.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        quotas: Mapping[str, Bucket],
        lane_keys: Mapping[str, Sequence[str]],
    ) -> None:
        self._client = client
        self._quotas = dict(quotas)
        self._lane_keys = dict(lane_keys)
        self._backlog = client.register_script(_BACKLOG_LUA)

    async def admit(
        self, writes: Sequence[StreamWrite], topics: Mapping[str, Topic], *, wait: bool
    ) -> None:
        """Return once ``writes`` may go ahead.

        Args:
            writes: the writes of one publish call.
            topics: their topics, by name.
            wait: wait for quota instead of raising (backlog waits by config).

        Raises:
            RateLimitError: a publisher is over quota (``retry_after_s`` set).
            BacklogFullError: a topic's backlog is over ``max_backlog``.
        """
        sources = Counter(
            w.event.source for w in writes if w.event.source in self._quotas
        )
        for source, count in sources.items():
            await self._take_quota(self._quotas[source], count, wait=wait)
        added = Counter(w.event.topic for w in writes)
        for name, count in added.items():
            topic = topics[name]
            if topic.max_backlog is not None:
                await self._check_backlog(topic, count)

    async def _take_quota(self, bucket: Bucket, count: int, *, wait: bool) -> None:
        if count > bucket.burst:
            raise RateLimitError(
                f"publisher {bucket.scope!r}: {count} events in one call exceed its "
                f"burst of {bucket.burst}",
                retry_after_s=count / bucket.rate,
            )
        while True:
            granted, wait_s = await self._take(bucket, count)
            if granted == count:
                return
            if granted:
                await self._give_back(bucket, granted)
            retry_after = max(wait_s, (count - granted) / bucket.rate)
            if not wait:
                raise RateLimitError(
                    f"publisher {bucket.scope!r} is over its quota of "
                    f"{bucket.rate:g} events/s; retry after {retry_after:.3f} s",
                    retry_after_s=retry_after,
                )
            await asyncio.sleep(retry_after)

    async def _take(self, bucket: Bucket, count: int) -> tuple[int, float]:
        pipe = self._client.pipeline(transaction=False)
        bucket.queue_take(pipe, count)
        (reply,) = await pipe.execute()

        return parse_grant(reply)

    async def _give_back(self, bucket: Bucket, count: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        bucket.queue_give_back(pipe, count)
        await pipe.execute()

    async def _check_backlog(self, topic: Topic, adding: int) -> None:
        assert topic.max_backlog is not None
        keys: list[Any] = list(self._lane_keys[topic.name])
        deadline = time.monotonic() + topic.backlog_timeout_s
        while True:
            backlog = int(await self._backlog(keys=keys))
            if backlog + adding <= topic.max_backlog:
                return
            if topic.backlog_policy != "block" or time.monotonic() >= deadline:
                raise BacklogFullError(
                    f"{topic.name}: {backlog} events are unacknowledged, adding "
                    f"{adding} would pass max_backlog={topic.max_backlog}"
                )
            await asyncio.sleep(BACKLOG_POLL_S)
