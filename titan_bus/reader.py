"""Reading lanes through a consumer group, as much as there are free slots.

With free handler slots, :class:`LaneReader` first asks each lane for its
weighted share (see :mod:`titan_bus.lanes`) with non-blocking reads pipelined
into one round trip. Only when every lane came back empty does it block on
all lanes at once, for at most ``block_ms``, so an idle bus costs one
request per ``block_ms`` and a lost connection is noticed within it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.typing import KeyT, StreamIdT

from titan_bus.lanes import Lane, LaneScheduler

# KEYS lane streams of one topic, highest priority first; ARGV[1] group;
# ARGV[2] consumer; ARGV[3] entries wanted. Reads lanes strictly in order:
# a lower lane is read only for what the higher ones could not fill.
_STRICT_READ_LUA = """
local left = tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  if left <= 0 then break end
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left,
                       'STREAMS', key, '>')
  if r then
    left = left - #r[1][2]
    out[#out + 1] = r[1]
  end
end
return out
"""


@dataclass(frozen=True)
class Entry:
    """One stream entry as read.

    Attributes:
        lane: the lane it came from.
        entry_id: its stream id.
        fields: its fields; ``None`` when the entry was deleted while pending.
    """

    lane: Lane
    entry_id: str
    fields: dict[bytes, bytes] | None

    @property
    def name(self) -> str:
        """A name unique among in-flight entries (ids repeat across streams)."""
        return f"{self.lane.key} {self.entry_id}"


class LaneReader:
    """Reads new and own-pending entries of a set of lanes for one consumer.

    Args:
        client: an asyncio Redis client.
        lanes: the lanes to read.
        group: the consumer group.
        consumer: this consumer's name.
        block_ms: how long an idle read blocks, in milliseconds.
        strict_topics: topics whose lanes are read strictly in priority order
            (the lanes of ``lanes`` must be given highest priority first).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        lanes: Sequence[Lane],
        group: str,
        consumer: str,
        block_ms: int,
        strict_topics: Sequence[str] = (),
    ) -> None:
        self._client = client
        self._lanes = list(lanes)
        self._by_key = {lane.key: lane for lane in self._lanes}
        self._group = group
        self._consumer = consumer
        self._block_ms = block_ms
        self._scheduler = LaneScheduler(self._lanes)
        self._own_cursors: dict[str, str] = {}
        self._strict = {
            topic: [lane for lane in self._lanes if lane.topic == topic]
            for topic in strict_topics
        }

    def restart_own_pending(self) -> None:
        """Start re-reading this consumer's pending entries from the oldest."""
        self._own_cursors = {lane.key: "0" for lane in self._lanes}

    @property
    def own_pending_left(self) -> bool:
        """True while :meth:`read_own_pending` may still return entries."""
        return bool(self._own_cursors)

    async def read_own_pending(self, count: int) -> list[Entry]:
        """Return the next page of entries delivered to this consumer, not acked.

        At most ``count`` entries per lane; call again until
        :attr:`own_pending_left` is False.
        """
        cursors = list(self._own_cursors.items())
        pipe = self._client.pipeline(transaction=False)
        for key, cursor in cursors:
            pipe.xreadgroup(self._group, self._consumer, {key: cursor}, count=count)

        entries: list[Entry] = []
        for (key, _), reply in zip(cursors, await pipe.execute(), strict=True):
            page = self._entries(reply)
            if page:
                self._own_cursors[key] = page[-1].entry_id
                entries.extend(page)
            else:
                del self._own_cursors[key]

        return entries

    async def read_new(
        self, free: int, caps: Mapping[str, int] | None = None, *, block: bool = True
    ) -> list[Entry]:
        """Return up to about ``free`` new entries, shared between lanes by weight.

        Args:
            free: free handler slots.
            caps: topic name to the most entries it may return now (rate
                limits); topics not named are not capped. The planned reads
                never return more than a cap; a blocking read may return up
                to one entry per lane, so callers that hold permits pass
                ``block=False``.
            block: when every planned read came back empty, block on all
                lanes for up to ``block_ms`` (else return at once).
        """
        plan = _capped(self._scheduler.plan(free), self._by_key, caps or {})
        pipe = self._client.pipeline(transaction=False)
        reads = self._queue_reads(pipe, plan)

        entries: list[Entry] = []
        for (lanes, asked), reply in zip(reads, await pipe.execute(), strict=True):
            entries.extend(self._record(lanes, asked, reply))
        if entries or not plan or not block:
            return entries

        return await self._blocking_read(free, caps or {})

    def _queue_reads(
        self, pipe: Any, plan: dict[str, int]
    ) -> list[tuple[list[Lane], int]]:
        """Queue one read per lane (one script per strict topic) on ``pipe``."""
        reads: list[tuple[list[Lane], int]] = []
        for topic, lanes in _by_topic(plan, self._by_key).items():
            if topic in self._strict:
                ordered = self._strict[topic]
                total = sum(plan[lane.key] for lane in lanes)
                keys = [lane.key for lane in ordered]
                args = [self._group, self._consumer, total]
                pipe.eval(_STRICT_READ_LUA, len(keys), *keys, *args)
                reads.append((ordered, total))
                continue
            for lane in lanes:
                count = plan[lane.key]
                pipe.xreadgroup(
                    self._group, self._consumer, {lane.key: ">"}, count=count
                )
                reads.append(([lane], count))

        return reads

    def _record(self, lanes: list[Lane], asked: int, reply: Any) -> list[Entry]:
        raw = len(lanes) > 1
        got = self._raw_entries(reply) if raw else self._entries(reply)
        for lane in lanes:
            from_lane = sum(1 for e in got if e.lane is lane)
            self._scheduler.record(lane.key, asked if not raw else 1, from_lane)

        return got

    async def _blocking_read(self, free: int, caps: Mapping[str, int]) -> list[Entry]:
        # A weight-0 lane waits until every weighted lane of its topic was
        # seen empty; the planned reads may have probed only some of them.
        lanes = [
            lane
            for lane in self._lanes
            if caps.get(lane.topic, free) > 0
            and (lane.weight > 0 or self._scheduler.weighted_lanes_idle(lane.topic))
        ]
        if not lanes:
            return []
        count = min(
            [free // len(lanes), *(caps[ln.topic] for ln in lanes if ln.topic in caps)]
        )
        streams: dict[KeyT, StreamIdT] = {lane.key: ">" for lane in lanes}
        reply = await self._client.xreadgroup(
            self._group,
            self._consumer,
            streams,
            count=max(1, count),
            block=self._block_ms,
        )
        entries = self._entries(reply)
        for entry in entries:
            self._scheduler.wake(entry.lane.key)

        return entries

    def _raw_entries(self, reply: Any) -> list[Entry]:
        """Parse a script's XREADGROUP replies (fields as flat name/value lists)."""
        entries: list[Entry] = []
        for key, items in reply or []:
            lane = self._by_key[_text(key)]
            for entry_id, flat in items:
                fields = dict(zip(flat[::2], flat[1::2], strict=True))
                entries.append(Entry(lane, _text(entry_id), fields))

        return entries

    def _entries(self, reply: Any) -> list[Entry]:
        entries: list[Entry] = []
        for key, items in reply if isinstance(reply, list) else []:
            lane = self._by_key[_text(key)]
            for entry_id, fields in items:
                entries.append(Entry(lane, _text(entry_id), fields))

        return entries


def _capped(
    plan: dict[str, int], by_key: Mapping[str, Lane], caps: Mapping[str, int]
) -> dict[str, int]:
    """Return ``plan`` with each capped topic's lanes cut to its cap, in order."""
    left = dict(caps)
    out: dict[str, int] = {}
    for key, count in plan.items():
        topic = by_key[key].topic
        take = min(count, left[topic]) if topic in left else count
        if take > 0:
            out[key] = take
            if topic in left:
                left[topic] -= take

    return out


def _by_topic(
    plan: dict[str, int], by_key: Mapping[str, Lane]
) -> dict[str, list[Lane]]:
    grouped: dict[str, list[Lane]] = {}
    for key in plan:
        grouped.setdefault(by_key[key].topic, []).append(by_key[key])

    return grouped


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
