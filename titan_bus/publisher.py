"""Writing events: the publish side of the bus.

A publish builds and checks its events (:mod:`titan_bus.outgoing`), passes
admission (quotas, backlog: :mod:`titan_bus.admission`), then writes them all
in one pipelined round trip, with a ``WAIT`` for replicas in the same trip
when durability asks for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import redis.asyncio as aioredis

from titan_bus.admission import Admission, Durability
from titan_bus.connection import async_redis_errors
from titan_bus.errors import RateLimitError
from titan_bus.outgoing import EventFactory, Outgoing, StreamWrite

logger = logging.getLogger(__name__)

QuotaPolicy = Literal["raise", "wait"]
"""Over a publisher quota: raise :class:`RateLimitError` at once, or wait."""


class Publisher:
    """Writes events to their lanes with the asyncio Redis client.

    Args:
        client: an asyncio Redis client.
        factory: builds and checks events.
        admission: publisher quotas and topic backlogs.
        durability: replica acknowledgement and idempotency window defaults.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        factory: EventFactory,
        admission: Admission,
        durability: Durability,
    ) -> None:
        self._client = client
        self.factory = factory
        self.admission = admission
        self.durability = durability

    async def publish(
        self,
        topic: str,
        data: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        delay_s: float | None = None,
        at: datetime | None = None,
        min_replicas: int | None = None,
        on_quota: QuotaPolicy = "raise",
        **options: Any,
    ) -> str:
        """Validate and write one event; return its id.

        Arguments are described at :meth:`titan_bus.EventBus.publish`.
        """
        event = self.factory.event(topic, data, **options)
        write = self.factory.write_for(
            event, idempotency_key=idempotency_key, delay_s=delay_s, at=at
        )
        ids = await self.write([write], min_replicas=min_replicas, on_quota=on_quota)
        logger.debug("published %s event %s to %s", topic, ids[0], write.key)

        return ids[0]

    async def publish_many(
        self,
        items: Iterable[Outgoing],
        *,
        min_replicas: int | None = None,
        on_quota: QuotaPolicy = "raise",
    ) -> list[str]:
        """Validate every item, then write them all in one pipelined round trip.

        Returns:
            The event ids, in the order given.

        Raises:
            ValidationError: any item is invalid; then nothing is written.
        """
        writes = [self.factory.write_for(item) for item in items]
        if not writes:
            return []

        ids = await self.write(writes, min_replicas=min_replicas, on_quota=on_quota)
        logger.debug("published %d events in one round trip", len(writes))

        return ids

    async def write(
        self,
        writes: list[StreamWrite],
        *,
        min_replicas: int | None,
        on_quota: QuotaPolicy,
    ) -> list[str]:
        """Admit and write prepared writes; return the ids Redis holds.

        The observer hears of every write refused or failed, so producer
        spans end at once and quota refusals are counted.
        """
        try:
            return await self._admit_and_write(writes, min_replicas, on_quota)
        except Exception as exc:
            events = [w.event for w in writes]
            if isinstance(exc, RateLimitError):
                for topic in dict.fromkeys(e.topic for e in events):
                    self.factory.observer.on_rate_limited(topic, "publisher")
            self.factory.observer.on_publish_failed(events, exc)
            raise

    async def _admit_and_write(
        self,
        writes: list[StreamWrite],
        min_replicas: int | None,
        on_quota: QuotaPolicy,
    ) -> list[str]:
        topics = {
            w.event.topic: self.factory.registry.get(w.event.topic) for w in writes
        }
        await self.admission.admit(writes, topics, wait=on_quota == "wait")

        replicas = self.durability.replicas(min_replicas)
        pipe = self._client.pipeline(transaction=False)
        for write in writes:
            write.queue(pipe, window_s=self.durability.idempotency_window_s)
        if replicas:
            pipe.wait(replicas, self.durability.replica_timeout_ms)
        started = time.perf_counter()
        what = f"publish {writes[0].event.topic} event {writes[0].event.id}"
        if len(writes) > 1:
            what = f"publish {len(writes)} events"
        async with async_redis_errors(what):
            replies = await pipe.execute()
        elapsed = time.perf_counter() - started
        self.factory.observer.on_published([w.event for w in writes], elapsed)
        if replicas:
            self.durability.check(replies[-1], replicas)

        return [w.stored_id(r) for w, r in zip(writes, replies, strict=False)]
