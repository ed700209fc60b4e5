"""Lane scheduling: how a processor shares its free handler slots between lanes.

Each lane (one priority class of one topic, its own stream) has a weight. When
a processor has ``free`` slots, :class:`LaneScheduler` splits them across the
lanes in proportion to their weights, remembering what each lane was owed but
not given (a deficit) so that small slot counts still honour the weights over
time. A lane that came back empty is skipped until a later probe, so its share
goes to the lanes that have work; a lane with a non-zero weight is never
starved, because its deficit grows until it is served.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    _idle: set[str] = field(default_factory=set)

    def plan(self, free: int) -> dict[str, int]:
        """Return how many entries to read from each lane key, at most ``free``.

        Lanes last seen empty are left out while other lanes have work; when
        every lane looked empty, all are probed again.
        """
        if free <= 0:
            return {}
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
            self._idle.add(key)
        else:
            self._idle.discard(key)

    def wake(self, key: str) -> None:
        """Mark a lane as having work again (a blocking read returned from it)."""
        self._idle.discard(key)
