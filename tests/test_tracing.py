"""OpenTelemetry traces: publish in one process, retry and handle in another.

The process-wide tracer provider is set once, here, to an SDK provider with an
in-memory exporter, so that spans a handler starts with the global API are
recorded too, as they would be in an application.
"""

from __future__ import annotations

import asyncio
import http.server
import importlib.util
import itertools
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode
from telemetry_helpers import running, wait_until

from titan_bus import Event, EventBus
from titan_bus.errors import ConfigError, RateLimitError
from titan_bus.telemetry import LogContextFilter, Telemetry, tracer_provider_from
from titan_bus.telemetry.tracing import http_endpoint

pytestmark = pytest.mark.timeout(60)

FAST_RETRIES = {"retry_limit": 2, "retry_base_s": 0.01, "retry_max_s": 0.02}

PUBLISHER = """
import json, sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from titan_bus import SyncPublisher
from titan_bus.config import parse_config
from titan_bus.telemetry import Telemetry

config = parse_config({"redis": {"url": sys.argv[1]}, "key_prefix": sys.argv[2]})
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
with SyncPublisher(config, observer=Telemetry(tracer_provider=provider)) as pub:
    event_id = pub.publish("system.v1", {"name": "traced"}, correlation_id="conv-7")
[span] = exporter.get_finished_spans()
print(json.dumps({
    "event_id": event_id,
    "trace_id": format(span.context.trace_id, "032x"),
    "span_id": format(span.context.span_id, "016x"),
    "kind": span.kind.name,
    "name": span.name,
    "attributes": dict(span.attributes),
}))
"""


@pytest.fixture(scope="module")
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """The process-wide SDK tracer provider, recording into memory."""
    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(sdk)
    assert trace.get_tracer_provider() is sdk, "another test set a global provider"
    return sdk, exporter


@pytest.fixture
def spans(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> Iterator[InMemorySpanExporter]:
    """The in-memory exporter, emptied before and after the test."""
    exporter = provider[1]
    exporter.clear()
    yield exporter
    exporter.clear()


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    """Return (trace id, span id, parent span id) of ``span`` in hex."""
    assert span.context is not None
    parent = format(span.parent.span_id, "016x") if span.parent else None
    return (
        format(span.context.trace_id, "032x"),
        format(span.context.span_id, "016x"),
        parent,
    )


def finished(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == kind]


async def publish_in_subprocess(redis_url: str, key_prefix: str) -> dict[str, Any]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PUBLISHER,
        redis_url,
        key_prefix,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=30)
    assert child.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


def check_producer_span(produced: dict[str, Any]) -> None:
    """Check what the publisher process reported of its producer span."""
    assert produced["kind"] == "PRODUCER"
    assert produced["name"] == "send system.v1"
    attributes = produced["attributes"]
    assert attributes["messaging.message.id"] == produced["event_id"]
    assert attributes["messaging.destination.name"] == "system.v1"
    assert attributes["messaging.operation.type"] == "send"
    assert attributes["messaging.message.conversation_id"] == "conv-7"


async def test_one_trace_from_a_publisher_process_through_a_retry_to_the_handler(
    make_config: Any,
    redis_url: str,
    key_prefix: str,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    spans: InMemorySpanExporter,
) -> None:
    telemetry = Telemetry(tracer_provider=provider[0])
    bus = EventBus(make_config(defaults=FAST_RETRIES), observer=telemetry)
    telemetry.install(bus)
    tracer = trace.get_tracer("tests.handler")
    attempts: list[int] = []

    @bus.subscribe("system.v1")
    async def flaky(event: Event) -> None:
        with tracer.start_as_current_span(f"handler work {event.attempt}"):
            attempts.append(event.attempt)
            if event.attempt == 1:
                raise RuntimeError("first attempt fails")

    async with bus, running(bus):
        produced = await publish_in_subprocess(redis_url, key_prefix)
        await wait_until(
            lambda: len(finished(spans, SpanKind.CONSUMER)) == 2,
            what="two consumer spans",
        )

    assert attempts == [1, 2]
    check_producer_span(produced)

    consumers = sorted(
        finished(spans, SpanKind.CONSUMER),
        key=lambda s: s.attributes["messaging.titan.attempt"],  # type: ignore[index]
    )
    work = {s.name: s for s in finished(spans, SpanKind.INTERNAL)}
    for attempt, consumer in enumerate(consumers, start=1):
        trace_id, span_id, parent = hex_ids(consumer)
        assert (trace_id, parent) == (produced["trace_id"], produced["span_id"])
        assert consumer.name == "process system.v1"
        assert consumer.attributes is not None
        assert consumer.attributes["messaging.titan.attempt"] == attempt
        assert consumer.attributes["messaging.message.id"] == produced["event_id"]
        assert consumer.attributes["messaging.operation.type"] == "process"
        assert consumer.attributes["messaging.consumer.group.name"] == "titan"
        own = work[f"handler work {attempt}"]
        assert hex_ids(own)[0] == trace_id
        assert hex_ids(own)[2] == span_id

    assert consumers[0].status.status_code is StatusCode.ERROR
    assert consumers[0].attributes is not None
    assert consumers[0].attributes["error.type"] == "RuntimeError"
    assert consumers[1].status.status_code is StatusCode.UNSET


async def test_an_event_published_by_a_handler_continues_its_trace(
    make_config: Any,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    spans: InMemorySpanExporter,
) -> None:
    telemetry = Telemetry(tracer_provider=provider[0])
    bus = EventBus(make_config(), observer=telemetry)
    done = asyncio.Event()

    @bus.subscribe("system.v1")
    async def relay(event: Event) -> None:
        await bus.publish("plugin.v1", {"plugin": "p", "name": "n", "data": {}})

    @bus.subscribe("plugin.v1")
    async def last(event: Event) -> None:
        done.set()

    async with bus, running(bus):
        first = await bus.publish("system.v1", {"name": "start"})
        await asyncio.wait_for(done.wait(), timeout=10)
        await wait_until(lambda: len(finished(spans, SpanKind.CONSUMER)) == 2)

    producers = {s.name: s for s in finished(spans, SpanKind.PRODUCER)}
    consumers = {s.name: s for s in finished(spans, SpanKind.CONSUMER)}
    root = producers["send system.v1"]
    assert root.parent is None
    assert root.attributes is not None
    assert root.attributes["messaging.message.id"] == first
    chain = [
        root,
        consumers["process system.v1"],
        producers["send plugin.v1"],
        consumers["process plugin.v1"],
    ]
    for parent, child in itertools.pairwise(chain):
        assert hex_ids(child)[0] == hex_ids(root)[0]
        assert hex_ids(child)[2] == hex_ids(parent)[1]


async def test_handler_logs_carry_event_topic_lane_and_trace_id(
    make_config: Any,
    provider: tuple[TracerProvider, InMemorySpanExporter],
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tests.handler")
    caplog.handler.addFilter(LogContextFilter())
    telemetry = Telemetry(tracer_provider=provider[0])
    bus = EventBus(make_config(), observer=telemetry)

    @bus.subscribe("system.v1")
    async def chatty(event: Event) -> None:
        logging.getLogger("tests.handler").info("working on it")

    async with bus, running(bus):
        event_id = await bus.publish("system.v1", {"name": "log"}, priority="high")
        await wait_until(lambda: len(finished(spans, SpanKind.CONSUMER)) == 1)

    [record] = [r for r in caplog.records if r.name == "tests.handler"]
    [consumer] = finished(spans, SpanKind.CONSUMER)
    assert record.event_id == event_id  # type: ignore[attr-defined]
    assert record.topic == "system.v1"  # type: ignore[attr-defined]
    assert record.lane == "high"  # type: ignore[attr-defined]
    assert record.trace_id == hex_ids(consumer)[0]  # type: ignore[attr-defined]


class _BrokenTracer(trace.NoOpTracer):
    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        raise RuntimeError("tracing backend broke")


class _BrokenProvider(trace.NoOpTracerProvider):
    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _BrokenTracer()


async def test_a_failing_tracer_never_fails_an_event(make_config: Any) -> None:
    bus = EventBus(make_config(), observer=Telemetry(tracer_provider=_BrokenProvider()))
    handled: list[str] = []

    @bus.subscribe("system.v1")
    async def handler(event: Event) -> None:
        handled.append(event.id)

    async with bus, running(bus):
        event_id = await bus.publish("system.v1", {"name": "still works"})
        await wait_until(lambda: handled == [event_id], what="event handled")


def test_console_exporter_prints_json_span_records(
    make_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from titan_bus import SyncPublisher

    config = make_config(tracing={"exporter": "console", "service_name": "svc-x"})
    telemetry = Telemetry.from_config(config, set_global=False)
    with SyncPublisher(config, observer=telemetry) as publisher:
        event_id = publisher.publish("system.v1", {"name": "to the console"})
    assert telemetry.tracing is not None
    provider = telemetry.tracing.provider
    assert isinstance(provider, TracerProvider)
    provider.shutdown()

    record = json.loads(capsys.readouterr().out)
    assert record["name"] == "send system.v1"
    assert record["kind"] == "SpanKind.PRODUCER"
    assert record["attributes"]["messaging.message.id"] == event_id
    assert record["resource"]["attributes"]["service.name"] == "svc-x"


def test_tracing_none_installs_no_tracer(make_config: Any) -> None:
    telemetry = Telemetry.from_config(make_config(), set_global=False)

    assert telemetry.tracing is None
    assert not Telemetry.enabled(make_config())


def test_producer_span_of_an_unpublished_event_ends_on_close(
    provider: tuple[TracerProvider, InMemorySpanExporter],
    spans: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    telemetry = Telemetry(tracer_provider=provider[0])
    assert telemetry.tracing is not None
    headers: dict[str, str] = {}
    telemetry.on_create("chat.v1", headers)

    assert headers["traceparent"].startswith("00-")
    assert not spans.get_finished_spans()

    telemetry.tracing.close()
    [span] = spans.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["messaging.titan.published"] is False


async def test_a_refused_publish_ends_its_producer_span_as_failed(
    provider: tuple[TracerProvider, InMemorySpanExporter],
    spans: InMemorySpanExporter,
    make_config: Any,
) -> None:
    config = make_config(
        publishers=[{"name": "noisy", "rate_limit": 1, "rate_burst": 1}]
    )
    telemetry = Telemetry(tracer_provider=provider[0])
    async with EventBus(config, observer=telemetry) as bus:
        await bus.publish("system.v1", {"name": "first"}, source="noisy")
        with pytest.raises(RateLimitError):
            await bus.publish("system.v1", {"name": "second"}, source="noisy")

    sent, refused = finished(spans, SpanKind.PRODUCER)
    assert sent.status.status_code != StatusCode.ERROR
    assert refused.status.status_code == StatusCode.ERROR
    assert refused.attributes is not None
    assert refused.attributes["error.type"] == "RateLimitError"


class _Collector(http.server.BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP receiver: keeps each POST's path and body."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_otlp_http_exporter_sends_spans_to_the_configured_endpoint(
    make_config: Any,
) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
        config = make_config(
            tracing={"exporter": "otlp", "endpoint": endpoint, "service_name": "jx"}
        )
        telemetry = Telemetry.from_config(config, set_global=False)
        async with EventBus(config, observer=telemetry) as bus:
            event_id = await bus.publish("system.v1", {"name": "to jaeger"})
        await telemetry.aclose()  # flushes the batch
    finally:
        receiver.shutdown()
        receiver.server_close()

    [(path, content_type, body)] = _Collector.received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    request = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = request.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "jx"
    [span] = [s for scope in resource_spans.scope_spans for s in scope.spans]
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert span.name == "send system.v1"
    assert attributes["messaging.message.id"] == event_id


def test_otlp_grpc_needs_its_package_or_says_so(make_config: Any) -> None:
    config = make_config(tracing={"exporter": "otlp", "protocol": "grpc"})
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None:
        with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp-proto-grpc"):
            tracer_provider_from(config.tracing)
        return

    provider = tracer_provider_from(config.tracing)
    assert provider is not None
    provider.shutdown()


@pytest.mark.parametrize(
    ("given", "used"),
    [
        (None, None),
        ("http://jaeger:4318", "http://jaeger:4318/v1/traces"),
        ("http://jaeger:4318/", "http://jaeger:4318/v1/traces"),
        ("https://otel.example/v1/traces", "https://otel.example/v1/traces"),
        ("http://gw:8080/otlp/v1/traces", "http://gw:8080/otlp/v1/traces"),
    ],
)
def test_a_bare_otlp_http_endpoint_gets_the_traces_path(
    given: str | None, used: str | None
) -> None:
    assert http_endpoint(given) == used
