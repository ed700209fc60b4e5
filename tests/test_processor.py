"""The processor on real Redis: delivery, acks, concurrency, bad entries, shutdown."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from helpers import (
    ConcurrencyProbe,
    chat,
    pending_count,
    pending_is,
    running,
    stop_and_wait,
    stream_length_is,
    wait_until,
)
from redis.exceptions import ResponseError

from titan_bus import Event, EventBus
from titan_bus.codec import canonical_json, encode_entry, envelope_bytes

QUICK_RETRIES = {"retry_base_s": 0.02, "retry_max_s": 0.05}


def lane_key(bus: EventBus, lane: str = "normal", topic: str = "chat.v1") -> str:
    return bus.keys.lane(topic, lane)


async def dead_letters(bus: EventBus, topic: str = "chat.v1") -> list[dict[str, Any]]:
    """Return the dead letters of ``topic`` with ``failure`` parsed from JSON."""
    entries = await bus.client.xrange(bus.keys.dead_letters(topic))
    return [
        {k.decode(): v for k, v in fields.items()}
        | {"failure": json.loads(fields[b"failure"])}
        for _, fields in entries
    ]


async def test_events_published_before_the_first_start_are_delivered(
    bus: EventBus,
) -> None:
    published = [await bus.publish("chat.v1", chat(str(n))) for n in range(3)]
    seen: list[str] = []

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        seen.append(event.id)

    async with running(bus):
        await wait_until(lambda: len(seen) == 3, what="3 early events handled")

    assert sorted(seen) == sorted(published)


async def test_handler_receives_the_event_as_published(bus: EventBus) -> None:
    seen: list[Event] = []

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        seen.append(event)

    async with running(bus):
        event_id = await bus.publish(
            "chat.v1", chat("hi"), priority="high", source="tests", correlation_id="k"
        )
        await wait_until(lambda: bool(seen), what="event handled")

    [event] = seen
    assert (event.id, event.topic, event.priority) == (event_id, "chat.v1", "high")
    assert (event.source, event.attempt, event.data) == ("tests", 1, chat("hi"))
    assert event.correlation_id == "k"
    assert event.time.tzinfo is not None


async def test_handled_event_is_acked(bus: EventBus) -> None:
    handled = asyncio.Event()

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        handled.set()

    async with running(bus):
        await bus.publish("chat.v1", chat())
        await asyncio.wait_for(handled.wait(), timeout=5)
        await wait_until(
            pending_is(bus, lane_key(bus), 0),
            what="ack",
        )


async def test_event_stays_pending_while_its_handler_runs(bus: EventBus) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        started.set()
        await release.wait()

    async with running(bus):
        await bus.publish("chat.v1", chat())
        await asyncio.wait_for(started.wait(), timeout=5)
        await asyncio.sleep(0.1)
        assert await pending_count(bus, lane_key(bus)) == 1

        release.set()
        await wait_until(
            pending_is(bus, lane_key(bus), 0),
            what="ack after the handler returned",
        )


async def test_failed_event_comes_back_for_another_attempt(
    make_config: Any,
) -> None:
    attempts: dict[str, list[int]] = {}
    async with EventBus(make_config(defaults=QUICK_RETRIES)) as bus:

        @bus.subscribe("chat.v1")
        async def on_chat(event: Event) -> None:
            attempts.setdefault(event.data["text"], []).append(event.attempt)
            if event.data["text"] == "flaky" and event.attempt == 1:
                raise RuntimeError("first try fails")

        async with running(bus):
            await bus.publish("chat.v1", chat("flaky"))
            await wait_until(lambda: attempts.get("flaky") == [1, 2], what="retry")
            await wait_until(
                pending_is(bus, lane_key(bus), 0),
                what="ack of the retry",
            )

        assert await dead_letters(bus) == []


async def test_processor_keeps_handling_after_a_handler_raises(
    make_config: Any,
) -> None:
    seen: list[str] = []
    config = make_config(defaults={"retry_limit": 0})
    async with EventBus(config) as bus:

        @bus.subscribe("chat.v1")
        async def on_chat(event: Event) -> None:
            seen.append(event.data["text"])
            if event.data["text"] == "boom":
                raise RuntimeError("handler exploded")

        async with running(bus) as processor:
            await bus.publish("chat.v1", chat("boom"))
            await wait_until(lambda: "boom" in seen, what="failing event")
            await bus.publish("chat.v1", chat("after"))
            await wait_until(lambda: "after" in seen, what="later event")
            assert not processor.stopping

        [dead] = await dead_letters(bus)
        assert dead["failure"]["error_type"] == "RuntimeError"
        assert dead["failure"]["error_message"] == "handler exploded"


async def test_concurrency_limit_is_never_exceeded(make_config: Any) -> None:
    probe = ConcurrencyProbe()
    async with EventBus(make_config(processor={"concurrency": 3})) as bus:

        @bus.subscribe("chat.v1")
        async def slow(event: Event) -> None:
            async with probe.inside():
                await asyncio.sleep(0.03)

        await bus.publish_many([("chat.v1", chat(str(n))) for n in range(15)])
        async with running(bus):
            await wait_until(lambda: probe.finished == 15, what="15 handled")

    assert probe.peak == 3


async def test_concurrency_limit_holds_with_events_in_several_lanes(
    make_config: Any,
) -> None:
    probe = ConcurrencyProbe()
    async with EventBus(make_config(processor={"concurrency": 1})) as bus:

        @bus.subscribe("chat.v1")
        async def slow(event: Event) -> None:
            async with probe.inside():
                await asyncio.sleep(0.05)

        # Nothing in the high lane: the first planned read (high) comes back
        # empty, and the blocking read that follows sees both other lanes.
        await bus.publish("chat.v1", chat("n"), priority="normal")
        await bus.publish("chat.v1", chat("l"), priority="low")
        async with running(bus):
            await wait_until(lambda: probe.finished == 2, what="2 handled")

    assert probe.peak == 1


async def test_concurrency_limit_holds_when_re_reading_own_pending(
    make_config: Any,
) -> None:
    hold = asyncio.Event()
    first = make_config(processor={"concurrency": 6, "shutdown_grace_s": 0.05})
    async with EventBus(first) as bus:

        @bus.subscribe("chat.v1")
        async def stuck(event: Event) -> None:
            await hold.wait()

        await bus.publish_many([("chat.v1", chat(str(n))) for n in range(6)])
        async with running(bus, consumer="worker-1"):
            await wait_until(
                pending_is(bus, lane_key(bus), 6),
                what="6 in flight",
            )

    probe = ConcurrencyProbe()
    async with EventBus(make_config(processor={"concurrency": 2})) as bus:

        @bus.subscribe("chat.v1")
        async def slow(event: Event) -> None:
            async with probe.inside():
                await asyncio.sleep(0.05)

        async with running(bus, consumer="worker-1"):
            await wait_until(lambda: probe.finished == 6, what="6 handled")

    assert probe.peak <= 2


def record_handled(bus: EventBus, name: str, handled: list[tuple[str, str]]) -> None:
    """Subscribe a slightly slow chat.v1 handler that notes ``(name, event id)``."""

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        await asyncio.sleep(0.01)
        handled.append((name, event.id))


async def test_two_processors_share_the_work_exactly_once(make_config: Any) -> None:
    handled: list[tuple[str, str]] = []
    config = make_config(processor={"concurrency": 2})
    async with EventBus(config) as one, EventBus(config) as two:
        record_handled(one, "one", handled)
        record_handled(two, "two", handled)

        async with running(one, consumer="one"), running(two, consumer="two"):
            ids = await one.publish_many([("chat.v1", chat(str(n))) for n in range(40)])
            await wait_until(lambda: len(handled) >= 40, what="40 handled")
            await wait_until(pending_is(one, lane_key(one), 0), what="all acked")

    assert sorted(event_id for _, event_id in handled) == sorted(ids)
    assert {name for name, _ in handled} == {"one", "two"}


def valid_fields() -> dict[bytes, bytes]:
    event = Event(source="t", type="t", topic="chat.v1", data=chat("raw"))
    fields: dict[bytes, bytes] = {}
    for key, value in encode_entry(event).items():
        assert isinstance(key, bytes) and isinstance(value, bytes)
        fields[key] = value
    return fields


MALFORMED = {
    "missing-event-field": ({b"hello": b"world"}, "no 'event' field"),
    "not-json": ({b"event": b"{nope", b"attempt": b"1"}, "Invalid JSON"),
    "not-utf8": ({b"event": b"\xff\xfe\xfa", b"attempt": b"1"}, "Invalid JSON"),
    "attempt-not-int": (
        {**valid_fields(), b"attempt": b"x"},
        "attempt is not an integer",
    ),
    "not-an-envelope": (
        {b"event": canonical_json({"topic": "chat.v1"}), b"attempt": b"1"},
        "invalid envelope",
    ),
}


@pytest.mark.parametrize(
    ("fields", "reason"), list(MALFORMED.values()), ids=list(MALFORMED)
)
async def test_malformed_entry_is_dead_lettered_and_acked(
    bus: EventBus, fields: dict[bytes, bytes], reason: str
) -> None:
    seen: list[str] = []

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        seen.append(event.data["text"])

    await bus.client.xadd(lane_key(bus), dict(fields))
    async with running(bus):
        await bus.publish("chat.v1", chat("valid"))
        await wait_until(lambda: seen == ["valid"], what="valid event after it")
        await wait_until(
            pending_is(bus, lane_key(bus), 0),
            what="both acked",
        )

    [dead] = await dead_letters(bus)
    assert dead["failure"]["error_type"] == "MalformedEntryError"
    assert reason in dead["failure"]["error_message"]
    assert dead["failure"]["lane"] == "normal"


async def test_malformed_entry_keeps_its_raw_fields_in_dead_letters(
    bus: EventBus,
) -> None:
    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        pass

    await bus.client.xadd(lane_key(bus), {b"hello": b"w\xffrld"})
    async with running(bus):
        await wait_until(
            stream_length_is(bus, bus.keys.dead_letters("chat.v1")),
            what="dead letter",
        )

    [dead] = await dead_letters(bus)
    assert json.loads(dead["raw"]) == {"hello": "w\\xffrld"}


async def test_entry_whose_time_overflows_is_dead_lettered(bus: EventBus) -> None:
    seen: list[str] = []

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        seen.append(event.data["text"])

    body = json.loads(valid_fields()[b"event"])
    body["time"] = "0001-01-01T00:00:00+01:00"
    await bus.client.xadd(lane_key(bus), {b"event": canonical_json(body)})
    runner = asyncio.create_task(bus.run())
    try:
        await bus.publish("chat.v1", chat("valid"))
        await wait_until(
            lambda: seen == ["valid"] or runner.done(), what="valid event after it"
        )
        assert not runner.done(), f"processor ended: {runner.exception()!r}"
    finally:
        await stop_and_wait(bus, runner, timeout_s=5)

    assert len(await dead_letters(bus)) == 1


async def test_handler_timeout_counts_as_failure(make_config: Any) -> None:
    finished: list[int] = []
    config = make_config(defaults={"handler_timeout_s": 0.1, **QUICK_RETRIES})
    async with EventBus(config) as bus:

        @bus.subscribe("chat.v1")
        async def slow_first_time(event: Event) -> None:
            if event.attempt == 1:
                await asyncio.sleep(5)
            finished.append(event.attempt)

        async with running(bus):
            await bus.publish("chat.v1", chat())
            await wait_until(lambda: finished == [2], what="second attempt")


async def test_handler_timeout_on_last_attempt_is_dead_lettered(
    make_config: Any,
) -> None:
    config = make_config(defaults={"handler_timeout_s": 0.1, "retry_limit": 0})
    async with EventBus(config) as bus:

        @bus.subscribe("chat.v1")
        async def too_slow(event: Event) -> None:
            await asyncio.sleep(5)

        async with running(bus):
            await bus.publish("chat.v1", chat())
            await wait_until(
                stream_length_is(bus, bus.keys.dead_letters("chat.v1")),
                what="dead letter",
            )

        [dead] = await dead_letters(bus)
        assert dead["failure"]["error_type"] == "TimeoutError"
        assert "handler_timeout_s=0.1" in dead["failure"]["error_message"]


async def test_stop_lets_in_flight_handlers_finish_and_acks_them(
    bus: EventBus,
) -> None:
    started: list[str] = []
    finished: list[str] = []

    @bus.subscribe("chat.v1")
    async def slowish(event: Event) -> None:
        started.append(event.id)
        await asyncio.sleep(0.3)
        finished.append(event.id)

    runner = asyncio.create_task(bus.run())
    await bus.publish_many([("chat.v1", chat(str(n))) for n in range(3)])
    await wait_until(lambda: len(started) == 3, what="3 handlers running")
    await stop_and_wait(bus, runner, timeout_s=bus.config.processor.shutdown_grace_s)

    assert sorted(finished) == sorted(started)
    assert await pending_count(bus, lane_key(bus)) == 0


async def stop_as_handlers_finish(bus: EventBus) -> None:
    """Stop ``bus`` while three handlers are running; fail if run() hangs."""
    started: list[str] = []

    @bus.subscribe("chat.v1")
    async def slowish(event: Event) -> None:
        started.append(event.id)
        await asyncio.sleep(0.3)

    runner = asyncio.create_task(bus.run())
    await bus.publish_many([("chat.v1", chat(str(n))) for n in range(3)])
    await wait_until(lambda: len(started) == 3, what="3 handlers running")
    grace = bus.config.processor.shutdown_grace_s
    await stop_and_wait(bus, runner, timeout_s=grace + 1)


async def test_run_returns_when_stopped_as_handlers_finish(
    make_config: Any,
) -> None:
    # stop() lands while the acks of the handlers that just finished are being
    # written; cancelling a task inside a redis-py call can be lost on Python
    # 3.11 (asyncio.wait_for, CPython gh-86296), so run() must not rely on it.
    for _ in range(3):
        async with EventBus(make_config()) as bus:
            await stop_as_handlers_finish(bus)


async def test_stop_leaves_handlers_past_the_grace_pending(make_config: Any) -> None:
    finished: list[str] = []
    config = make_config(processor={"shutdown_grace_s": 0.1})
    async with EventBus(config) as bus:
        started = asyncio.Event()

        @bus.subscribe("chat.v1")
        async def hangs(event: Event) -> None:
            started.set()
            await asyncio.sleep(30)
            finished.append(event.id)

        runner = asyncio.create_task(bus.run())
        await bus.publish("chat.v1", chat())
        await asyncio.wait_for(started.wait(), timeout=5)
        bus.stop()
        await asyncio.wait_for(runner, timeout=3)

        assert finished == []
        assert await pending_count(bus, lane_key(bus)) == 1


def group_exists(bus: EventBus, key: str) -> Callable[[], Awaitable[bool]]:
    """Return a predicate: the bus's consumer group exists on stream ``key``."""

    async def check() -> bool:
        try:
            groups = await bus.client.xinfo_groups(key)
        except ResponseError:
            return False
        return any(g["name"].decode() == bus.config.processor.group for g in groups)

    return check


def record_texts(bus: EventBus, seen: list[str]) -> None:
    """Subscribe a chat.v1 handler that notes each event's text."""

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        seen.append(event.data["text"])


async def test_processor_recreates_a_deleted_stream_and_carries_on(
    bus: EventBus, sync_redis: redis.Redis
) -> None:
    seen: list[str] = []
    record_texts(bus, seen)

    async with running(bus) as processor:
        await bus.publish("chat.v1", chat("before"))
        await wait_until(lambda: seen == ["before"], what="first event")
        sync_redis.delete(lane_key(bus))
        await wait_until(group_exists(bus, lane_key(bus)), what="group recreated")

        await bus.publish("chat.v1", chat("after"))
        await wait_until(lambda: seen == ["before", "after"], what="event after DEL")
        assert not processor.stopping


async def test_event_published_right_after_its_stream_was_deleted_is_handled(
    bus: EventBus, sync_redis: redis.Redis
) -> None:
    seen: list[str] = []
    record_texts(bus, seen)

    async with running(bus):
        # The publish recreates the stream without the group; the processor
        # must then create the group from the start of the stream.
        sync_redis.delete(lane_key(bus))
        await bus.publish("chat.v1", chat("after"))
        await wait_until(lambda: seen == ["after"], what="event after DEL")


async def test_processor_recreates_a_destroyed_group_and_carries_on(
    bus: EventBus, sync_redis: redis.Redis
) -> None:
    seen: list[str] = []
    record_texts(bus, seen)

    async with running(bus):
        sync_redis.xgroup_destroy(lane_key(bus), bus.config.processor.group)
        await bus.publish("chat.v1", chat("after"))
        await wait_until(lambda: seen == ["after"], what="event after DESTROY")
        await wait_until(pending_is(bus, lane_key(bus), 0), what="ack")


async def test_processor_trims_handled_lanes_to_near_maxlen(
    make_config: Any,
) -> None:
    config = make_config(
        streams=[{"name": "chat.v1", "maxlen": 20}],
        processor={"retention_interval_s": 0.05},
    )
    async with EventBus(config) as bus:
        handled: list[str] = []

        @bus.subscribe("chat.v1")
        async def on_chat(event: Event) -> None:
            handled.append(event.id)

        await bus.publish_many([("chat.v1", chat(str(n))) for n in range(500)])
        node_size = int(
            (await bus.client.config_get("stream-node-max-entries"))[
                "stream-node-max-entries"
            ]
        )
        async with running(bus):
            await wait_until(lambda: len(handled) == 500, what="500 handled")
            await wait_until(
                stream_length_is(
                    bus, lane_key(bus), at_least=0, at_most=20 + node_size
                ),
                what="trim",
            )


async def test_consumer_names_are_unique_per_processor(bus: EventBus) -> None:
    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        pass

    names = {bus.make_processor().consumer for _ in range(20)}

    assert len(names) == 20


async def test_dead_letter_keeps_the_envelope_bytes(make_config: Any) -> None:
    async with EventBus(make_config(defaults={"retry_limit": 0})) as bus:

        @bus.subscribe("chat.v1")
        async def fails(event: Event) -> None:
            raise ValueError("nope")

        event = bus.event("chat.v1", chat())
        await bus.publish_many([event])
        async with running(bus):
            await wait_until(
                stream_length_is(bus, bus.keys.dead_letters("chat.v1")),
                what="dead letter",
            )

        [dead] = await dead_letters(bus)
        assert dead["event"] == envelope_bytes(event)
