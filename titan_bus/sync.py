"""A blocking publisher for scripts and threads that do not run asyncio."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from titan_bus.bus import DEFAULT_SOURCE, durability_from
from titan_bus.config import BusConfig, load_config
from titan_bus.connection import redis_errors, sync_client
from titan_bus.keys import KeySpace
from titan_bus.observe import Observer
from titan_bus.publisher import EventFactory, Outgoing, StreamWrite
from titan_bus.topics import TopicRegistry


class SyncPublisher:
    """Publish events with a blocking Redis client; same checks as the async bus.

    Use as a context manager, or call :meth:`close` when done::

        with SyncPublisher.from_config() as pub:
            pub.publish("system.v1", {"name": "backup.done"})
    """

    def __init__(
        self,
        config: BusConfig | None = None,
        *,
        source: str = DEFAULT_SOURCE,
        client: redis.Redis | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.config = config or BusConfig()
        self.factory = EventFactory(
            TopicRegistry.from_config(self.config),
            KeySpace(self.config.key_prefix),
            source,
            observer,
        )
        self.durability = durability_from(self.config)
        self._owns_client = client is None
        self.client = client or sync_client(self.config.redis)

    @classmethod
    def from_config(
        cls, path: str | Path | None = None, **options: Any
    ) -> SyncPublisher:
        """Build a publisher from a YAML file, ``$TITAN_CONFIG`` or defaults."""
        return cls(load_config(path), **options)

    def __enter__(self) -> SyncPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection this publisher opened."""
        if self._owns_client:
            self.client.close()

    def publish(
        self,
        topic: str,
        data: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        min_replicas: int | None = None,
        **options: Any,
    ) -> str:
        """Validate and publish one event; return its id.

        Arguments are those of :meth:`EventBus.publish`.
        """
        event = self.factory.event(topic, data, **options)
        write = self.factory.write_for(event, idempotency_key=idempotency_key)

        return self._write([write], min_replicas)[0]

    def publish_many(
        self, items: Iterable[Outgoing], *, min_replicas: int | None = None
    ) -> list[str]:
        """Validate all items, then publish them in one pipelined round trip."""
        writes = [self.factory.write_for(item) for item in items]

        return self._write(writes, min_replicas) if writes else []

    def _write(self, writes: list[StreamWrite], min_replicas: int | None) -> list[str]:
        replicas = self.durability.replicas(min_replicas)
        pipe = self.client.pipeline(transaction=False)
        for write in writes:
            write.queue(pipe, window_s=self.durability.idempotency_window_s)
        if replicas:
            pipe.wait(replicas, self.durability.replica_timeout_ms)
        started = time.perf_counter()
        with redis_errors(f"publish {len(writes)} events", self.config.redis.url):
            replies = pipe.execute()
        self.factory.observer.on_published(
            [w.event for w in writes], time.perf_counter() - started
        )
        if replicas:
            self.durability.check(replies[-1], replicas)

        return [w.stored_id(r) for w, r in zip(writes, replies, strict=False)]
