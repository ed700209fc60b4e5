"""The delayed set: events waiting in Redis until they are due.

Retries and delayed publishes wait in a sorted set per topic,
``<prefix>:{<topic>}:delayed``, scored by the due time in Unix milliseconds.
A member is the canonical JSON of ``{"lane", "fields", "seq"}`` where
``fields`` are the stream entry fields to write when due.

Release is one Lua script per topic: it reads the clock from Redis itself
(``TIME``), moves every due member into its lane with ``XADD`` and removes it
from the set, atomically. Several processors may run it at once; each member
is released exactly once, and a member is never released early because no
client clock is involved.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from titan_bus.codec import canonical_json

RELEASE_BATCH = 500

# KEYS[1] delayed set; KEYS[2] dead letters; KEYS[3..] lane streams;
# ARGV[1] batch size; ARGV[2..] lane names in the order of KEYS[3..].
# A member naming a lane that no longer exists goes to the last (lowest) lane;
# a member that is not valid JSON goes to the dead letters: nothing is dropped.
# Returns {released count, ms until the next member is due or -1}.
_RELEASE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lanes = {}
for i = 3, #KEYS do lanes[ARGV[i - 1]] = KEYS[i] end
local due = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0,
                       tonumber(ARGV[1]))
local moved = 0
for _, member in ipairs(due) do
  local ok, item = pcall(cjson.decode, member)
  local args = {}
  if ok and type(item) == 'table' and type(item['fields']) == 'table' then
    for name, value in pairs(item['fields']) do
      args[#args + 1] = tostring(name)
      args[#args + 1] = tostring(value)
    end
  end
  if #args > 0 then
    redis.call('XADD', lanes[item['lane']] or KEYS[#KEYS], '*', unpack(args))
    moved = moved + 1
  else
    redis.call('XADD', KEYS[2], '*', 'raw', member, 'failure',
               '{"error_type":"MalformedDelayedEntry"}')
  end
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {moved, -1} end
return {moved, math.max(0, tonumber(nxt[2]) - now)}
"""


# KEYS[1] delayed set; KEYS[2] lane stream (only when acking);
# ARGV[1] delay in ms; ARGV[2] member; ARGV[3] group; ARGV[4] entry id to ack;
# ARGV[5] absolute due time in Unix ms (optional; wins over the delay).
SCHEDULE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = now + tonumber(ARGV[1])
if ARGV[5] and ARGV[5] ~= '' then due = tonumber(ARGV[5]) end
redis.call('ZADD', KEYS[1], due, ARGV[2])
if KEYS[2] then redis.call('XACK', KEYS[2], ARGV[3], ARGV[4]) end
return due
"""


def delayed_member(lane: str, fields: Mapping[Any, Any]) -> bytes:
    """Return the delayed-set member that will write ``fields`` to ``lane``."""
    text = {_text(k): _text(v) for k, v in fields.items()}

    return canonical_json({"lane": lane, "fields": text, "seq": secrets.token_hex(6)})


class DelayedSet:
    """Schedules and releases the delayed events of one topic.

    Args:
        client: an asyncio Redis client.
        key: the topic's delayed-set key.
        dead_letters: the topic's dead-letter stream, for unreadable members.
        lanes: lane name to lane stream key, highest priority first.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        *,
        dead_letters: str,
        lanes: dict[str, str],
    ) -> None:
        self._client = client
        self.key = key
        self._dead_letters = dead_letters
        self._lane_names = list(lanes)
        self._lane_keys = [lanes[name] for name in self._lane_names]
        self._release = client.register_script(_RELEASE_LUA)
        self._schedule = client.register_script(SCHEDULE_LUA)

    async def schedule(
        self,
        pipe: Any,
        member: bytes,
        *,
        delay_s: float,
        ack: tuple[str, str, str] | None = None,
    ) -> None:
        """Queue on ``pipe`` the scheduling of ``member`` ``delay_s`` from now.

        The due time is Redis's clock plus the delay. With ``ack`` given as
        ``(lane key, group, entry id)`` the entry is acknowledged in the same
        atomic step, so a retry is never both pending and scheduled.
        """
        keys: list[Any] = [self.key]
        args: list[Any] = [max(0, int(delay_s * 1000)), member]
        if ack is not None:
            keys.append(ack[0])
            args.extend(ack[1:])
        await self._schedule(keys=keys, args=args, client=pipe)

    async def release_due(self) -> tuple[int, float | None]:
        """Move every due event into its lane.

        Returns:
            ``(released, next_due_s)``: how many were moved, and seconds until
            the next one is due (``None`` when nothing waits).
        """
        keys: list[Any] = [self.key, self._dead_letters, *self._lane_keys]
        args: list[Any] = [RELEASE_BATCH, *self._lane_names]
        moved, next_ms = await self._release(keys=keys, args=args)
        next_due = None if int(next_ms) < 0 else int(next_ms) / 1000

        return int(moved), next_due


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
