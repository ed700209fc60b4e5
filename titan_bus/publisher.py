"""Building, validating and writing events: the publish side of the bus.

Everything that decides what is written lives in :class:`EventFactory`, shared
by the asyncio :class:`Publisher` and the blocking
:class:`~titan_bus.sync.SyncPublisher`, so both apply the same checks. Nothing
reaches Redis unless every check passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from titan_bus.codec import EntryFields, canonical_json, encode_entry
from titan_bus.connection import async_redis_errors
from titan_bus.dedup import PUBLISH_ONCE_LUA, publish_once_args
from titan_bus.errors import PayloadTooLargeError, ReplicationError, ValidationError
from titan_bus.events import DEFAULT_PRIORITY, Event
from titan_bus.keys import KeySpace
from titan_bus.observe import Observer
from titan_bus.topics import TopicRegistry

logger = logging.getLogger(__name__)

Outgoing = Event | tuple[str, Mapping[str, Any]]


@dataclass(frozen=True)
class StreamWrite:
    """One event to write: its lane key, entry fields, and idempotency key.

    Lanes are not trimmed here: trimming at write time could drop entries no
    group has acknowledged yet (see :mod:`titan_bus.retention`).
    """

    key: str
    fields: EntryFields
    event: Event
    once_key: str | None = None

    def queue(self, pipe: Any, *, window_s: float) -> None:
        """Queue this write on a (sync or async) pipeline.

        With an idempotency key the write goes through a script that stores
        the event only if the key is new, and answers with the id stored.
        """
        if self.once_key is None:
            pipe.xadd(self.key, self.fields)
            return

        args = publish_once_args(window_s, self.event.id, self.fields)
        pipe.eval(PUBLISH_ONCE_LUA, 2, self.once_key, self.key, *args)

    def stored_id(self, reply: Any) -> str:
        """Return the id of the event Redis holds after this write's ``reply``."""
        if self.once_key is None:
            return self.event.id

        return reply.decode() if isinstance(reply, bytes) else str(reply)


class EventFactory:
    """Turns a topic and payload into a validated event and its stream write."""

    def __init__(
        self,
        registry: TopicRegistry,
        keys: KeySpace,
        source: str,
        observer: Observer | None = None,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.source = source
        self.observer = observer or Observer()

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
        self.observer.on_create(topic, all_headers)
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

    def write_for(
        self, item: Outgoing, *, idempotency_key: str | None = None
    ) -> StreamWrite:
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

        once = idempotency_key and self.keys.publish_key(event.topic, idempotency_key)

        return StreamWrite(
            key=self.keys.lane(event.topic, event.priority),
            fields=encode_entry(event),
            event=event,
            once_key=once or None,
        )

    def _recheck(self, event: Event) -> Event:
        spec = self.registry.get(event.topic)
        spec.validate(event.data)
        spec.lane_for(event.priority)

        return event


class Publisher:
    """Writes events to their lanes with the asyncio Redis client.

    Args:
        client: an asyncio Redis client.
        factory: builds and checks events.
        durability: replica acknowledgement and idempotency window defaults.
    """

    def __init__(
        self, client: aioredis.Redis, factory: EventFactory, durability: Durability
    ) -> None:
        self._client = client
        self.factory = factory
        self.durability = durability

    async def publish(
        self,
        topic: str,
        data: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        min_replicas: int | None = None,
        **options: Any,
    ) -> str:
        """Validate and write one event; return its id.

        Args:
            topic: the topic name.
            data: the payload.
            idempotency_key: publishing again with this key (within the
                window) stores nothing and returns the first event's id.
            min_replicas: replicas that must confirm the write before this
                returns; the configured ``redis.min_replicas`` if None.
            options: those of :meth:`EventFactory.event`.

        Raises:
            ReplicationError: fewer replicas confirmed within the timeout.
        """
        event = self.factory.event(topic, data, **options)
        write = self.factory.write_for(event, idempotency_key=idempotency_key)
        ids = await self._write([write], min_replicas=min_replicas)
        logger.debug("published %s event %s to %s", topic, ids[0], write.key)

        return ids[0]

    async def publish_many(
        self, items: Iterable[Outgoing], *, min_replicas: int | None = None
    ) -> list[str]:
        """Validate every item, then write them all in one pipelined round trip.

        Args:
            items: events from :meth:`EventFactory.event`, or ``(topic, data)``.
            min_replicas: as for :meth:`publish`.

        Returns:
            The event ids, in the order given.

        Raises:
            ValidationError: any item is invalid; then nothing is written.
        """
        writes = [self.factory.write_for(item) for item in items]
        if not writes:
            return []

        ids = await self._write(writes, min_replicas=min_replicas)
        logger.debug("published %d events in one round trip", len(writes))

        return ids

    async def _write(
        self, writes: list[StreamWrite], *, min_replicas: int | None
    ) -> list[str]:
        replicas = self.durability.replicas(min_replicas)
        pipe = self._client.pipeline(transaction=False)
        for write in writes:
            write.queue(pipe, window_s=self.durability.idempotency_window_s)
        if replicas:
            pipe.wait(replicas, self.durability.replica_timeout_ms)
        started = time.perf_counter()
        async with async_redis_errors(f"publish {len(writes)} events"):
            replies = await pipe.execute()
        self.factory.observer.on_published(
            [w.event for w in writes], time.perf_counter() - started
        )
        if replicas:
            self.durability.check(replies[-1], replicas)

        return [w.stored_id(r) for w, r in zip(writes, replies, strict=False)]


@dataclass(frozen=True)
class Durability:
    """How sure a publish must be before it returns.

    Attributes:
        min_replicas: replicas that must confirm each write (0: the primary only).
        replica_timeout_ms: how long to wait for them, in milliseconds.
        idempotency_window_s: how long a publisher's idempotency key is kept, s.
    """

    min_replicas: int = 0
    replica_timeout_ms: int = 1000
    idempotency_window_s: float = 3600.0

    def replicas(self, override: int | None) -> int:
        """Return the replica count to wait for, ``override`` first."""
        return self.min_replicas if override is None else override

    def check(self, confirmed: int, wanted: int) -> None:
        """Raise unless ``confirmed`` replicas reach ``wanted``.

        Raises:
            ReplicationError: they do not; the event is stored on the primary
                and may still be delivered, but could be lost in a failover.
        """
        if int(confirmed) < wanted:
            raise ReplicationError(
                f"only {confirmed} of {wanted} replicas confirmed the write within "
                f"{self.replica_timeout_ms} ms; the event is on the primary and may "
                "be lost if it fails over now"
            )
