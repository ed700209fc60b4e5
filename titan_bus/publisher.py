"""Building, validating and writing events: the publish side of the bus.

Everything that decides what is written lives in :class:`EventFactory`, shared
by the asyncio :class:`Publisher` and the blocking
:class:`~titan_bus.sync.SyncPublisher`, so both apply the same checks. Nothing
reaches Redis unless every check passed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from titan_bus.codec import EntryFields, canonical_json, encode_entry
from titan_bus.connection import async_redis_errors
from titan_bus.errors import PayloadTooLargeError, ValidationError
from titan_bus.events import DEFAULT_PRIORITY, Event
from titan_bus.keys import KeySpace
from titan_bus.topics import TopicRegistry

logger = logging.getLogger(__name__)

Outgoing = Event | tuple[str, Mapping[str, Any]]


@dataclass(frozen=True)
class StreamWrite:
    """One XADD to perform: the lane key, the entry fields, the retention."""

    key: str
    fields: EntryFields
    maxlen: int | None
    event: Event


class EventFactory:
    """Turns a topic and payload into a validated event and its stream write."""

    def __init__(self, registry: TopicRegistry, keys: KeySpace, source: str) -> None:
        self.registry = registry
        self.keys = keys
        self.source = source

    def event(
        self,
        topic: str,
        data: Mapping[str, Any],
        *,
        priority: str = DEFAULT_PRIORITY,
        source: str | None = None,
        subject: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Event:
        """Return a new, fully validated event.

        Raises:
            UnknownTopicError: ``topic`` is not registered.
            ValidationError: the payload, priority or a header is invalid.
            PayloadTooLargeError: the serialized payload is over the topic's limit.
        """
        spec = self.registry.get(topic)
        payload = spec.validate(data)
        all_headers = dict(headers or {})
        if correlation_id is not None:
            all_headers["correlationid"] = correlation_id
        if causation_id is not None:
            all_headers["causationid"] = causation_id
        try:
            event = Event(
                source=source or self.source,
                type=type or f"titan.{topic}",
                subject=subject,
                data=payload,
                topic=topic,
                priority=spec.lane_for(priority),
                headers=all_headers,
            )
        except ValueError as exc:
            raise ValidationError(f"{topic}: invalid event: {exc}") from exc

        return event

    def write_for(self, item: Outgoing) -> StreamWrite:
        """Return the stream write that stores ``item``, checking its size.

        Raises:
            UnknownTopicError, ValidationError, PayloadTooLargeError: as for
                :meth:`event`; an :class:`Event` is re-checked against its topic.
        """
        event = self.event(*item) if isinstance(item, tuple) else self._recheck(item)
        spec = self.registry.get(event.topic)
        size = len(canonical_json(event.data))
        if size > spec.max_payload_bytes:
            raise PayloadTooLargeError(
                f"{event.topic}: payload is {size} bytes, over the limit of "
                f"{spec.max_payload_bytes} bytes (max_payload_bytes)"
            )

        return StreamWrite(
            key=self.keys.lane(event.topic, event.priority),
            fields=encode_entry(event),
            maxlen=spec.maxlen,
            event=event,
        )

    def _recheck(self, event: Event) -> Event:
        spec = self.registry.get(event.topic)
        spec.validate(event.data)
        spec.lane_for(event.priority)

        return event


class Publisher:
    """Writes events to their lanes with the asyncio Redis client."""

    def __init__(self, client: aioredis.Redis, factory: EventFactory) -> None:
        self._client = client
        self.factory = factory

    async def publish(self, topic: str, data: Mapping[str, Any], **options: Any) -> str:
        """Validate and write one event; return its id.

        Keyword options are those of :meth:`EventFactory.event`.
        """
        write = self.factory.write_for(self.factory.event(topic, data, **options))
        async with async_redis_errors(f"publish to {topic}"):
            await self._client.xadd(
                write.key, write.fields, maxlen=write.maxlen, approximate=True
            )
        logger.debug("published %s to %s", write.event.id, write.key)

        return write.event.id

    async def publish_many(self, items: Iterable[Outgoing]) -> list[str]:
        """Validate every item, then write them all in one pipelined round trip.

        Args:
            items: events from :meth:`EventFactory.event`, or ``(topic, data)``.

        Returns:
            The event ids, in the order given.

        Raises:
            ValidationError: any item is invalid; then nothing is written.
        """
        writes = [self.factory.write_for(item) for item in items]
        if not writes:
            return []

        pipe = self._client.pipeline(transaction=False)
        for write in writes:
            pipe.xadd(write.key, write.fields, maxlen=write.maxlen, approximate=True)
        async with async_redis_errors(f"publish {len(writes)} events"):
            await pipe.execute()
        logger.debug("published %d events in one round trip", len(writes))

        return [write.event.id for write in writes]
