"""Reading lanes through a consumer group, as much as there are free slots.

With free handler slots, :class:`LaneReader` first asks each lane for its
weighted share (see :mod:`titan_bus.lanes`) with non-blocking reads pipelined
into one round trip. Only when every lane came back empty does it block on
all lanes at once, for at most ``block_ms``, so an idle bus costs one
request per ``block_ms`` and a lost connection is noticed within it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.typing import KeyT, StreamIdT

from titan_bus.lanes import Lane, LaneScheduler


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
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        lanes: Sequence[Lane],
        group: str,
        consumer: str,
        block_ms: int,
    ) -> None:
        self._client = client
        self._lanes = list(lanes)
        self._by_key = {lane.key: lane for lane in self._lanes}
        self._group = group
        self._consumer = consumer
        self._block_ms = block_ms
        self._scheduler = LaneScheduler(self._lanes)

    async def read_own_pending(self) -> list[Entry]:
        """Return every entry already delivered to this consumer, not yet acked."""
        if not self._lanes:
            return []
        streams: dict[KeyT, StreamIdT] = {lane.key: "0" for lane in self._lanes}
        reply = await self._client.xreadgroup(self._group, self._consumer, streams)

        return self._entries(reply)

    async def read_new(self, free: int) -> list[Entry]:
        """Return up to about ``free`` new entries, shared between lanes by weight."""
        plan = self._scheduler.plan(free)
        pipe = self._client.pipeline(transaction=False)
        for key, count in plan.items():
            pipe.xreadgroup(self._group, self._consumer, {key: ">"}, count=count)

        entries: list[Entry] = []
        for (key, asked), reply in zip(plan.items(), await pipe.execute(), strict=True):
            got = self._entries(reply)
            self._scheduler.record(key, asked, len(got))
            entries.extend(got)
        if entries:
            return entries

        return await self._blocking_read(free)

    async def _blocking_read(self, free: int) -> list[Entry]:
        streams: dict[KeyT, StreamIdT] = {lane.key: ">" for lane in self._lanes}
        reply = await self._client.xreadgroup(
            self._group,
            self._consumer,
            streams,
            count=max(1, free // len(streams)),
            block=self._block_ms,
        )
        entries = self._entries(reply)
        for entry in entries:
            self._scheduler.wake(entry.lane.key)

        return entries

    def _entries(self, reply: Any) -> list[Entry]:
        entries: list[Entry] = []
        for key, items in reply if isinstance(reply, list) else []:
            lane = self._by_key[_text(key)]
            for entry_id, fields in items:
                entries.append(Entry(lane, _text(entry_id), fields))

        return entries


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
