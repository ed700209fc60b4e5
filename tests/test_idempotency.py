"""Idempotency: an event handled at most once per group, a key published once.

A redelivery (the same event id arriving again in a lane, as after a
failover that lost an ack) must not run the handlers again within the
group's window; it is counted and acknowledged. A publisher's idempotency
key makes a second publish return the first event's id without writing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis
from helpers import chat, running, wait_until

from titan_bus import Event, EventBus, SyncPublisher

TOPIC = "chat.v1"
GROUP = "titan"


class Counter:
    """A handler that counts how often each event id was handled."""

    def __init__(self, bus: EventBus) -> None:
        self.handled: dict[str, int] = {}

        @bus.subscribe(TOPIC)
        async def on_chat(event: Event) -> None:
            self.handled[event.id] = self.handled.get(event.id, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.handled.values())


async def pending(bus: EventBus) -> int:
    lane = bus.keys.lane(TOPIC, "normal")
    return int((await bus.client.xpending(lane, GROUP))["pending"])


async def redeliver(bus: EventBus, times: int = 1) -> None:
    """Write the first stored entry of the lane again, ``times`` times."""
    lane = bus.keys.lane(TOPIC, "normal")
    [(_, fields)] = await bus.client.xrange(lane, count=1)
    for _ in range(times):
        await bus.client.xadd(lane, fields)


async def test_redelivered_event_is_not_handled_again(bus: EventBus) -> None:
    counter = Counter(bus)
    async with running(bus) as processor:
        event_id = await bus.publish(TOPIC, chat())
        await wait_until(lambda: counter.total == 1, what="first delivery")
        await wait_until(lambda: _no_pending(bus), what="first ack")

        await redeliver(bus)
        await wait_until(lambda: processor.duplicates == 1, what="duplicate seen")
        await wait_until(lambda: _no_pending(bus), what="duplicate acked")

    assert counter.handled == {event_id: 1}


async def _no_pending(bus: EventBus) -> bool:
    return await pending(bus) == 0


async def test_copies_read_in_one_batch_are_handled_once(bus: EventBus) -> None:
    """The original and two copies are already in the lane when reading starts."""
    counter = Counter(bus)
    event_id = await bus.publish(TOPIC, chat())
    await redeliver(bus, times=2)

    async with running(bus) as processor:
        await wait_until(lambda: counter.total >= 1, what="the event handled")
        await wait_until(lambda: _no_pending(bus), what="all three acked")
        assert processor.duplicates == 2

    assert counter.handled == {event_id: 1}


async def test_copy_read_while_the_original_runs_is_not_handled_again(
    bus: EventBus,
) -> None:
    gate = asyncio.Event()
    handled: list[str] = []

    @bus.subscribe(TOPIC)
    async def slow_first(event: Event) -> None:
        handled.append(event.id)
        await gate.wait()

    async with running(bus):
        event_id = await bus.publish(TOPIC, chat())
        await wait_until(lambda: len(handled) == 1, what="the original running")
        await redeliver(bus)
        await wait_until(lambda: _both_read(bus), what="the copy read")
        gate.set()
        await wait_until(lambda: _no_pending(bus), what="both acked")

    assert handled == [event_id]


async def _both_read(bus: EventBus) -> bool:
    return await pending(bus) == 2


async def test_duplicate_is_handled_again_once_the_window_has_passed(
    make_config: Any,
) -> None:
    config = make_config(
        processor={"idempotency_window_s": 0.3, "retention_interval_s": 0.2}
    )
    async with EventBus(config) as bus:
        counter = Counter(bus)
        async with running(bus) as processor:
            event_id = await bus.publish(TOPIC, chat())
            await wait_until(lambda: counter.total == 1, what="first delivery")
            await wait_until(
                lambda: _marked(bus, event_id), what="the handled mark written"
            )
            await wait_until(
                lambda: _unmarked(bus, event_id), what="maintenance to drop the mark"
            )

            await redeliver(bus)
            await wait_until(lambda: counter.total == 2, what="handled again")
            assert processor.duplicates == 0


async def _marked(bus: EventBus, event_id: str) -> bool:
    done = bus.keys.done(TOPIC, GROUP)
    return await bus.client.zscore(done, event_id) is not None


async def _unmarked(bus: EventBus, event_id: str) -> bool:
    return not await _marked(bus, event_id)


async def _gone(bus: EventBus, key: str) -> bool:
    return not await bus.client.exists(key)


async def test_same_idempotency_key_stores_one_event(
    bus: EventBus, sync_redis: redis.Redis
) -> None:
    lane = bus.keys.lane(TOPIC, "normal")
    first = await bus.publish(TOPIC, chat("a"), idempotency_key="order-17")
    again = await bus.publish(TOPIC, chat("a"), idempotency_key="order-17")
    other = await bus.publish(TOPIC, chat("a"), idempotency_key="order-18")

    with SyncPublisher(bus.config) as publisher:
        from_sync = publisher.publish(TOPIC, chat("a"), idempotency_key="order-17")
        sync_first = publisher.publish(TOPIC, chat("b"), idempotency_key="sync-1")
        sync_again = publisher.publish(TOPIC, chat("b"), idempotency_key="sync-1")

    assert first == again == from_sync
    assert sync_first == sync_again
    assert len({first, other, sync_first}) == 3
    assert sync_redis.xlen(lane) == 3


async def test_idempotency_key_is_forgotten_after_the_window(
    make_config: Any, sync_redis: redis.Redis
) -> None:
    config = make_config(processor={"idempotency_window_s": 0.3})
    async with EventBus(config) as bus:
        first = await bus.publish(TOPIC, chat(), idempotency_key="k")
        key = bus.keys.publish_key(TOPIC, "k")
        await wait_until(lambda: _gone(bus, key), what="the key to expire")
        second = await bus.publish(TOPIC, chat(), idempotency_key="k")

        assert first != second
        assert sync_redis.xlen(bus.keys.lane(TOPIC, "normal")) == 2
