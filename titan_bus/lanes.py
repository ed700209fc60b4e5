"""Lane scheduling: how a processor shares its free handler slots between lanes.

Each lane (one priority class of one topic, its own stream) has a weight. When
a processor has ``free`` slots, :class:`LaneScheduler` splits them across the
lanes in proportion to their weights, remembering what each lane was owed but
not given (a deficit) so that small slot counts still honour the weights over
time. A lane that came back empty is skipped for ``PROBE_AFTER_S``, so its
share goes to the lanes that have work; then it is read again with its full
share. So an urgent event arriving in an empty ``high`` lane while ``normal``
has a backlog waits at most that long plus one read, and a lane with a
non-zero weight is never starved, because its deficit grows until it is served.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from titan_bus.keys import KeySpace
    from titan_bus.topics import Topic

PROBE_AFTER_S = 0.05
RETRY_LANE = "retry"
"""Name of the lane holding one group's retries of a topic."""


@dataclass(frozen=True)
class Lane:
    """One lane of one topic.

    Attributes:
        topic: the topic name.
        name: the lane name, e.g. ``"high"``.
        key: the Redis stream key.
        weight: its share of handler slots under backlog.
    """

    topic: str
    name: str
    key: str
    weight: int


@dataclass
class LaneScheduler:
    """Weighted deficit round-robin over lanes, in units of handler slots."""

    lanes: list[Lane]
    _deficit: dict[str, float] = field(default_factory=dict)
    _idle: dict[str, float] = field(default_factory=dict)

    def plan(self, free: int) -> dict[str, int]:
        """Return how many entries to read from each lane key, at most ``free``.

        Lanes seen empty less than ``PROBE_AFTER_S`` ago are left out while
        other lanes have work; when every lane looked empty, all are read.
        """
        if free <= 0:
            return {}
        now = time.monotonic()
        for key, since in list(self._idle.items()):
            if now - since >= PROBE_AFTER_S:
                del self._idle[key]
        active = [lane for lane in self.lanes if lane.weight > 0]
        busy = [lane for lane in active if lane.key not in self._idle] or active
        total = sum(lane.weight for lane in busy)
        for lane in busy:
            self._deficit[lane.key] = (
                self._deficit.get(lane.key, 0.0) + free * lane.weight / total
            )

        plan: dict[str, int] = {}
        left = free
        for lane in sorted(busy, key=lambda ln: -self._deficit[ln.key]):
            take = min(left, max(1, int(self._deficit[lane.key])))
            if take <= 0:
                break
            plan[lane.key] = take
            left -= take

        return plan

    def record(self, key: str, asked: int, got: int) -> None:
        """Note that a read of ``asked`` entries from ``key`` returned ``got``."""
        self._deficit[key] = max(0.0, self._deficit.get(key, 0.0) - got)
        if got < asked:
            # The lane ran dry: forget its unused share, skip it for a while.
            self._deficit[key] = 0.0
            self._idle.setdefault(key, time.monotonic())
        else:
            self._idle.pop(key, None)

    def weighted_lanes_idle(self, topic: str) -> bool:
        """True if every lane of ``topic`` with a weight above 0 was seen empty."""
        return all(
            lane.key in self._idle
            for lane in self.lanes
            if lane.topic == topic and lane.weight > 0
        )

    def wake(self, key: str) -> None:
        """Mark a lane as having work again (a blocking read returned from it)."""
        self._idle.pop(key, None)


def topic_lanes(topic: Topic, keys: KeySpace, group: str) -> list[Lane]:
    """Return the lanes ``group`` reads for ``topic``: its retries, then its lanes.

    Retries go to a stream of the group's own, never back into the shared
    lanes, where every other group reading the topic would get them too. That
    stream has the weight of the topic's highest lane, and comes first in
    strict priority.
    """
    retry = Lane(
        topic.name,
        RETRY_LANE,
        keys.retry_lane(topic.name, group),
        max(topic.lanes.values()),
    )
    lanes = [
        Lane(topic.name, name, keys.lane(topic.name, name), weight)
        for name, weight in topic.lanes.items()
    ]

    return [retry, *lanes]
