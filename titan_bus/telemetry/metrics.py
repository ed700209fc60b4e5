"""Prometheus metrics of the bus: counters and histograms fed by the observer.

Every name starts with ``titan_bus_``. Labels are ``topic``, ``lane`` and, where
it says what happened, ``outcome`` or ``reason``; all of them come from the
configuration or a fixed list, never from an event (no event ids), so the
number of series stays bounded.

Each :class:`BusMetrics` owns its own :class:`~prometheus_client.CollectorRegistry`
(tests build several in one process); the HTTP endpoint of
:mod:`titan_bus.telemetry.health` serves that registry.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from titan_bus.events import Event
from titan_bus.observe import DropReason, Outcome
from titan_bus.signals import HandlerSignal

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    900.0,
)
"""Histogram buckets of the end-to-end latency, in seconds (retries wait long)."""

DURATION_BUCKETS_S = LATENCY_BUCKETS_S[:14]
"""Histogram buckets of handler and publish durations, in seconds."""

_DEAD_LETTER_REASON = {"dead_lettered": "exhausted", "rejected": "rejected"}


class BusMetrics:
    """The counters and histograms of one bus, registered in ``registry``.

    Args:
        registry: where the metrics are registered; a new one if None.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._make_counters(self.registry)
        self._make_histograms(self.registry)
        self._counters: dict[tuple[object, ...], Counter] = {}
        self._histos: dict[tuple[object, ...], Histogram] = {}

    def _make_counters(self, reg: CollectorRegistry) -> None:
        self.published = Counter(
            "titan_bus_events_published",
            "Events written to a lane by publishers of this process.",
            ["topic", "lane"],
            registry=reg,
        )
        self.handled = Counter(
            "titan_bus_events_handled",
            "Deliveries that ran their handlers, by how they ended "
            "(handled, retried, dead_lettered, rejected).",
            ["topic", "lane", "outcome"],
            registry=reg,
        )
        self.failed = Counter(
            "titan_bus_events_failed",
            "Deliveries whose handler raised an error or timed out (control "
            "signals RetryLater and Reject are not counted).",
            ["topic", "lane"],
            registry=reg,
        )
        self.retried = Counter(
            "titan_bus_events_retried",
            "Deliveries scheduled for another attempt.",
            ["topic", "lane"],
            registry=reg,
        )
        self.dead_lettered = Counter(
            "titan_bus_events_dead_lettered",
            "Entries moved to the dead letters, by reason "
            "(exhausted, rejected, malformed).",
            ["topic", "lane", "reason"],
            registry=reg,
        )
        self.dropped = Counter(
            "titan_bus_events_dropped",
            "Entries acknowledged without reaching a handler, by reason "
            "(duplicate, malformed, vanished).",
            ["topic", "lane", "reason"],
            registry=reg,
        )
        self.rate_limited = Counter(
            "titan_bus_rate_limited",
            "Times a rate limiter held work back, by scope.",
            ["topic", "scope"],
            registry=reg,
        )

    def _make_histograms(self, reg: CollectorRegistry) -> None:
        self.latency = Histogram(
            "titan_bus_end_to_end_latency_seconds",
            "From the event's time (publish) to its handlers done, for "
            "handled deliveries, including retry waits, in seconds.",
            ["topic", "lane"],
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.handler_duration = Histogram(
            "titan_bus_handler_duration_seconds",
            "Time the handlers of one delivery ran, whatever the outcome, in seconds.",
            ["topic", "lane"],
            buckets=DURATION_BUCKETS_S,
            registry=reg,
        )
        self.publish_duration = Histogram(
            "titan_bus_publish_duration_seconds",
            "Time of one publish round trip to Redis (one or many events), in seconds.",
            buckets=DURATION_BUCKETS_S,
            registry=reg,
        )

    def count(self, metric: Counter, *labels: str) -> None:
        """Add one to ``metric`` with the given label values."""
        # labels() takes a lock and builds a tuple on each call; per-event code
        # reuses the child it got the first time for the same label values.
        key = (id(metric), *labels)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = metric.labels(*labels)
        child.inc()

    def observe(self, metric: Histogram, value: float, *labels: str) -> None:
        """Record ``value`` in histogram ``metric`` with the given label values."""
        key = (id(metric), *labels)
        child = self._histos.get(key)
        if child is None:
            child = self._histos[key] = metric.labels(*labels)
        child.observe(value)

    # -- what the observer reports ---------------------------------------------

    def published_events(self, events: Sequence[Event], duration_s: float) -> None:
        """Count events written in one round trip of ``duration_s`` seconds."""
        for event in events:
            self.count(self.published, event.topic, event.priority)
        self.publish_duration.observe(duration_s)

    def outcome(
        self,
        event: Event,
        lane: str,
        outcome: Outcome,
        duration_s: float,
        error: BaseException | None,
    ) -> None:
        """Count one delivery's outcome and record its durations."""
        topic = event.topic
        self.count(self.handled, topic, lane, outcome)
        self.observe(self.handler_duration, duration_s, topic, lane)
        if error is not None and not isinstance(error, HandlerSignal):
            self.count(self.failed, topic, lane)
        if outcome == "handled":
            self.observe(self.latency, age_s(event), topic, lane)
        elif outcome == "retried":
            self.count(self.retried, topic, lane)
        else:
            reason = _DEAD_LETTER_REASON.get(outcome, "exhausted")
            self.count(self.dead_lettered, topic, lane, reason)

    def dropped_entry(self, topic: str, lane: str, reason: DropReason) -> None:
        """Count an entry set aside before any handler ran."""
        self.count(self.dropped, topic, lane, reason)
        if reason == "malformed":
            self.count(self.dead_lettered, topic, lane, "malformed")

    def limited(self, topic: str, scope: str) -> None:
        """Count one time a limiter of ``scope`` held work of ``topic`` back."""
        self.count(self.rate_limited, topic, scope)

    def metric_names(self) -> set[str]:
        """Return every sample name the registry exposes now (for checks)."""
        return {
            sample.name
            for family in self.registry.collect()
            for sample in family.samples
        }


def age_s(event: Event) -> float:
    """Return the seconds since ``event.time``; 0 if clocks put it in the future."""
    return max(0.0, time.time() - event.time.timestamp())
