"""Retention: lanes trimmed towards ``maxlen`` without losing unacked entries.

Trimming is approximate (whole stream nodes, for speed), so a lane may keep
up to one node more than ``maxlen``; but an entry some group has not
acknowledged, or not even read yet, is never removed, however long the lane
grows. Each test checks what was removed against what was published.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from helpers import chat, running, wait_until

from titan_bus import Event, EventBus
from titan_bus.processor import Processor

TOPIC = "chat.v1"
GROUP = "titan"
MAXLEN = 100
# Approximate trimming removes whole nodes; a node holds at most 100 entries
# (stream-node-max-entries) or 4 kB, whichever comes first.
NODE_SLACK = 100


async def publish(bus: EventBus, count: int) -> list[str]:
    """Publish ``count`` chat events; return their stream entry ids in order."""
    await bus.publish_many([(TOPIC, chat(str(n))) for n in range(count)])
    lane = bus.keys.lane(TOPIC, "normal")

    return [entry_id.decode() for entry_id, _ in await bus.client.xrange(lane)]


def maintainer(bus: EventBus) -> Processor:
    """A processor of the topic, not running, whose maintenance tests call."""

    @bus.subscribe(TOPIC)
    async def on_chat(event: Event) -> None:
        pass

    return bus.make_processor(consumer="maintainer")


def stored(client: redis.Redis, lane: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(lane)]


def assert_trimmed_oldest_first(published: list[str], kept: list[str]) -> None:
    """What is left is the newest part of what was published, in order."""
    assert kept == published[len(published) - len(kept) :]


@pytest.mark.parametrize(
    ("read", "acked", "laggard"),
    [(500, 0, False), (500, 500, True), (250, 250, False)],
    ids=["all-unacked", "other-group-read-nothing", "half-unread"],
)
async def test_nothing_unread_or_unacked_is_trimmed(
    make_config: Any, sync_redis: redis.Redis, read: int, acked: int, laggard: bool
) -> None:
    async with EventBus(make_config(defaults={"maxlen": MAXLEN})) as bus:
        lane = bus.keys.lane(TOPIC, "normal")
        processor = maintainer(bus)
        await processor.ensure_groups()
        if laggard:
            await bus.client.xgroup_create(lane, "laggard", id="0")
        published = await publish(bus, 500)
        sync_redis.xreadgroup(GROUP, "worker", {lane: ">"}, count=read)
        if acked:
            sync_redis.xack(lane, GROUP, *published[:acked])

        await processor._housekeeper.maintain()

    kept = stored(sync_redis, lane)
    assert_trimmed_oldest_first(published, kept)
    needed = published if laggard else published[acked:]
    assert set(needed) <= set(kept)
    if not laggard and acked:
        assert len(kept) < 500, "nothing was trimmed below the unread entries"


async def test_trim_stops_at_the_oldest_pending_entry_then_catches_up(
    make_config: Any, sync_redis: redis.Redis
) -> None:
    async with EventBus(make_config(defaults={"maxlen": MAXLEN})) as bus:
        lane = bus.keys.lane(TOPIC, "normal")
        processor = maintainer(bus)
        await processor.ensure_groups()
        published = await publish(bus, 500)
        sync_redis.xreadgroup(GROUP, "worker", {lane: ">"}, count=500)
        unacked = published[100:150]
        sync_redis.xack(lane, GROUP, *published[:100], *published[150:])

        await processor._housekeeper.maintain()
        kept = stored(sync_redis, lane)
        assert set(unacked) <= set(kept)
        assert len(kept) < 500, "nothing was trimmed below the oldest pending entry"
        assert_trimmed_oldest_first(published, kept)

        sync_redis.xack(lane, GROUP, *unacked)
        await processor._housekeeper.maintain()

    kept = stored(sync_redis, lane)
    assert MAXLEN <= len(kept) <= MAXLEN + NODE_SLACK
    assert_trimmed_oldest_first(published, kept)


async def test_lane_without_any_group_is_trimmed_plainly(
    make_config: Any, sync_redis: redis.Redis
) -> None:
    async with EventBus(make_config(defaults={"maxlen": MAXLEN})) as bus:
        lane = bus.keys.lane(TOPIC, "normal")
        published = await publish(bus, 500)
        processor = maintainer(bus)

        await processor._housekeeper.maintain()

    kept = stored(sync_redis, lane)
    assert MAXLEN <= len(kept) <= MAXLEN + NODE_SLACK
    assert_trimmed_oldest_first(published, kept)


async def test_running_processor_trims_handled_lanes_in_the_background(
    make_config: Any, sync_redis: redis.Redis
) -> None:
    config = make_config(
        defaults={"maxlen": MAXLEN}, processor={"retention_interval_s": 0.3}
    )
    handled: set[str] = set()

    async with EventBus(config) as bus:
        lane = bus.keys.lane(TOPIC, "normal")

        @bus.subscribe(TOPIC)
        async def on_chat(event: Event) -> None:
            handled.add(event.id)

        async with running(bus):
            published = await publish(bus, 500)
            await wait_until(lambda: len(handled) == 500, what="500 handled")
            await wait_until(
                lambda: sync_redis.xlen(lane) <= MAXLEN + NODE_SLACK,
                timeout_s=10,
                what="the lane trimmed by the maintenance loop",
            )

    kept = stored(sync_redis, lane)
    assert len(kept) >= MAXLEN
    assert_trimmed_oldest_first(published, kept)
    assert sync_redis.xpending(lane, GROUP)["pending"] == 0
