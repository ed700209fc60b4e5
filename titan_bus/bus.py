"""The :class:`EventBus`: the one object an application holds.

It ties configuration, topics, the Redis connection, the publisher and the
processor together::

    bus = EventBus.from_config()

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        print(event.data["text"])

    async with bus:
        await bus.publish("chat.v1", {"conversation_id": "c1", "role": "user",
                                      "text": "hello"})
        await bus.run()          # until bus.stop() or a signal
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis

from titan_bus.config import BusConfig, load_config
from titan_bus.connection import async_client, async_redis_errors
from titan_bus.dlq import DeadLetters
from titan_bus.events import DEFAULT_PRIORITY, Event
from titan_bus.keys import KeySpace
from titan_bus.observe import Observer
from titan_bus.outgoing import EventFactory, Outgoing
from titan_bus.processor import Handler, Processor
from titan_bus.publisher import QuotaPolicy
from titan_bus.topics import TopicRegistry
from titan_bus.wiring import build_flow_gate, build_publisher

logger = logging.getLogger(__name__)

DEFAULT_SOURCE = "titan"


class EventBus:
    """Publish events and run handlers on one Titan bus.

    Args:
        config: the resolved configuration (see :func:`load_config`).
        source: the publisher identity stamped on events that name none.
        client: an asyncio Redis client to use instead of one from the config.
        observer: receives what the bus does (metrics, tracing); none if None.
    """

    def __init__(
        self,
        config: BusConfig | None = None,
        *,
        source: str = DEFAULT_SOURCE,
        client: aioredis.Redis | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.config = config or BusConfig()
        self.observer = observer or Observer()
        self.topics = TopicRegistry.from_config(self.config)
        self.keys = KeySpace(self.config.key_prefix)
        self._owns_client = client is None
        self.client = client or async_client(self.config.redis)
        self._publisher = build_publisher(
            self.client, self.config, self.topics, source=source, observer=self.observer
        )
        self._handlers: dict[str, list[Handler]] = {}
        self.processor: Processor | None = None
        self.dead_letters = DeadLetters(
            self.client, keys=self.keys, registry=self.topics
        )

    @property
    def factory(self) -> EventFactory:
        """Builds and checks this bus's events (see :meth:`event`)."""
        return self._publisher.factory

    @classmethod
    def from_config(cls, path: str | Path | None = None, **options: Any) -> EventBus:
        """Build a bus from a YAML file, ``$TITAN_CONFIG`` or built-in defaults.

        Raises:
            ConfigError: the configuration is invalid; the message names the key.
        """
        return cls(load_config(path), **options)

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> EventBus:
        await self.ping()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def ping(self) -> None:
        """Check that Redis answers.

        Raises:
            BusConnectionError: it does not; the message names the server.
        """
        async with async_redis_errors("connect", self.config.redis.url):
            await self.client.ping()

    async def aclose(self) -> None:
        """Stop the processor if running and close the connection this bus opened."""
        self.stop()
        if self._owns_client:
            await self.client.aclose()

    # -- publishing ----------------------------------------------------------

    def event(self, topic: str, data: Mapping[str, Any], **options: Any) -> Event:
        """Return a validated event without publishing it (for :meth:`publish_many`)."""
        return self.factory.event(topic, data, **options)

    async def publish(
        self,
        topic: str,
        data: Mapping[str, Any],
        *,
        priority: str = DEFAULT_PRIORITY,
        source: str | None = None,
        subject: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        idempotency_key: str | None = None,
        delay_s: float | None = None,
        at: datetime | None = None,
        min_replicas: int | None = None,
        on_quota: QuotaPolicy = "raise",
    ) -> str:
        """Validate ``data`` against ``topic`` and publish it; return the event id.

        Args:
            topic: the topic, e.g. ``"chat.v1"``.
            data: the payload, checked against the topic's schema.
            priority: the lane, e.g. ``"high"``.
            source: the publisher identity; the bus's ``source`` if None.
            subject: optional subject within the source.
            headers: extra CloudEvents extensions (lowercase names).
            correlation_id: ties the event to a conversation or workflow.
            causation_id: the id of the event that caused this one.
            idempotency_key: a second publish with the same key (within
                ``processor.idempotency_window_s``) stores nothing and
                returns the first event's id.
            delay_s: hold the event in Redis this many seconds first.
            at: hold the event until this time (timezone-aware).
            min_replicas: replicas that must confirm the write (``WAIT``);
                ``redis.min_replicas`` if None.
            on_quota: over the publisher's quota, ``"raise"`` at once or
                ``"wait"`` for it.

        Raises:
            UnknownTopicError: no such topic.
            ValidationError: the payload or an option is invalid.
            PayloadTooLargeError: the payload is over ``max_payload_bytes``.
            RateLimitError: the publisher is over its quota (``retry_after_s``).
            BacklogFullError: the topic holds ``max_backlog`` unacked events.
            BusConnectionError: Redis did not take the write.
            ReplicationError: fewer replicas than asked confirmed it in time.
        """
        return await self._publisher.publish(
            topic,
            data,
            priority=priority,
            source=source,
            subject=subject,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            idempotency_key=idempotency_key,
            delay_s=delay_s,
            at=at,
            min_replicas=min_replicas,
            on_quota=on_quota,
        )

    async def publish_many(
        self,
        items: Iterable[Outgoing],
        *,
        min_replicas: int | None = None,
        on_quota: QuotaPolicy = "raise",
    ) -> list[str]:
        """Publish several events in one round trip; all are validated first.

        Args:
            items: events from :meth:`event`, or ``(topic, data)`` pairs.
            min_replicas: as for :meth:`publish`.
            on_quota: as for :meth:`publish`.
        """
        return await self._publisher.publish_many(
            items, min_replicas=min_replicas, on_quota=on_quota
        )

    # -- handling ------------------------------------------------------------

    def subscribe(self, topic: str) -> Callable[[Handler], Handler]:
        """Decorator: run ``async def handler(event)`` for each event of ``topic``.

        Raises:
            UnknownTopicError: ``topic`` is not registered.
        """
        self.topics.get(topic)

        def register(handler: Handler) -> Handler:
            self._handlers.setdefault(topic, []).append(handler)
            return handler

        return register

    @property
    def subscriptions(self) -> dict[str, list[Handler]]:
        """Topic name to the handlers subscribed to it."""
        return {topic: list(hs) for topic, hs in self._handlers.items()}

    def make_processor(self, *, consumer: str | None = None) -> Processor:
        """Return a processor for this bus's subscriptions (not yet running)."""
        return Processor(
            self.client,
            registry=self.topics,
            keys=self.keys,
            config=self.config.processor,
            handlers=self._handlers,
            consumer=consumer,
            observer=self.observer,
            gate=build_flow_gate(
                self.client, self.config, self.topics, list(self._handlers)
            ),
        )

    async def run(self, *, consumer: str | None = None) -> None:
        """Run the handlers until :meth:`stop` is called."""
        self.processor = self.make_processor(consumer=consumer)
        await self.processor.run()

    def stop(self) -> None:
        """Ask a running :meth:`run` to finish in-flight work and return."""
        if self.processor is not None:
            self.processor.stop()
