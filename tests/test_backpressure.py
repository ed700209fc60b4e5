"""Backpressure: ``max_backlog`` refuses or blocks publishes; ``maxlen`` never does.

Also the other half of backpressure: a processor never runs more handlers at
once than ``processor.concurrency``, however deep the backlog in its lanes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from flow_helpers import (
    event_data,
    flow_config,
    flow_run,
    processors,
)
from helpers import running, wait_until
from servers import wait_for

from titan_bus import Event, EventBus
from titan_bus.errors import BacklogFullError

pytestmark = pytest.mark.timeout(60)

TOPIC = "system.v1"
LANES = ("high", "normal", "low")


def capped(max_backlog: int, **settings: Any) -> list[dict[str, Any]]:
    """Return a ``streams:`` list capping ``system.v1`` at ``max_backlog``."""
    return [{"name": TOPIC, "max_backlog": max_backlog, **settings}]


async def stored(bus: EventBus, topic: str = TOPIC) -> int:
    """Return how many entries the lanes of ``topic`` hold."""
    return sum([await bus.client.xlen(bus.keys.lane(topic, lane)) for lane in LANES])


async def publish_ten(bus: EventBus) -> None:
    """Publish 10 events spread over the three lanes, in one round trip."""
    events = [
        bus.event(TOPIC, event_data(lane, n), priority=lane)
        for n, lane in enumerate(LANES * 3 + ("high",))
    ]
    await bus.publish_many(events)


async def test_reject_refuses_the_eleventh_unacked_event(make_config: Any) -> None:
    """At ``max_backlog: 10`` (reject), the 11th publish raises, naming the
    topic, and writes nothing; other topics are not held back."""
    async with EventBus(make_config(streams=capped(10))) as bus:
        await publish_ten(bus)

        with pytest.raises(BacklogFullError) as caught:
            await bus.publish(TOPIC, event_data("low", 11), priority="low")
        message = str(caught.value)
        assert TOPIC in message and "max_backlog=10" in message
        assert await stored(bus) == 10

        await bus.publish(
            "chat.v1", {"conversation_id": "c", "role": "user", "text": "t"}
        )
        assert await stored(bus, "chat.v1") == 1


async def test_acknowledged_events_free_the_backlog(make_config: Any) -> None:
    """Only unacknowledged events count: once handled, publishing goes on.

    A batch that would pass the cap is refused whole.
    """
    async with EventBus(make_config(streams=capped(10))) as bus:
        handled: list[str] = []

        async def handle(event: Event) -> None:
            handled.append(event.id)

        bus.subscribe(TOPIC)(handle)
        await publish_ten(bus)
        async with running(bus):
            await wait_until(lambda: len(handled) == 10, 10, what="10 handled")
        # A stopped processor has written every acknowledgement.
        await publish_ten(bus)

        batch = [bus.event(TOPIC, event_data("normal", n)) for n in range(2)]
        with pytest.raises(BacklogFullError):
            await bus.publish_many(batch)
        assert await stored(bus) == 20


async def test_block_waits_until_a_processor_drains(make_config: Any) -> None:
    """With ``backlog_policy: block``, the 11th publish waits while nobody
    handles events, then goes through once a processor catches up."""
    streams = capped(10, backlog_policy="block", backlog_timeout_s=10)
    async with EventBus(make_config(streams=streams)) as bus:
        bus.subscribe(TOPIC)(ignore)
        await publish_ten(bus)
        waiting = asyncio.create_task(bus.publish(TOPIC, event_data("high", 11)))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "publish did not wait for the backlog"
        assert await stored(bus) == 10

        async with running(bus):
            event_id = await asyncio.wait_for(waiting, timeout=10)
        assert event_id
        assert await stored(bus) == 11


async def test_block_gives_up_after_backlog_timeout(make_config: Any) -> None:
    """With nobody draining, a blocked publish raises after ``backlog_timeout_s``."""
    streams = capped(10, backlog_policy="block", backlog_timeout_s=0.5)
    async with EventBus(make_config(streams=streams)) as bus:
        await publish_ten(bus)

        started = time.monotonic()
        with pytest.raises(BacklogFullError, match=TOPIC):
            await bus.publish(TOPIC, event_data("high", 11))
        waited_s = time.monotonic() - started

        assert 0.5 <= waited_s < 2.0, waited_s
        assert await stored(bus) == 10


async def test_maxlen_never_refuses_a_publish(make_config: Any) -> None:
    """``maxlen`` is retention, not a cap: 50 publishes to a lane of maxlen 5
    all succeed, and the write itself trims nothing."""
    streams = [{"name": TOPIC, "maxlen": 5}]
    async with EventBus(make_config(streams=streams)) as bus:
        for n in range(50):
            await bus.publish(TOPIC, event_data("normal", n))

        assert await stored(bus) == 50


async def ignore(event: Event) -> None:
    """A handler that does nothing."""


@pytest.mark.slow
def test_processor_never_runs_more_than_its_concurrency(
    tmp_path: Path, redis_url: str, key_prefix: str, sync_redis: redis.Redis
) -> None:
    """Deep backlogs in three lanes, ``concurrency: 5``: never 6 handlers at once.

    The processor subprocess counts its running handlers in Redis; the most
    seen at once is exactly 5 (all slots used, never one more).
    """
    raw = flow_config(redis_url, key_prefix, processor={"concurrency": 5})
    with flow_run(tmp_path, raw) as run:
        for lane in LANES:
            run.publish_backlog(TOPIC, lane, 100)
        with processors(sync_redis, run.config_path, count=1, sleep_s=0.005):
            wait_for(
                lambda: sync_redis.hlen(run.flow.counts) >= 300,
                30,
                what="300 events handled",
            )
        peak = int(sync_redis.get(run.flow.peak("p1")) or 0)
        running_now = int(sync_redis.get(run.flow.running("p1")) or 0)

    assert peak == 5
    assert running_now == 0
