"""A blocking publisher for scripts and threads that do not run asyncio.

It runs an :class:`~titan_bus.bus.EventBus` on a private event loop in a
background thread and hands each call to it, so the blocking and asyncio
paths share one implementation and apply exactly the same checks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from titan_bus.bus import DEFAULT_SOURCE, EventBus
from titan_bus.config import BusConfig, load_config
from titan_bus.events import Event
from titan_bus.observe import Observer
from titan_bus.outgoing import Outgoing

T = TypeVar("T")


class SyncPublisher:
    """Publish events from blocking code; same checks as the async bus.

    Use as a context manager, or call :meth:`close` when done::

        with SyncPublisher.from_config() as pub:
            pub.publish("system.v1", {"name": "backup.done"})

    Args:
        config: the bus configuration; built-in defaults if None.
        source: the publisher identity stamped on events that name none.
        observer: receives what the publisher does (metrics, tracing).
    """

    def __init__(
        self,
        config: BusConfig | None = None,
        *,
        source: str = DEFAULT_SOURCE,
        observer: Observer | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="titan-sync-publisher", daemon=True
        )
        self._thread.start()
        self.bus = self._call(_make_bus(config, source, observer))
        self.config = self.bus.config
        self.factory = self.bus.factory

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
        """Close the connection and stop the background loop (idempotent)."""
        if self._loop.is_closed():
            return
        self._call(self.bus.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def event(self, topic: str, data: Mapping[str, Any], **options: Any) -> Event:
        """Return a validated event without publishing it (for :meth:`publish_many`)."""
        return self.bus.event(topic, data, **options)

    def publish(self, topic: str, data: Mapping[str, Any], **options: Any) -> str:
        """Validate and publish one event; return its id.

        Arguments are those of :meth:`titan_bus.EventBus.publish`.
        """
        return self._call(self.bus.publish(topic, data, **options))

    def publish_many(self, items: Iterable[Outgoing], **options: Any) -> list[str]:
        """Validate all items, then publish them in one pipelined round trip."""
        return self._call(self.bus.publish_many(list(items), **options))

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()


async def _make_bus(
    config: BusConfig | None, source: str, observer: Observer | None
) -> EventBus:
    # Built on the private loop, so the client's connections belong to it.
    return EventBus(config, source=source, observer=observer)
