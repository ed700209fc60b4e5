"""Priority lanes under backlog: weighted shares, no starvation, strict order.

The big backlog tests run the processor as a real subprocess
(``tests/apps/flow_processor.py``) that records the order in which handlers
start; the smaller ones run it in the test process and record the order in
a list. Every backlog is published before the processor starts, so all lanes
have work from the first read on.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from flow_helpers import (
    FlowRun,
    event_data,
    flow_config,
    flow_run,
    processors,
    read_log,
)
from helpers import running, wait_until
from servers import wait_for

from titan_bus import Event, EventBus

pytestmark = pytest.mark.timeout(90)

TOPIC = "system.v1"
TOLERANCE = 0.10


def within(actual: float, expected: float, tolerance: float = TOLERANCE) -> bool:
    """True if ``actual`` is within ``tolerance`` (relative) of ``expected``."""
    return abs(actual - expected) <= tolerance * expected


def handled_lanes(run: FlowRun, client: redis.Redis, total: int) -> list[str]:
    """Wait until ``total`` events were handled once each; return their lanes."""

    def done() -> bool:
        return int(client.llen(run.flow.log)) >= total

    wait_for(done, 60, what=f"{total} events handled")
    records = read_log(client, run.flow)
    counts = Counter(r.event_id for r in records)
    assert len(counts) == total
    assert set(counts.values()) == {1}, "an event was handled twice"

    return [r.lane for r in records]


@pytest.mark.slow
def test_high_and_low_backlogs_share_slots_five_to_one(
    tmp_path: Path, redis_url: str, key_prefix: str, sync_redis: redis.Redis
) -> None:
    """3,000 low and 300 high events, weights 5/3/1, ``normal`` empty.

    The empty ``normal`` lane's share goes to the other two, so while both
    have backlog the handled order is 5 high to 1 low; every low event is
    handled in the end.
    """
    raw = flow_config(redis_url, key_prefix, processor={"concurrency": 4})
    with flow_run(tmp_path, raw) as run:
        assert run.config.priorities == {"high": 5, "normal": 3, "low": 1}
        low = run.publish_backlog(TOPIC, "low", 3000)
        high = run.publish_backlog(TOPIC, "high", 300)
        with processors(sync_redis, run.config_path, count=1):
            lanes = handled_lanes(run, sync_redis, len(low) + len(high))

    # High runs dry after about 300 / (5/6) = 360 events; look well before.
    first = Counter(lanes[:300])
    assert first["high"] + first["low"] == 300
    assert within(first["high"] / first["low"], 5.0), first
    assert first["low"] >= 45, f"low starved while high had backlog: {first}"
    assert Counter(lanes) == {"low": 3000, "high": 300}


@pytest.mark.slow
def test_three_backlogs_share_slots_by_weight(
    tmp_path: Path, redis_url: str, key_prefix: str, sync_redis: redis.Redis
) -> None:
    """300 high, 300 normal and 3,000 low: 5/9, 3/9 and 1/9 of the slots."""
    raw = flow_config(redis_url, key_prefix, processor={"concurrency": 9})
    with flow_run(tmp_path, raw) as run:
        run.publish_backlog(TOPIC, "low", 3000)
        run.publish_backlog(TOPIC, "normal", 300)
        run.publish_backlog(TOPIC, "high", 300)
        with processors(sync_redis, run.config_path, count=1):
            lanes = handled_lanes(run, sync_redis, 3600)

    # High runs dry after about 300 / (5/9) = 540 events.
    first = Counter(lanes[:450])
    expected = {"high": 250, "normal": 150, "low": 50}
    for lane, share in expected.items():
        assert within(first[lane], share), (lane, first)
    assert Counter(lanes) == {"low": 3000, "normal": 300, "high": 300}


class OrderProbe:
    """Records, in the test process, which lane each handler started from."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        self.sleep_s = sleep_s
        self.lanes: list[str] = []
        self.current = 0
        self.peak = 0

    async def handle(self, event: Event) -> None:
        """The handler: note the lane and how many run at once, then sleep."""
        self.lanes.append(event.priority)
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            await asyncio.sleep(self.sleep_s)
        finally:
            self.current -= 1


async def run_backlog(
    make_config: Any, probe: OrderProbe, backlog: list[tuple[str, int]], **raw: Any
) -> None:
    """Publish ``(lane, n)`` pairs in order, then process until all are handled."""
    total = len(backlog)
    async with EventBus(make_config(**raw)) as bus:
        events = [
            bus.event(TOPIC, event_data(lane, n), priority=lane) for lane, n in backlog
        ]
        for start in range(0, total, 500):
            await bus.publish_many(events[start : start + 500])
        bus.subscribe(TOPIC)(probe.handle)
        async with running(bus):
            await wait_until(
                lambda: len(probe.lanes) >= total, 30, what=f"{total} handled"
            )
    assert len(probe.lanes) == total


async def test_only_busy_lane_gets_every_slot(make_config: Any) -> None:
    """With only ``low`` (weight 1 of 9) busy, it still fills all 4 slots."""
    probe = OrderProbe(sleep_s=0.05)
    backlog = [("low", n) for n in range(40)]
    await run_backlog(make_config, probe, backlog, processor={"concurrency": 4})

    assert probe.peak == 4
    assert probe.lanes == ["low"] * 40


async def test_zero_weight_lane_waits_until_weighted_lanes_are_empty(
    make_config: Any,
) -> None:
    """A weight-0 lane is read only when every weighted lane is empty.

    Its events are the oldest, yet none starts before the last weighted one;
    then all of them are handled.
    """
    probe = OrderProbe()
    lanes = {"high": 2, "normal": 1, "bulk": 0}
    streams = [{"name": TOPIC, "priorities": lanes}]
    backlog = [("bulk", n) for n in range(30)]
    weighted = [("high", n) for n in range(50)] + [("normal", n) for n in range(50)]
    random.Random(4).shuffle(weighted)
    await run_backlog(
        make_config,
        probe,
        backlog + weighted,
        streams=streams,
        processor={"concurrency": 4},
    )

    first_bulk = probe.lanes.index("bulk")
    assert first_bulk == 100, probe.lanes[:110]
    assert Counter(probe.lanes) == {"high": 50, "normal": 50, "bulk": 30}


async def test_strict_priority_runs_every_higher_lane_first(make_config: Any) -> None:
    """With ``strict_priority``, all high start before any normal, then low."""
    probe = OrderProbe()
    backlog = [(lane, n) for n in range(40) for lane in ("low", "normal", "high")]
    random.Random(7).shuffle(backlog)
    await run_backlog(
        make_config,
        probe,
        backlog,
        defaults={"strict_priority": True},
        processor={"concurrency": 4},
    )

    assert probe.lanes == ["high"] * 40 + ["normal"] * 40 + ["low"] * 40
