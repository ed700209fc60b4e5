"""Telemetry of the bus: Prometheus metrics, OpenTelemetry traces, probes, log context.

- :class:`Telemetry` is the observer to hand to a bus or publisher;
- :mod:`~titan_bus.telemetry.metrics`: counters and histograms;
- :mod:`~titan_bus.telemetry.gauges`: gauges read from Redis periodically;
- :mod:`~titan_bus.telemetry.tracing`: producer and consumer spans, exporters;
- :mod:`~titan_bus.telemetry.health`: ``/metrics``, ``/healthz``, ``/readyz``;
- :mod:`~titan_bus.telemetry.logcontext`: event id, topic, lane and trace id on
  log records.
"""

from titan_bus.telemetry.gauges import RedisGauges
from titan_bus.telemetry.health import HealthServer
from titan_bus.telemetry.logcontext import LogContextFilter, install_log_context
from titan_bus.telemetry.metrics import BusMetrics
from titan_bus.telemetry.observer import Telemetry, bus_readiness
from titan_bus.telemetry.tracing import Tracing, tracer_provider_from

__all__ = [
    "BusMetrics",
    "HealthServer",
    "LogContextFilter",
    "RedisGauges",
    "Telemetry",
    "Tracing",
    "bus_readiness",
    "install_log_context",
    "tracer_provider_from",
]
