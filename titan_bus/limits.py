"""Rate limits kept in Redis: token buckets shared by every process.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per
second; taking a token is permission for one event. The bucket lives in a
Redis hash and is updated by one Lua script that reads the time from Redis
itself, so processes with skewed clocks share one consistent limit.

Guarantee: over any window of ``w`` seconds, at most ``rate * w + burst``
tokens are granted. So a limit of 50/s with a burst of 5 never lets more
than 55 events start within any one second, wherever the window falls.

Callers take tokens in small batches (one round trip for several events) and
give back what they could not use, so limiting does not cost a round trip
per event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# KEYS[1] bucket hash; ARGV[1] rate (tokens/s); ARGV[2] burst (tokens);
# ARGV[3] tokens wanted, or a negative count to give back.
# Returns {granted, seconds until the next whole token as a string}.
_TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local granted = 0
if want < 0 then
  tokens = math.min(burst, tokens - want)
else
  granted = math.min(want, math.floor(tokens))
  tokens = tokens - granted
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
local wait = 0
if want > granted then wait = (1 - (tokens - math.floor(tokens))) / rate end
return {granted, tostring(wait)}
"""


def default_burst(rate: float) -> int:
    """Return the default burst for ``rate`` events/s: a tenth of a second's worth."""
    return max(1, math.ceil(rate / 10))


@dataclass(frozen=True)
class Bucket:
    """One shared token bucket.

    Attributes:
        key: the Redis key of its state.
        rate: refill rate, tokens per second.
        burst: capacity, tokens.
        scope: what it limits, for logs and metrics (``global``, a topic, ...).
    """

    key: str
    rate: float
    burst: int
    scope: str

    def queue_take(self, pipe: Any, count: int) -> None:
        """Queue on a (sync or async) pipeline a request for ``count`` tokens."""
        pipe.eval(_TAKE_LUA, 1, self.key, repr(self.rate), self.burst, count)

    def queue_give_back(self, pipe: Any, count: int) -> None:
        """Queue on a pipeline the return of ``count`` unused tokens."""
        pipe.eval(_TAKE_LUA, 1, self.key, repr(self.rate), self.burst, -count)


def parse_grant(reply: Any) -> tuple[int, float]:
    """Return ``(granted, wait_s)`` from a take reply."""
    granted, wait = reply
    text = wait.decode() if isinstance(wait, bytes) else str(wait)

    return int(granted), float(text)


class FlowGate:
    """Hands a processor the permits it may use now, per topic.

    Args:
        client: an asyncio Redis client.
        topic_buckets: the rate-limit bucket of each limited topic.
        global_bucket: the bus-wide bucket, shared by all topics, or None.
    """

    def __init__(
        self,
        client: Any,
        *,
        topic_buckets: dict[str, Bucket],
        global_bucket: Bucket | None,
    ) -> None:
        self._client = client
        self._topics = topic_buckets
        self._global = global_bucket

    @property
    def active(self) -> bool:
        """True if any limit applies."""
        return bool(self._topics) or self._global is not None

    async def take(self, free: int, topics: list[str]) -> Permits:
        """Take up to ``free`` permits in one round trip.

        Returns:
            What was granted; :attr:`Permits.wait_s` says how long to wait
            when nothing was.
        """
        limited = [t for t in topics if t in self._topics]
        pipe = self._client.pipeline(transaction=False)
        if self._global is not None:
            self._global.queue_take(pipe, free)
        for topic in limited:
            self._topics[topic].queue_take(pipe, free)
        replies = [parse_grant(r) for r in await pipe.execute()]

        total, waits = free, []
        if self._global is not None:
            total, wait = replies.pop(0)
            waits.append((wait, "global"))
        caps = {}
        for topic, (granted, wait) in zip(limited, replies, strict=True):
            caps[topic] = granted
            waits.append((wait, topic))

        return Permits(total, caps, waits, global_taken=self._global is not None)

    async def give_back(self, permits: Permits, used: dict[str, int]) -> None:
        """Return the permits taken but not used, so others can use them."""
        pipe = self._client.pipeline(transaction=False)
        queued = False
        for topic, cap in permits.caps.items():
            if (spare := cap - used.get(topic, 0)) > 0:
                self._topics[topic].queue_give_back(pipe, spare)
                queued = True
        spare_total = permits.total - sum(used.values())
        if self._global is not None and permits.global_taken and spare_total > 0:
            self._global.queue_give_back(pipe, spare_total)
            queued = True
        if queued:
            await pipe.execute()


@dataclass
class Permits:
    """Permits granted to one read.

    Attributes:
        total: most entries the read may return in all.
        caps: limited topic name to most entries of that topic.
        waits: ``(seconds until a permit frees up, scope)`` per limiter asked.
        global_taken: whether ``total`` came from the global bucket.
    """

    total: int
    caps: dict[str, int]
    waits: list[tuple[float, str]]
    global_taken: bool = False

    def blocked_by(self) -> list[str]:
        """Return the scopes that granted nothing (empty if some work may run)."""
        return [scope for wait, scope in self.waits if wait > 0]

    def wait_s(self) -> float:
        """Return how long to wait before asking again, in seconds."""
        positive = [wait for wait, _ in self.waits if wait > 0]

        return min(positive) if positive else 0.0
