"""Gauges read from Redis: what waits where, refreshed by a background task.

Every ``interval_s`` seconds one pipelined round trip reads, for each topic of
the bus: the length of each lane stream, each consumer group's pending count
and lag (``XINFO GROUPS``), the consumers of the processor's group seen within
``live_idle_s`` (``XINFO CONSUMERS``), the dead-letter stream length and the
size of the delayed set. The Prometheus registry reads the last snapshot; a
scrape never waits for Redis.

Consumer lag is unknown when Redis cannot compute it (before Redis 7, or after
entries the group had not read were deleted or trimmed): the sample is then
``NaN``, never a false 0. ``titan_bus_redis_up`` is 1 after a successful
refresh and 0 after a failed one; the other gauges are then left out rather
than shown stale.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from titan_bus.keys import KeySpace
from titan_bus.topics import TopicRegistry

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
DEFAULT_LIVE_IDLE_S = 60.0

LANE = ("topic", "lane")
GROUP = ("topic", "lane", "group")

GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "titan_bus_stream_length": ("Entries in a lane stream.", LANE),
    "titan_bus_pending": ("Entries delivered to a group, not yet acked.", GROUP),
    "titan_bus_consumer_lag": (
        "Entries of a lane a group has not read yet; NaN when Redis cannot tell.",
        GROUP,
    ),
    "titan_bus_consumers": ("Consumers registered in a group.", GROUP),
    "titan_bus_live_consumers": (
        "Consumers of the processor's group active within live_idle_s.",
        GROUP,
    ),
    "titan_bus_dead_letters": ("Entries in a topic's dead letters.", ("topic",)),
    "titan_bus_delayed": (
        "Delayed publishes of a topic and this group's retries, not yet due.",
        ("topic",),
    ),
    "titan_bus_redis_up": ("1 if the last gauge refresh reached Redis, else 0.", ()),
}

Snapshot = dict[str, list[tuple[tuple[str, ...], float]]]


@dataclass(frozen=True)
class _LaneKey:
    topic: str
    lane: str
    key: str


class RedisGauges(Collector):
    """A Prometheus collector whose samples come from periodic Redis reads.

    Args:
        client: an asyncio Redis client.
        keys: the key space.
        topics: the topics to report on.
        group: the processor's consumer group (its live consumers are counted).
        interval_s: seconds between refreshes.
        live_idle_s: a consumer idle longer than this, in seconds, is not live.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        keys: KeySpace,
        topics: TopicRegistry,
        group: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        live_idle_s: float = DEFAULT_LIVE_IDLE_S,
    ) -> None:
        self._client = client
        self._keys = keys
        self._topics = topics.names()
        self._lanes = [
            _LaneKey(t.name, lane, keys.lane(t.name, lane))
            for t in topics
            for lane in t.lanes
        ]
        self.group = group
        self.interval_s = interval_s
        self.live_idle_ms = live_idle_s * 1000
        self._snapshot: Snapshot = {}
        self.up: bool | None = None

    # -- refreshing ------------------------------------------------------------

    async def run(self) -> None:
        """Refresh every ``interval_s`` seconds until cancelled."""
        while True:
            try:
                await self.refresh()
            except Exception:
                # An answer of an unexpected shape: skip this round, keep going.
                logger.debug("gauge refresh failed", exc_info=True)
            await asyncio.sleep(self.interval_s)

    async def refresh(self) -> bool:
        """Read every gauge in one round trip; return whether Redis answered."""
        pipe = self._client.pipeline(transaction=False)
        for topic in self._topics:
            pipe.xlen(self._keys.dead_letters(topic))
            pipe.zcard(self._keys.delayed(topic))
            pipe.zcard(self._keys.retry_delayed(topic, self.group))
        for lane in self._lanes:
            pipe.xlen(lane.key)
            pipe.xinfo_groups(lane.key)
            pipe.xinfo_consumers(lane.key, self.group)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            self._went_down(exc)
            return False

        snapshot = self._parse(replies)
        if self.up is False:
            logger.info("Redis answers again; gauges refreshed")
        self._snapshot, self.up = snapshot, True

        return True

    def _went_down(self, exc: Exception) -> None:
        if self.up is not False:
            logger.warning(
                "cannot read gauges from Redis (%s); titan_bus_redis_up is 0 "
                "until it answers again",
                exc,
            )
        self._snapshot, self.up = {}, False

    def _parse(self, replies: list[Any]) -> Snapshot:
        snap: Snapshot = {name: [] for name in GAUGES}
        head = 3 * len(self._topics)
        for index, topic in enumerate(self._topics):
            dead, delayed, retries = replies[3 * index : 3 * index + 3]
            waiting = _number(delayed) + _number(retries)
            snap["titan_bus_dead_letters"].append(((topic,), _number(dead)))
            snap["titan_bus_delayed"].append(((topic,), waiting))
        for index, lane in enumerate(self._lanes):
            length, groups, consumers = replies[head + 3 * index : head + 3 * index + 3]
            snap["titan_bus_stream_length"].append(
                ((lane.topic, lane.lane), _number(length))
            )
            self._parse_groups(snap, lane, groups)
            live = self._live(consumers)
            labels = (lane.topic, lane.lane, self.group)
            snap["titan_bus_live_consumers"].append((labels, float(live)))
        snap["titan_bus_redis_up"] = [((), 1.0)]

        return snap

    @staticmethod
    def _parse_groups(snap: Snapshot, lane: _LaneKey, groups: Any) -> None:
        if not isinstance(groups, list):
            return  # no such stream yet: nothing to report per group

        for info in groups:
            labels = (lane.topic, lane.lane, _text(info.get("name", "")))
            lag = info.get("lag")
            snap["titan_bus_pending"].append((labels, _number(info.get("pending"))))
            snap["titan_bus_consumers"].append((labels, _number(info.get("consumers"))))
            snap["titan_bus_consumer_lag"].append(
                (labels, math.nan if lag is None else float(lag))
            )

    def _live(self, consumers: Any) -> int:
        if not isinstance(consumers, list):
            return 0

        return sum(1 for c in consumers if _number(c.get("idle")) < self.live_idle_ms)

    # -- the collector interface -----------------------------------------------

    def collect(self) -> Iterable[Metric]:
        """Return the gauges of the last refresh (called by each scrape)."""
        snapshot = self._snapshot
        if self.up is False:
            snapshot = {"titan_bus_redis_up": [((), 0.0)]}

        return list(self._families(snapshot))

    def describe(self) -> Iterable[Metric]:
        """Return the gauge families without samples (for registration)."""
        return list(self._families({}))

    @staticmethod
    def _families(snapshot: Snapshot) -> Iterator[Metric]:
        for name, (documentation, labels) in GAUGES.items():
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for values, value in snapshot.get(name, []):
                family.add_metric(list(values), value)
            yield family


def _number(reply: Any) -> float:
    if isinstance(reply, int | float):
        return float(reply)

    return 0.0  # a missing key or group answers with an error: nothing there


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
