"""The :class:`Telemetry` observer: metrics, traces and log context of one bus.

Build it from the configuration and hand it to the bus::

    config = load_config()
    telemetry = Telemetry.from_config(config)
    bus = EventBus(config, observer=telemetry)   # or telemetry.install(bus)

    async with bus:
        await telemetry.start(bus)   # /metrics, /healthz, /readyz; Redis gauges
        try:
            await bus.run()
        finally:
            await telemetry.aclose()

A publisher-only program passes it to :class:`~titan_bus.sync.SyncPublisher`
or :class:`~titan_bus.bus.EventBus` the same way and may call :meth:`serve`
to expose its counters. With ``tracing.exporter: none`` and no
``metrics.port``, :meth:`Telemetry.enabled` is False: install nothing and the
bus runs with the no-op :class:`~titan_bus.observe.Observer`.

Telemetry never raises into the bus: a failure of its own is logged at DEBUG
and the event goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import Gauge

from titan_bus.config import BusConfig, MetricsConfig
from titan_bus.errors import ConfigError
from titan_bus.events import Event
from titan_bus.observe import DropReason, Observer, Outcome
from titan_bus.telemetry.gauges import DEFAULT_INTERVAL_S, RedisGauges
from titan_bus.telemetry.health import Check, HealthServer
from titan_bus.telemetry.logcontext import bind_delivery, unbind_delivery
from titan_bus.telemetry.metrics import BusMetrics
from titan_bus.telemetry.tracing import Tracing, tracer_provider_from

if TYPE_CHECKING:
    from titan_bus.bus import EventBus

logger = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
DEFAULT_STALL_S = 60.0


class Telemetry(Observer):
    """Feeds Prometheus metrics and OpenTelemetry spans from what the bus does.

    Args:
        metrics: the counters and histograms; no metrics if None.
        tracer_provider: where spans go; no tracing if None.
        metrics_config: where :meth:`serve` and :meth:`start` listen.
        gauge_interval_s: seconds between two reads of the Redis gauges.
        stall_s: ``/healthz`` fails when the event loop did not turn for
            this many seconds.
        owns_provider: shut ``tracer_provider`` down in :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        metrics: BusMetrics | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        metrics_config: MetricsConfig | None = None,
        gauge_interval_s: float = DEFAULT_INTERVAL_S,
        stall_s: float = DEFAULT_STALL_S,
        owns_provider: bool = False,
    ) -> None:
        self.metrics = metrics
        self.tracing = Tracing(tracer_provider) if tracer_provider else None
        self.metrics_config = metrics_config or MetricsConfig()
        self.gauge_interval_s = gauge_interval_s
        self.stall_s = stall_s
        self.gauges: RedisGauges | None = None
        self.server: HealthServer | None = None
        self._owns_provider = owns_provider
        self._tasks: list[asyncio.Task[None]] = []
        self._beat = time.monotonic()
        self._readiness: Check | None = None
        if metrics is not None:
            Gauge(
                "titan_bus_processor_ready",
                "1 while the processor is ready for work (as /readyz answers), else 0.",
                registry=metrics.registry,
            ).set_function(self._ready_value)

    @classmethod
    def from_config(cls, config: BusConfig, *, set_global: bool = True) -> Telemetry:
        """Build the telemetry that ``config``'s ``metrics:`` and ``tracing:`` ask for.

        Metrics are collected when ``metrics.port`` is set; spans are made when
        ``tracing.exporter`` is not ``none``.

        Args:
            config: the bus configuration.
            set_global: also make the new tracer provider the process-wide one,
                so that spans a handler starts with ``trace.get_tracer()`` are
                exported too (ignored, with a warning from OpenTelemetry, if a
                provider was already set).

        Raises:
            ConfigError: the tracing exporter cannot be built.
        """
        provider = tracer_provider_from(config.tracing)
        if provider is not None and set_global:
            trace.set_tracer_provider(provider)

        return cls(
            metrics=BusMetrics() if config.metrics.port is not None else None,
            tracer_provider=provider,
            metrics_config=config.metrics,
            owns_provider=provider is not None,
        )

    @staticmethod
    def enabled(config: BusConfig) -> bool:
        """Return True if ``config`` asks for metrics or traces."""
        return config.metrics.port is not None or config.tracing.exporter != "none"

    # -- wiring ----------------------------------------------------------------

    def install(self, bus: EventBus) -> None:
        """Make this the observer of ``bus``; call it before :meth:`EventBus.run`."""
        bus.observer = self
        bus.factory.observer = self
        if self.tracing is not None:
            self.tracing.group = bus.config.processor.group

    async def start(self, bus: EventBus) -> None:
        """Install on ``bus``; serve metrics and probes; start the Redis gauges.

        The HTTP endpoint and the gauges run only when metrics are collected.
        Calling it again while started does nothing more.

        Raises:
            ConfigError: the metrics port cannot be bound.
        """
        self.install(bus)
        if self.metrics is None or self.gauges is not None:
            return

        self.gauges = RedisGauges(
            bus.client,
            keys=bus.keys,
            topics=bus.topics,
            group=bus.config.processor.group,
            interval_s=self.gauge_interval_s,
        )
        self.metrics.registry.register(self.gauges)
        self._readiness = bus_readiness(bus)
        if self.metrics_config.port is not None:
            self.serve(readiness=self._readiness, liveness=self._loop_alive)
        self._tasks = [
            asyncio.create_task(self.gauges.run(), name="titan-gauges"),
            asyncio.create_task(self._heartbeat(), name="titan-heartbeat"),
        ]

    def serve(
        self,
        *,
        port: int | None = None,
        readiness: Check | None = None,
        liveness: Check | None = None,
    ) -> HealthServer:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` from a thread.

        Args:
            port: the TCP port; ``metrics.port`` if None (0: a free one).
            readiness: the ``/readyz`` check; always ready if None.
            liveness: the ``/healthz`` check; always alive if None.

        Raises:
            ConfigError: no port is configured or it cannot be bound.
        """
        port = self.metrics_config.port if port is None else port
        if port is None or self.metrics is None:
            raise ConfigError("metrics.port is not set: there is nothing to serve")

        self.server = HealthServer(
            self.metrics.registry,
            host=self.metrics_config.host,
            port=port,
            readiness=readiness,
            liveness=liveness,
        )
        self.server.start()

        return self.server

    async def aclose(self) -> None:
        """Stop the gauges and the HTTP endpoint; flush and end open spans."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self.metrics is not None and self.gauges is not None:
            self.metrics.registry.unregister(self.gauges)
            self.gauges = None
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        if self.tracing is not None:
            self.tracing.close()
            provider = self.tracing.provider
            if self._owns_provider and isinstance(provider, TracerProvider):
                await asyncio.to_thread(provider.shutdown)

    def _ready_value(self) -> float:
        return 1.0 if self._readiness is not None and self._readiness() is None else 0.0

    async def _heartbeat(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    def _loop_alive(self) -> str | None:
        quiet_s = time.monotonic() - self._beat
        if quiet_s > self.stall_s:
            return f"event loop has not run for {quiet_s:.0f} s"

        return None

    # -- the observation points ------------------------------------------------

    def on_create(self, topic: str, headers: dict[str, str]) -> None:
        """Start the producer span and add its trace context to ``headers``."""
        if self.tracing is not None:
            try:
                self.tracing.start_producer(topic, headers)
            except Exception:
                logger.debug("no producer span for a %s event", topic, exc_info=True)

    def on_published(self, events: Sequence[Event], duration_s: float) -> None:
        """Count the written events and end their producer spans."""
        try:
            if self.metrics is not None:
                self.metrics.published_events(events, duration_s)
            if self.tracing is not None:
                self.tracing.end_producers(events)
        except Exception:
            logger.debug(
                "telemetry of %d published events failed", len(events), exc_info=True
            )

    def on_publish_failed(self, events: Sequence[Event], error: BaseException) -> None:
        """End the producer spans of events that were not written, as failed."""
        if self.tracing is not None:
            try:
                self.tracing.fail_producers(events, error)
            except Exception:
                logger.debug("could not end %d producer spans", len(events))

    @contextlib.contextmanager
    def handle_scope(self, event: Event, lane: str) -> Iterator[None]:
        """Run one delivery's handlers with its log context and consumer span."""
        token = bind_delivery(event, lane)
        try:
            if self.tracing is None:
                yield
            else:
                with self.tracing.consumer_scope(event, lane):
                    yield
        finally:
            unbind_delivery(token)

    def on_outcome(
        self,
        event: Event,
        lane: str,
        outcome: Outcome,
        duration_s: float,
        error: BaseException | None = None,
    ) -> None:
        """Count how one delivery ended and record its durations."""
        if self.metrics is not None:
            try:
                self.metrics.outcome(event, lane, outcome, duration_s, error)
            except Exception:
                logger.debug(
                    "metrics of %s event %s failed",
                    event.topic,
                    event.id,
                    exc_info=True,
                )

    def on_dropped(self, topic: str, lane: str, reason: DropReason) -> None:
        """Count an entry dropped before its handlers ran."""
        if self.metrics is not None:
            try:
                self.metrics.dropped_entry(topic, lane, reason)
            except Exception:
                logger.debug(
                    "metrics of a dropped %s entry failed", topic, exc_info=True
                )

    def on_rate_limited(self, topic: str, scope: str) -> None:
        """Count a rate limiter holding work back."""
        if self.metrics is not None:
            try:
                self.metrics.limited(topic, scope)
            except Exception:
                logger.debug("metrics of a %s rate limit failed", topic, exc_info=True)


def bus_readiness(bus: EventBus) -> Check:
    """Return the ``/readyz`` check of ``bus``'s processor.

    Ready means: the processor exists, reached Redis, has its groups on every
    lane (its ``ready`` flag) and was not asked to stop.
    """

    def check() -> str | None:
        processor = bus.processor
        if processor is None:
            return "processor not started"
        if processor.stopping:
            return "processor is shutting down"
        if not processor.ready:
            return "processor is connecting to Redis or creating its groups"

        return None

    return check
