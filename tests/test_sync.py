"""The blocking SyncPublisher: the same checks as the asyncio bus, on real Redis."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from helpers import chat, closed_port, keys_under

from titan_bus import (
    BusConnectionError,
    PayloadTooLargeError,
    SyncPublisher,
    UnknownTopicError,
    ValidationError,
)
from titan_bus.codec import ATTEMPT_FIELD, EVENT_FIELD, decode_entry, envelope_bytes
from titan_bus.config import parse_config


@pytest.fixture
def publisher(make_config: Any) -> Any:
    with SyncPublisher(make_config(), source="tests.sync") as pub:
        yield pub


def lane_entries(client: redis.Redis, key: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(key)]


def test_publish_writes_one_canonical_entry_to_the_lane(
    publisher: SyncPublisher, sync_redis: redis.Redis
) -> None:
    event_id = publisher.publish("chat.v1", chat(), priority="low")

    [fields] = lane_entries(sync_redis, publisher.factory.keys.lane("chat.v1", "low"))
    event = decode_entry(fields)
    assert event.id == event_id
    assert event.source == "tests.sync"
    assert fields[EVENT_FIELD] == envelope_bytes(event)
    assert fields[ATTEMPT_FIELD] == b"1"


def test_publish_puts_correlation_and_causation_ids_in_headers(
    publisher: SyncPublisher, sync_redis: redis.Redis
) -> None:
    publisher.publish("chat.v1", chat(), correlation_id="k1", causation_id="c0")

    key = publisher.factory.keys.lane("chat.v1", "normal")
    [fields] = lane_entries(sync_redis, key)
    headers = decode_entry(fields).headers
    assert headers == {"correlationid": "k1", "causationid": "c0"}


def test_publish_to_unknown_topic_raises_and_writes_nothing(
    publisher: SyncPublisher, sync_redis: redis.Redis, key_prefix: str
) -> None:
    with pytest.raises(UnknownTopicError, match=r"'nope\.v1'"):
        publisher.publish("nope.v1", {})

    assert keys_under(sync_redis, key_prefix) == []


def test_publish_invalid_payload_raises_and_writes_nothing(
    publisher: SyncPublisher, sync_redis: redis.Redis, key_prefix: str
) -> None:
    with pytest.raises(ValidationError, match=r"^fs\.v1: .*change"):
        publisher.publish("fs.v1", {"change": "renamed", "path": "/a"})

    assert keys_under(sync_redis, key_prefix) == []


def test_payload_over_the_limit_raises_and_writes_nothing(
    make_config: Any, sync_redis: redis.Redis, key_prefix: str
) -> None:
    config = make_config(streams=[{"name": "chat.v1", "max_payload_bytes": 80}])
    with (
        SyncPublisher(config) as pub,
        pytest.raises(PayloadTooLargeError, match=r"^chat\.v1: .*limit of 80 bytes"),
    ):
        pub.publish("chat.v1", chat("x" * 100))

    assert keys_under(sync_redis, key_prefix) == []


def test_payload_over_the_top_level_limit_raises(
    make_config: Any, sync_redis: redis.Redis, key_prefix: str
) -> None:
    with (
        SyncPublisher(make_config(max_payload_bytes=50)) as pub,
        pytest.raises(PayloadTooLargeError, match=r"^chat\.v1: payload is"),
    ):
        pub.publish("chat.v1", chat("x" * 100))

    assert keys_under(sync_redis, key_prefix) == []


def test_publish_many_writes_all_events_in_order(
    publisher: SyncPublisher, sync_redis: redis.Redis
) -> None:
    ids = publisher.publish_many([("chat.v1", chat(str(n))) for n in range(5)])

    key = publisher.factory.keys.lane("chat.v1", "normal")
    assert [decode_entry(f).id for f in lane_entries(sync_redis, key)] == ids


def test_publish_many_writes_nothing_if_any_item_is_invalid(
    publisher: SyncPublisher, sync_redis: redis.Redis, key_prefix: str
) -> None:
    items = [("chat.v1", chat()), ("plugin.v1", {"plugin": "p"})]

    with pytest.raises(ValidationError, match=r"^plugin\.v1: .*name"):
        publisher.publish_many(items)

    assert keys_under(sync_redis, key_prefix) == []


def test_publish_does_not_trim_lanes_past_maxlen(
    make_config: Any, sync_redis: redis.Redis
) -> None:
    config = make_config(streams=[{"name": "chat.v1", "maxlen": 5}])
    with SyncPublisher(config) as pub:
        pub.publish_many([("chat.v1", chat(str(n))) for n in range(300)])
        key = pub.factory.keys.lane("chat.v1", "normal")

    assert sync_redis.xlen(key) == 300


def test_unreachable_redis_raises_bus_connection_error() -> None:
    port = closed_port()
    config = parse_config(
        {"redis": {"url": f"redis://127.0.0.1:{port}/0", "connect_timeout_s": 1}}
    )

    with (
        SyncPublisher(config) as pub,
        pytest.raises(BusConnectionError) as caught,
    ):
        pub.publish("chat.v1", chat())

    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "unreachable" in message
    assert "\n" not in message


def test_unreachable_redis_message_hides_the_password() -> None:
    url = f"redis://app:s3cret@127.0.0.1:{closed_port()}/0"
    config = parse_config({"redis": {"url": url, "connect_timeout_s": 1}})

    with SyncPublisher(config) as pub, pytest.raises(BusConnectionError) as caught:
        pub.publish("chat.v1", chat())

    assert "s3cret" not in str(caught.value)


def connected_ids(client: redis.Redis) -> set[int]:
    return {int(info["id"]) for info in client.client_list()}


def publisher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "titan-sync-publisher"]


def test_context_manager_closes_its_connections_and_thread(
    make_config: Any, sync_redis: redis.Redis
) -> None:
    before, threads_before = connected_ids(sync_redis), set(publisher_threads())
    with SyncPublisher(make_config()) as pub:
        pub.publish("chat.v1", chat())
        opened = connected_ids(sync_redis) - before
        assert opened, "the publisher should hold a connection while open"

    deadline = time.monotonic() + 5
    while opened & connected_ids(sync_redis) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not opened & connected_ids(sync_redis)
    assert set(publisher_threads()) <= threads_before


def test_close_is_idempotent(make_config: Any) -> None:
    threads_before = set(publisher_threads())
    pub = SyncPublisher(make_config())
    pub.close()
    pub.close()

    assert set(publisher_threads()) <= threads_before


def test_from_config_reads_the_yaml_file(
    config_file: Any, sync_redis: redis.Redis, key_prefix: str
) -> None:
    with SyncPublisher.from_config(config_file) as pub:
        pub.publish("system.v1", {"name": "hello"})

    assert sync_redis.xlen(f"{key_prefix}:{{system.v1}}:lane:normal") == 1
