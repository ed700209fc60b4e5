"""OpenTelemetry traces across publish and handle.

Publishing starts a PRODUCER span ``send <topic>`` and stores its W3C trace
context in the event's headers (``traceparent``, and ``tracestate`` when not
empty; both are valid CloudEvents extension names). The span stays open while
the event is written and ends when :meth:`Tracing.end_producers` sees the
write confirmed, so it covers validation and the Redis round trip and carries
the event id. An event built but never written (a failed publish, or
:meth:`EventBus.event` without a publish) keeps its span open until
``MAX_OPEN_PRODUCER_SPANS`` newer ones push it out or the telemetry closes;
it then ends at its start time with ``messaging.titan.published=false``.

The processor continues the trace: each delivery runs inside a CONSUMER span
``process <topic>`` whose parent is the producer span, read back from the
stored headers. A retry re-delivers the stored envelope unchanged, so every
attempt, a replay from the dead letters included, is a child of the same
producer span; ``messaging.titan.attempt`` tells the attempts apart. The
consumer span is the current span while handlers run, so a handler's own
spans nest under it. Attribute names follow the OpenTelemetry messaging
semantic conventions; ``messaging.system`` is ``titan_bus``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from titan_bus import __version__
from titan_bus.config import TracingConfig
from titan_bus.errors import ConfigError
from titan_bus.events import Event

logger = logging.getLogger(__name__)

SYSTEM = "titan_bus"
"""The ``messaging.system`` attribute of every span."""

MAX_OPEN_PRODUCER_SPANS = 10_000
"""Producer spans kept open awaiting their write before the oldest is ended."""

OTLP_HTTP_PATH = "/v1/traces"
GRPC_EXPORTER = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"


def tracer_provider_from(config: TracingConfig) -> TracerProvider | None:
    """Return an SDK tracer provider exporting as ``config`` says; None for ``none``.

    ``console`` writes each span as the SDK's JSON record to standard output
    when it ends; ``otlp`` batches spans to ``endpoint`` over HTTP (default
    ``http://localhost:4318/v1/traces``) or gRPC (default ``localhost:4317``).

    Raises:
        ConfigError: gRPC was asked for but its exporter package is missing.
    """
    if config.exporter == "none":
        return None

    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": config.service_name, "service.version": __version__}
        )
    )
    if config.exporter == "console":
        console = ConsoleSpanExporter(service_name=config.service_name, out=sys.stdout)
        provider.add_span_processor(SimpleSpanProcessor(console))
    else:
        provider.add_span_processor(BatchSpanProcessor(otlp_exporter(config)))

    return provider


def otlp_exporter(config: TracingConfig) -> SpanExporter:
    """Return the OTLP span exporter for ``config.protocol`` and ``endpoint``.

    Raises:
        ConfigError: gRPC was asked for but its exporter package is missing.
    """
    if config.protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        return OTLPSpanExporter(endpoint=http_endpoint(config.endpoint))

    try:
        grpc = importlib.import_module(GRPC_EXPORTER)
    except ImportError as exc:
        raise ConfigError(
            "tracing.protocol: grpc needs the package "
            "opentelemetry-exporter-otlp-proto-grpc (pip install it), or use "
            "protocol: http"
        ) from exc
    exporter: SpanExporter = grpc.OTLPSpanExporter(endpoint=config.endpoint)

    return exporter


def http_endpoint(endpoint: str | None) -> str | None:
    """Return an OTLP/HTTP traces URL: ``/v1/traces`` added to a bare base URL."""
    if endpoint is None:
        return None

    _, sep, rest = endpoint.partition("://")
    if sep and "/" not in rest.rstrip("/"):
        return endpoint.rstrip("/") + OTLP_HTTP_PATH

    return endpoint


class Tracing:
    """Starts and ends the producer and consumer spans of one bus.

    Args:
        provider: where spans go (an SDK provider, or any API provider).
        group: the consumer group, recorded on consumer spans.
    """

    def __init__(
        self, provider: trace.TracerProvider, *, group: str | None = None
    ) -> None:
        self.provider = provider
        self.group = group
        self._tracer = provider.get_tracer("titan_bus", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._open: OrderedDict[str, trace.Span] = OrderedDict()
        self._lock = threading.Lock()

    # -- producer --------------------------------------------------------------

    def start_producer(self, topic: str, headers: dict[str, str]) -> None:
        """Start the span of an event being built and write its context to headers.

        The parent is the current span (an event published by a handler
        continues the handler's trace), else a ``traceparent`` already in
        ``headers`` (an event passed on from another system), else none.
        """
        parent = None
        current = trace.get_current_span().get_span_context()
        if not current.is_valid and "traceparent" in headers:
            parent = self._propagator.extract(headers)
        span = self._tracer.start_span(
            f"send {topic}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.destination.name": topic,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
            },
        )
        headers.pop("tracestate", None)
        self._propagator.inject(headers, context=trace.set_span_in_context(span))
        if "traceparent" not in headers:
            span.end()
            return

        with self._lock:
            self._open[headers["traceparent"]] = span
            while len(self._open) > MAX_OPEN_PRODUCER_SPANS:
                _, stale = self._open.popitem(last=False)
                _end_unpublished(stale)

    def end_producers(self, events: Sequence[Event]) -> None:
        """End the producer spans of events whose write Redis confirmed."""
        for event in events:
            parent = event.headers.get("traceparent")
            if parent is None:
                continue
            with self._lock:
                span = self._open.pop(parent, None)
            if span is None:
                continue
            span.set_attributes(_message_attributes(event, event.priority))
            span.end()

    def fail_producers(self, events: Sequence[Event], exc: BaseException) -> None:
        """End, as failed, the producer spans of events that were not written."""
        for event in events:
            parent = event.headers.get("traceparent")
            with self._lock:
                span = self._open.pop(parent, None) if parent else None
            if span is not None:
                _record_failure(span, exc)
                span.end()

    def close(self) -> None:
        """End every producer span still waiting for its write."""
        with self._lock:
            spans = list(self._open.values())
            self._open.clear()
        for span in spans:
            _end_unpublished(span)

    # -- consumer --------------------------------------------------------------

    @contextlib.contextmanager
    def consumer_scope(self, event: Event, lane: str) -> Iterator[None]:
        """Run the block inside the consumer span of one delivery of ``event``.

        An exception leaving the block is recorded on the span, which is then
        ended, and propagates unchanged. A failure of tracing itself is logged
        at DEBUG and never reaches the handlers.
        """
        try:
            span = self._start_consumer(event, lane)
            token = context.attach(trace.set_span_in_context(span))
        except Exception:
            logger.debug("no consumer span for %s event %s", event.topic, event.id)
            yield
            return

        try:
            yield
        except BaseException as exc:
            _record_failure(span, exc)
            raise
        finally:
            context.detach(token)
            try:
                span.end()
            except Exception:
                logger.debug("could not end the span of %s", event.id, exc_info=True)

    def _start_consumer(self, event: Event, lane: str) -> trace.Span:
        attributes = _message_attributes(event, lane)
        attributes.update(
            {
                "messaging.system": SYSTEM,
                "messaging.destination.name": event.topic,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.titan.attempt": event.attempt,
            }
        )
        if self.group is not None:
            attributes["messaging.consumer.group.name"] = self.group

        return self._tracer.start_span(
            f"process {event.topic}",
            context=self._propagator.extract(event.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )


def _message_attributes(event: Event, lane: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.message.id": event.id,
        "messaging.titan.lane": lane,
    }
    if event.correlation_id is not None:
        attributes["messaging.message.conversation_id"] = event.correlation_id

    return attributes


def _record_failure(span: trace.Span, exc: BaseException) -> None:
    try:
        name = type(exc).__name__
        span.set_attribute("error.type", name)
        if isinstance(exc, Exception):
            span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{name}: {exc}"))
    except Exception:
        logger.debug("could not record %s on a consumer span", type(exc).__name__)


def _end_unpublished(span: trace.Span) -> None:
    span.set_attribute("messaging.titan.published", False)
    start = getattr(span, "start_time", None)
    span.end(end_time=start if isinstance(start, int) else None)
