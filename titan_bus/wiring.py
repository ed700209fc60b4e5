"""Assembling the bus's parts from its configuration.

Kept apart from :mod:`titan_bus.bus` so the facade reads as the public API
and this module as the one place that turns settings into objects.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from titan_bus.admission import Admission, Durability
from titan_bus.config import BusConfig
from titan_bus.keys import KeySpace
from titan_bus.limits import Bucket, FlowGate, default_burst
from titan_bus.observe import Observer
from titan_bus.outgoing import EventFactory
from titan_bus.publisher import Publisher
from titan_bus.topics import TopicRegistry

DEFAULT_IDEMPOTENCY_WINDOW_S = 3600.0


def build_publisher(
    client: aioredis.Redis,
    config: BusConfig,
    topics: TopicRegistry,
    *,
    source: str,
    observer: Observer,
) -> Publisher:
    """Return the publisher of a bus: factory, admission and durability."""
    keys = KeySpace(config.key_prefix)
    caps = {
        p.name: p.max_payload_bytes
        for p in config.publishers
        if p.max_payload_bytes is not None
    }
    factory = EventFactory(topics, keys, source, observer, payload_caps=caps)
    quotas = {
        p.name: Bucket(
            keys.quota(p.name),
            p.rate_limit,
            p.rate_burst or default_burst(p.rate_limit),
            p.name,
        )
        for p in config.publishers
        if p.rate_limit is not None
    }
    lane_keys = {t.name: [keys.lane(t.name, lane) for lane in t.lanes] for t in topics}
    admission = Admission(client, quotas=quotas, lane_keys=lane_keys)
    durability = Durability(
        min_replicas=config.redis.min_replicas,
        replica_timeout_ms=config.redis.replica_timeout_ms,
        idempotency_window_s=(
            config.processor.idempotency_window_s or DEFAULT_IDEMPOTENCY_WINDOW_S
        ),
    )

    return Publisher(client, factory, admission, durability)


def build_flow_gate(
    client: aioredis.Redis,
    config: BusConfig,
    topics: TopicRegistry,
    names: list[str],
) -> FlowGate:
    """Return the rate limits a processor handling ``names`` must respect."""
    keys = KeySpace(config.key_prefix)
    buckets = {}
    for name in names:
        topic = topics.get(name)
        if topic.rate_limit is not None:
            burst = topic.rate_burst or default_burst(topic.rate_limit)
            buckets[name] = Bucket(keys.rate(name), topic.rate_limit, burst, name)
    shared = None
    if (rate := config.global_rate_limit) is not None:
        burst = config.global_rate_burst or default_burst(rate)
        shared = Bucket(keys.shared("rate"), rate, burst, "global")

    return FlowGate(client, topic_buckets=buckets, global_bucket=shared)
