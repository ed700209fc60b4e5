"""Publishing on real Redis: what lands in the lane, and what never does."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from helpers import chat, keys_under

from titan_bus import (
    Event,
    EventBus,
    PayloadTooLargeError,
    UnknownTopicError,
    ValidationError,
)
from titan_bus.codec import ATTEMPT_FIELD, EVENT_FIELD, decode_entry, envelope_bytes


async def only_entry(bus: EventBus, key: str) -> tuple[str, dict[bytes, bytes]]:
    """Return the single entry of stream ``key``, failing if there are others."""
    entries = await bus.client.xrange(key)
    assert len(entries) == 1, f"expected one entry in {key}, found {len(entries)}"
    entry_id, fields = entries[0]

    return entry_id.decode(), fields


async def test_publish_writes_one_entry_to_the_lane_of_its_priority(
    bus: EventBus,
) -> None:
    await bus.publish("chat.v1", chat(), priority="high")

    assert await bus.client.xlen(bus.keys.lane("chat.v1", "high")) == 1
    assert await bus.client.exists(bus.keys.lane("chat.v1", "normal")) == 0


async def test_publish_returns_the_id_of_the_stored_event(bus: EventBus) -> None:
    event_id = await bus.publish("chat.v1", chat())

    _, fields = await only_entry(bus, bus.keys.lane("chat.v1", "normal"))
    assert decode_entry(fields).id == event_id


async def test_published_entry_holds_the_canonical_fields(bus: EventBus) -> None:
    await bus.publish("system.v1", {"name": "boot", "details": {"b": 1, "a": 2}})

    _, fields = await only_entry(bus, bus.keys.lane("system.v1", "normal"))
    event = decode_entry(fields)
    assert set(fields) == {EVENT_FIELD, ATTEMPT_FIELD}
    assert fields[EVENT_FIELD] == envelope_bytes(event)
    assert fields[ATTEMPT_FIELD] == b"1"


async def test_published_event_carries_topic_source_and_type(bus: EventBus) -> None:
    await bus.publish("chat.v1", chat("yo"), source="tests.src", subject="c1")

    _, fields = await only_entry(bus, bus.keys.lane("chat.v1", "normal"))
    event = decode_entry(fields)
    assert (event.topic, event.priority) == ("chat.v1", "normal")
    assert (event.source, event.subject) == ("tests.src", "c1")
    assert event.type == "titan.chat.v1"
    assert event.data == chat("yo")


async def test_correlation_and_causation_ids_end_up_in_headers(bus: EventBus) -> None:
    await bus.publish(
        "chat.v1",
        chat(),
        correlation_id="conv-7",
        causation_id="01HZY0000000000000000000AB",
        headers={"traceparent": "00-abc-def-01"},
    )

    _, fields = await only_entry(bus, bus.keys.lane("chat.v1", "normal"))
    event = decode_entry(fields)
    assert event.headers == {
        "traceparent": "00-abc-def-01",
        "correlationid": "conv-7",
        "causationid": "01HZY0000000000000000000AB",
    }
    assert event.correlation_id == "conv-7"


async def test_publish_to_unknown_topic_raises_and_writes_nothing(
    bus: EventBus, sync_redis: redis.Redis, key_prefix: str
) -> None:
    with pytest.raises(
        UnknownTopicError, match=r"'orders\.v1'.*known topics: chat\.v1"
    ):
        await bus.publish("orders.v1", {"order_id": "o1"})

    assert keys_under(sync_redis, key_prefix) == []


async def test_publish_invalid_payload_raises_naming_field_and_writes_nothing(
    bus: EventBus, sync_redis: redis.Redis, key_prefix: str
) -> None:
    with pytest.raises(ValidationError, match=r"^chat\.v1: .*role"):
        await bus.publish("chat.v1", {**chat(), "role": "robot"})

    assert keys_under(sync_redis, key_prefix) == []


async def test_publish_unknown_priority_raises_and_writes_nothing(
    bus: EventBus, sync_redis: redis.Redis, key_prefix: str
) -> None:
    with pytest.raises(ValidationError, match=r"'urgent'.*high, normal, low"):
        await bus.publish("chat.v1", chat(), priority="urgent")

    assert keys_under(sync_redis, key_prefix) == []


async def test_publish_bad_header_name_raises_and_writes_nothing(
    bus: EventBus, sync_redis: redis.Redis, key_prefix: str
) -> None:
    with pytest.raises(ValidationError, match="'Trace-Id'"):
        await bus.publish("chat.v1", chat(), headers={"Trace-Id": "x"})

    assert keys_under(sync_redis, key_prefix) == []


async def test_payload_over_top_level_limit_raises_and_writes_nothing(
    make_config: Any, sync_redis: redis.Redis, key_prefix: str
) -> None:
    async with EventBus(make_config(max_payload_bytes=100)) as bus:
        with pytest.raises(PayloadTooLargeError, match=r"^chat\.v1: payload is \d+ by"):
            await bus.publish("chat.v1", chat("x" * 200))

    assert keys_under(sync_redis, key_prefix) == []


async def test_payload_at_the_limit_is_accepted(make_config: Any) -> None:
    data = chat("")
    size = len(b'{"conversation_id":"c1","role":"user","text":""}')
    async with EventBus(make_config(max_payload_bytes=size)) as bus:
        await bus.publish("chat.v1", data)

        assert await bus.client.xlen(bus.keys.lane("chat.v1", "normal")) == 1


async def test_per_stream_payload_limit_overrides_the_top_level_one(
    make_config: Any, sync_redis: redis.Redis, key_prefix: str
) -> None:
    config = make_config(streams=[{"name": "chat.v1", "max_payload_bytes": 60}])
    async with EventBus(config) as bus:
        with pytest.raises(PayloadTooLargeError, match="limit of 60 bytes"):
            await bus.publish("chat.v1", chat("x" * 100))
        assert keys_under(sync_redis, key_prefix) == []

        await bus.publish("system.v1", {"name": "n", "details": {"x": "y" * 100}})
        assert await bus.client.xlen(bus.keys.lane("system.v1", "normal")) == 1


async def test_per_stream_payload_limit_may_be_larger_than_the_top_level_one(
    make_config: Any,
) -> None:
    config = make_config(
        max_payload_bytes=100,
        streams=[{"name": "chat.v1", "max_payload_bytes": 10_000}],
    )
    async with EventBus(config) as bus:
        await bus.publish("chat.v1", chat("x" * 1000))

        assert await bus.client.xlen(bus.keys.lane("chat.v1", "normal")) == 1


async def test_publish_many_writes_all_events_in_order(bus: EventBus) -> None:
    items: list[Event | tuple[str, dict[str, Any]]] = [
        ("chat.v1", chat("one")),
        bus.event("chat.v1", chat("two"), priority="high"),
        ("system.v1", {"name": "three"}),
    ]

    ids = await bus.publish_many(items)

    assert len(ids) == 3
    normal = await bus.client.xrange(bus.keys.lane("chat.v1", "normal"))
    high = await bus.client.xrange(bus.keys.lane("chat.v1", "high"))
    system = await bus.client.xrange(bus.keys.lane("system.v1", "normal"))
    stored = [decode_entry(f).id for _, f in normal + high + system]
    assert stored == ids


async def test_publish_many_uses_one_round_trip(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    round_trips: list[str] = []
    pipeline_execute = type(bus.client.pipeline()).execute
    single_command = type(bus.client).execute_command

    async def counting_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        round_trips.append("pipeline")
        return await pipeline_execute(self, *args, **kwargs)

    async def counting_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        round_trips.append(str(args[0]))
        return await single_command(self, *args, **kwargs)

    monkeypatch.setattr(type(bus.client.pipeline()), "execute", counting_execute)
    monkeypatch.setattr(type(bus.client), "execute_command", counting_command)

    await bus.publish_many([("chat.v1", chat(str(n))) for n in range(20)])

    assert round_trips == ["pipeline"]
    assert await bus.client.xlen(bus.keys.lane("chat.v1", "normal")) == 20


async def test_publish_many_writes_nothing_if_any_item_is_invalid(
    bus: EventBus, sync_redis: redis.Redis, key_prefix: str
) -> None:
    items = [("chat.v1", chat("fine")), ("chat.v1", {"text": "no role"})]

    with pytest.raises(ValidationError, match="conversation_id"):
        await bus.publish_many(items)

    assert keys_under(sync_redis, key_prefix) == []


async def test_publish_many_writes_nothing_if_any_item_is_too_large(
    make_config: Any, sync_redis: redis.Redis, key_prefix: str
) -> None:
    async with EventBus(make_config(max_payload_bytes=200)) as bus:
        items = [("chat.v1", chat("fine")), ("chat.v1", chat("x" * 500))]

        with pytest.raises(PayloadTooLargeError):
            await bus.publish_many(items)

    assert keys_under(sync_redis, key_prefix) == []


async def test_publish_many_rechecks_events_against_their_topic(
    bus: EventBus, sync_redis: redis.Redis, key_prefix: str
) -> None:
    good = bus.event("chat.v1", chat())
    forged = good.model_copy(update={"topic": "fs.v1"})

    with pytest.raises(ValidationError, match=r"^fs\.v1: "):
        await bus.publish_many([good, forged])

    assert keys_under(sync_redis, key_prefix) == []


async def test_publish_many_of_nothing_returns_no_ids(
    bus: EventBus, sync_redis: redis.Redis, key_prefix: str
) -> None:
    assert await bus.publish_many([]) == []
    assert keys_under(sync_redis, key_prefix) == []


async def test_publish_does_not_trim_lanes_past_maxlen(make_config: Any) -> None:
    # Trimming belongs to processors (titan_bus.retention), which never drop
    # entries a group has not acknowledged; an XADD MAXLEN here could.
    config = make_config(streams=[{"name": "chat.v1", "maxlen": 5}])
    async with EventBus(config) as bus:
        await bus.publish_many([("chat.v1", chat(str(n))) for n in range(300)])

        assert await bus.client.xlen(bus.keys.lane("chat.v1", "normal")) == 300
