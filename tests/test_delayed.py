"""Delayed and scheduled events: released once, never early, kept across restarts.

Due times are computed from Redis's clock read just before each publish, and
handler starts are recorded with Redis's clock by the processor subprocesses
(``tests/apps/flow_processor.py``), so "never early" is checked on one clock,
to the millisecond, with no allowance.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flow_helpers import (
    event_data,
    flow_config,
    flow_run,
    processors,
    read_log,
    redis_time_us,
    start_processor,
    wait_ready,
)
from servers import wait_for

from titan_bus import EventBus, ValidationError

pytestmark = pytest.mark.timeout(60)

TOPIC = "system.v1"
LANES = ("high", "normal", "low")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def redis_ms(client: redis.Redis) -> int:
    """Return Redis's clock in whole Unix milliseconds (rounded down)."""
    return redis_time_us(client) // 1000


@pytest.mark.slow
def test_thousand_delayed_events_across_three_processors(
    tmp_path: Path, redis_url: str, key_prefix: str, sync_redis: redis.Redis
) -> None:
    """1,000 events delayed 0.2-3 s (``delay_s`` or ``at``), three processors.

    Each is released into its own lane exactly once, handled exactly once,
    and neither released nor handled before it was due.
    """
    rng = random.Random(1000)
    raw = flow_config(redis_url, key_prefix)
    with (
        flow_run(tmp_path, raw) as run,
        processors(sync_redis, run.config_path, count=3),
    ):
        due: dict[str, int] = {}
        lane_of: dict[str, str] = {}
        for n in range(1000):
            delay_ms, lane = rng.randint(200, 3000), rng.choice(LANES)
            data = event_data(lane, n)
            published_ms = redis_ms(sync_redis)
            if n % 2:
                when = EPOCH + timedelta(milliseconds=published_ms + delay_ms)
                event_id = run.publisher.publish(TOPIC, data, priority=lane, at=when)
            else:
                event_id = run.publisher.publish(
                    TOPIC, data, priority=lane, delay_s=delay_ms / 1000
                )
            due[event_id] = published_ms + delay_ms
            lane_of[event_id] = lane

        wait_for(
            lambda: sync_redis.hlen(run.flow.counts) >= 1000,
            20,
            what="1,000 delayed events handled",
        )
        records = read_log(sync_redis, run.flow)
        lanes = {lane: run.keys.lane(TOPIC, lane) for lane in LANES}
        released = {lane: sync_redis.xrange(key) for lane, key in lanes.items()}
        waiting = sync_redis.zcard(run.keys.delayed(TOPIC))

    assert waiting == 0
    assert sum(len(entries) for entries in released.values()) == 1000
    for lane, entries in released.items():
        for entry_id, _ in entries:
            assert int(entry_id.decode().split("-")[0]) >= min(due.values())
        assert Counter(lane_of.values())[lane] == len(entries)

    counts = Counter(r.event_id for r in records)
    assert set(counts) == set(due)
    assert set(counts.values()) == {1}, "an event was handled more than once"
    early = [
        (r.event_id, due[r.event_id] - r.time_us // 1000)
        for r in records
        if r.time_us // 1000 < due[r.event_id]
    ]
    assert not early, f"handled before due (event, ms early): {early[:5]}"
    assert all(r.lane == lane_of[r.event_id] for r in records)
    assert len({r.consumer for r in records}) >= 2, "one processor did all"


@pytest.mark.slow
def test_delayed_event_survives_a_processor_restart(
    tmp_path: Path, redis_url: str, key_prefix: str, sync_redis: redis.Redis
) -> None:
    """Due while no processor runs, the event waits in Redis; the next one runs it."""
    raw = flow_config(redis_url, key_prefix)
    with flow_run(tmp_path, raw) as run:
        delayed_key = run.keys.delayed(TOPIC)
        with processors(sync_redis, run.config_path, count=1):
            published_ms = redis_ms(sync_redis)
            event_id = run.publisher.publish(TOPIC, event_data("high", 1), delay_s=2)
        due_ms = published_ms + 2000

        wait_for(
            lambda: redis_ms(sync_redis) >= due_ms + 500,
            5,
            what="the event to be overdue",
        )
        assert sync_redis.zcard(delayed_key) == 1
        assert sync_redis.xlen(run.keys.lane(TOPIC, "normal")) == 0
        assert sync_redis.hlen(run.flow.counts) == 0

        second = start_processor(run.config_path, consumer="p2")
        try:
            wait_ready(sync_redis, run.flow, [second])
            wait_for(
                lambda: sync_redis.hlen(run.flow.counts) == 1,
                5,
                what="the overdue event handled",
            )
        finally:
            second.stop()
        records = read_log(sync_redis, run.flow)

    assert [(r.event_id, r.consumer) for r in records] == [(event_id, "p2")]
    assert records[0].time_us // 1000 >= due_ms + 500
    assert sync_redis.zcard(delayed_key) == 0


def delays_just_under_whole_ms() -> list[float]:
    """Return delays like 1.001 s whose float times 1000 falls just under 1001."""
    found = [ms / 1000 for ms in range(1000, 3000) if ms / 1000 * 1000 < ms]

    return found[:20]


async def test_delay_in_seconds_is_never_rounded_down(make_config: Any) -> None:
    """A delay is due no sooner than Redis's time at publish plus the delay.

    Floating point makes ``1.001 * 1000`` come out as ``1000.999...``; the
    delay must still be held for 1001 ms, not 1000.
    """
    delays = delays_just_under_whole_ms()
    assert len(delays) == 20
    async with EventBus(make_config()) as bus:
        delayed_key = bus.keys.delayed(TOPIC)
        short = []
        for delay_s in delays:
            seconds, micros = await bus.client.time()
            before_ms = (int(seconds) * 1_000_000 + int(micros)) // 1000
            await bus.publish(TOPIC, {"name": "later"}, delay_s=delay_s)
            (_, due_ms), *_ = await bus.client.zrange(
                delayed_key, -1, -1, withscores=True
            )
            await bus.client.delete(delayed_key)
            held_ms = round(delay_s * 1000)
            if due_ms < before_ms + held_ms:
                short.append((delay_s, before_ms + held_ms - due_ms))

    assert not short, f"due too soon (delay s, ms short): {short}"


async def test_delay_with_idempotency_key_is_refused(bus: EventBus) -> None:
    """``delay_s`` and ``idempotency_key`` together raise; nothing is stored."""
    with pytest.raises(ValidationError, match="idempotency key"):
        await bus.publish(TOPIC, {"name": "x"}, delay_s=1, idempotency_key="k1")
    at = datetime.now(UTC) + timedelta(seconds=5)
    with pytest.raises(ValidationError, match="idempotency key"):
        await bus.publish(TOPIC, {"name": "x"}, at=at, idempotency_key="k2")

    assert await bus.client.zcard(bus.keys.delayed(TOPIC)) == 0
    assert await bus.client.xlen(bus.keys.lane(TOPIC, "normal")) == 0


async def test_bad_schedules_are_refused(bus: EventBus) -> None:
    """A naive ``at``, both ``at`` and ``delay_s``, or a negative delay raise."""
    naive = datetime.now() + timedelta(seconds=5)  # naive on purpose
    with pytest.raises(ValidationError, match="timezone-aware"):
        await bus.publish(TOPIC, {"name": "x"}, at=naive)
    aware = datetime.now(UTC) + timedelta(seconds=5)
    with pytest.raises(ValidationError, match="not both"):
        await bus.publish(TOPIC, {"name": "x"}, at=aware, delay_s=5)
    with pytest.raises(ValidationError, match="delay_s"):
        await bus.publish(TOPIC, {"name": "x"}, delay_s=-1)

    assert await bus.client.zcard(bus.keys.delayed(TOPIC)) == 0
