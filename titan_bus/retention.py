"""Retention: trimming lanes to ``maxlen`` without ever dropping unacked entries.

Trimming at ``XADD`` time (``MAXLEN``) would delete entries that no consumer
group has read or acknowledged yet, silently breaking at-least-once delivery
when consumers fall behind. Instead, processors trim periodically with one
script per lane that finds the oldest entry some group still needs (its
oldest pending entry, or the first entry after its last-delivered id) and
trims only below both that point and the ``maxlen`` cut.

So ``maxlen`` is a target, not a hard cap: a lane whose consumers lag keeps
every entry they have not acknowledged, and its length can exceed ``maxlen``
until they catch up. A lane with no consumer group at all is trimmed to
``maxlen`` plainly, since nobody has asked to read it.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

SCAN_CAP = 10_000

# KEYS[1] lane stream; ARGV[1] maxlen; ARGV[2] most entries to trim per call.
# Returns the number of entries trimmed.
_TRIM_LUA = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function older(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local excess = redis.call('XLEN', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return 0 end
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT',
                        math.min(excess, tonumber(ARGV[2])) + 1)
local cut = head[#head][1]
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if older(f['last-delivered-id'], cut) then cut = f['last-delivered-id'] end
  if tonumber(f['pending']) > 0 then
    local p = redis.call('XPENDING', KEYS[1], f['name'])
    if older(p[2], cut) then cut = p[2] end
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', cut)
"""


class Retention:
    """Trims lanes to their ``maxlen`` while keeping what any group still needs."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._trim = client.register_script(_TRIM_LUA)

    async def trim(self, key: str, *, maxlen: int) -> int:
        """Trim the lane stream ``key`` towards ``maxlen`` entries.

        Returns:
            How many entries were removed (0 if none could be, safely).
        """
        args: list[Any] = [maxlen, SCAN_CAP]

        return int(await self._trim(keys=[key], args=args))
