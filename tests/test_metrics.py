"""Prometheus metrics: counters, histograms and Redis gauges of a real bus."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from telemetry_helpers import running, wait_until

from titan_bus import Event, EventBus, Reject
from titan_bus.config import BusConfig, parse_config
from titan_bus.keys import KeySpace
from titan_bus.telemetry import BusMetrics, RedisGauges, Telemetry

pytestmark = pytest.mark.timeout(60)

FAST_RETRIES = {"retry_limit": 1, "retry_base_s": 0.01, "retry_max_s": 0.02}


@pytest.fixture
async def observed(make_config: Any) -> AsyncIterator[tuple[EventBus, BusMetrics]]:
    """A bus with metrics (no HTTP endpoint) and fast retries."""
    metrics = BusMetrics()
    telemetry = Telemetry(metrics=metrics)
    async with EventBus(make_config(defaults=FAST_RETRIES), observer=telemetry) as bus:
        yield bus, metrics


def value(metrics: BusMetrics, name: str, **labels: str) -> float:
    """Return the sum of the samples of ``name`` that carry ``labels``; 0 if none."""
    return sum(
        sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def system(name: str) -> dict[str, Any]:
    return {"name": name}


async def test_outcomes_are_counted_by_topic_lane_and_outcome(
    observed: tuple[EventBus, BusMetrics],
) -> None:
    bus, metrics = observed

    @bus.subscribe("system.v1")
    async def handler(event: Event) -> None:
        if event.data["name"] == "boom":
            raise RuntimeError("always fails")
        if event.data["name"] == "nope":
            raise Reject("not for us")

    labels = {"topic": "system.v1", "lane": "normal"}
    async with running(bus):
        await bus.publish("system.v1", system("fine"))
        await bus.publish("system.v1", system("fine"))
        await bus.publish("system.v1", system("boom"))
        await bus.publish("system.v1", system("nope"), priority="high")
        await wait_until(
            lambda: value(metrics, "titan_bus_events_dead_lettered_total") == 2,
            what="two events dead-lettered",
        )

    handled = "titan_bus_events_handled_total"
    assert value(metrics, handled, **labels, outcome="handled") == 2
    assert value(metrics, handled, **labels, outcome="retried") == 1
    assert value(metrics, handled, **labels, outcome="dead_lettered") == 1
    assert value(metrics, handled, topic="system.v1", lane="high", outcome="rejected")
    assert value(metrics, "titan_bus_events_retried_total", **labels) == 1
    assert value(metrics, "titan_bus_events_failed_total", **labels) == 2
    assert (
        value(metrics, "titan_bus_events_failed_total", topic="system.v1", lane="high")
        == 0
    )
    assert (
        value(
            metrics,
            "titan_bus_events_dead_lettered_total",
            **labels,
            reason="exhausted",
        )
        == 1
    )
    assert value(metrics, "titan_bus_events_published_total", **labels) == 3


async def test_latency_and_handler_duration_histograms(
    observed: tuple[EventBus, BusMetrics],
) -> None:
    bus, metrics = observed

    @bus.subscribe("system.v1")
    async def handler(event: Event) -> None:
        await asyncio.sleep(0.03)

    labels = {"topic": "system.v1", "lane": "normal"}
    async with running(bus):
        await bus.publish_many([("system.v1", system(f"e{i}")) for i in range(5)])
        await wait_until(
            lambda: (
                value(metrics, "titan_bus_handler_duration_seconds_count", **labels)
                == 5
            ),
            what="five handled",
        )

    latency = "titan_bus_end_to_end_latency_seconds"
    assert value(metrics, f"{latency}_count", **labels) == 5
    assert value(metrics, f"{latency}_sum", **labels) >= 5 * 0.03
    assert value(metrics, f"{latency}_bucket", **labels, le="0.01") == 0
    assert value(metrics, f"{latency}_bucket", **labels, le="+Inf") == 5
    assert value(metrics, "titan_bus_handler_duration_seconds_sum", **labels) >= 0.15
    assert value(metrics, "titan_bus_publish_duration_seconds_count") == 1


async def test_a_duplicate_delivery_is_counted_as_dropped(
    observed: tuple[EventBus, BusMetrics],
) -> None:
    bus, metrics = observed
    seen: list[str] = []

    @bus.subscribe("system.v1")
    async def handler(event: Event) -> None:
        seen.append(event.id)

    event = bus.event("system.v1", system("once"))
    dropped = {"topic": "system.v1", "lane": "normal", "reason": "duplicate"}
    async with running(bus):
        await bus.publish_many([event])
        await wait_until(lambda: len(seen) == 1, what="first delivery handled")
        await bus.publish_many([event])
        await wait_until(
            lambda: value(metrics, "titan_bus_events_dropped_total", **dropped) == 1,
            what="duplicate dropped",
        )

    assert seen == [event.id]


def test_label_values_never_include_event_ids() -> None:
    metrics = BusMetrics()
    event = Event(source="t", type="t", data={"name": "x"}, topic="system.v1")
    metrics.outcome(event, "normal", "handled", 0.01, None)
    metrics.published_events([event], 0.001)

    for family in metrics.registry.collect():
        for sample in family.samples:
            assert event.id not in sample.labels.values()
            assert set(sample.labels) <= {"topic", "lane", "outcome", "reason", "le"}


def test_each_instance_has_its_own_registry() -> None:
    first, second = BusMetrics(), BusMetrics()
    first.limited("chat.v1", "topic")

    assert first.registry is not second.registry
    assert first.registry.get_sample_value(
        "titan_bus_rate_limited_total", {"topic": "chat.v1", "scope": "topic"}
    )
    assert (
        second.registry.get_sample_value(
            "titan_bus_rate_limited_total", {"topic": "chat.v1", "scope": "topic"}
        )
        is None
    )


# -- gauges ------------------------------------------------------------------------


def gauge(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_gauges_read_lengths_pending_lag_dead_letters_and_delayed(
    observed: tuple[EventBus, BusMetrics],
) -> None:
    bus, _ = observed
    gauges = RedisGauges(
        bus.client, keys=bus.keys, topics=bus.topics, group="titan", interval_s=0.1
    )
    registry = CollectorRegistry()
    registry.register(gauges)
    lane = bus.keys.lane("system.v1", "normal")
    for i in range(4):
        await bus.publish("system.v1", system(f"g{i}"))
    await bus.client.xgroup_create(lane, "titan", id="0")
    await bus.client.xreadgroup("titan", "c1", {lane: ">"}, count=1)
    await bus.client.xadd(bus.keys.dead_letters("system.v1"), {"x": "1"})
    await bus.client.zadd(bus.keys.delayed("system.v1"), {"a": 1, "b": 2})

    assert await gauges.refresh()

    labels = {"topic": "system.v1", "lane": "normal"}
    group = {**labels, "group": "titan"}
    assert gauge(registry, "titan_bus_stream_length", **labels) == 4
    assert gauge(registry, "titan_bus_pending", **group) == 1
    assert gauge(registry, "titan_bus_consumer_lag", **group) == 3
    assert gauge(registry, "titan_bus_consumers", **group) == 1
    assert gauge(registry, "titan_bus_live_consumers", **group) == 1
    assert gauge(registry, "titan_bus_dead_letters", topic="system.v1") == 1
    assert gauge(registry, "titan_bus_delayed", topic="system.v1") == 2
    assert gauge(registry, "titan_bus_stream_length", topic="chat.v1", lane="high") == 0
    assert gauge(registry, "titan_bus_redis_up") == 1


async def test_unknown_lag_is_nan_never_zero(
    observed: tuple[EventBus, BusMetrics],
) -> None:
    bus, _ = observed
    gauges = RedisGauges(bus.client, keys=bus.keys, topics=bus.topics, group="titan")
    registry = CollectorRegistry()
    registry.register(gauges)
    lane = bus.keys.lane("system.v1", "normal")
    ids = [await bus.client.xadd(lane, {"n": str(i)}) for i in range(3)]
    # A group placed at an arbitrary id, with an entry deleted after it: Redis
    # cannot count what the group has left to read and answers lag = nil.
    await bus.client.xgroup_create(lane, "titan", id=ids[0])
    await bus.client.xdel(lane, ids[1])

    assert await gauges.refresh()

    lag = gauge(
        registry,
        "titan_bus_consumer_lag",
        topic="system.v1",
        lane="normal",
        group="titan",
    )
    assert lag is not None and math.isnan(lag)


async def test_redis_down_sets_redis_up_to_zero_and_hides_stale_gauges(
    make_config: Any,
) -> None:
    from telemetry_helpers import free_port

    config: BusConfig = make_config(redis={"url": f"redis://127.0.0.1:{free_port()}/0"})
    bus = EventBus(config)
    gauges = RedisGauges(bus.client, keys=KeySpace("x"), topics=bus.topics, group="g")
    registry = CollectorRegistry()
    registry.register(gauges)
    try:
        assert not await gauges.refresh()
    finally:
        await bus.aclose()

    assert gauge(registry, "titan_bus_redis_up") == 0
    assert (
        gauge(registry, "titan_bus_stream_length", topic="chat.v1", lane="high") is None
    )


def test_telemetry_from_config_collects_metrics_only_with_a_port() -> None:
    off = parse_config({})
    on = parse_config({"metrics": {"port": 0}})

    assert not Telemetry.enabled(off)
    assert Telemetry.enabled(on)
    assert Telemetry.from_config(off).metrics is None
    assert Telemetry.from_config(on).metrics is not None
    assert Telemetry.from_config(on).tracing is None
