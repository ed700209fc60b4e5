"""The observation points of the bus, for metrics and tracing.

Core modules call an :class:`Observer` at each point that matters to an
operator; the base class does nothing, so an uninstrumented bus pays one
method call per point. Telemetry (see :mod:`titan_bus.telemetry`) subclasses
it. Observers must not raise: a failing metric must never fail an event.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

from titan_bus.events import Event

Outcome = Literal["handled", "retried", "dead_lettered", "rejected"]
"""What became of one delivery: acked, scheduled again, or set aside."""

DropReason = Literal["duplicate", "malformed", "vanished"]
"""Why an entry never reached a handler."""


class Observer:
    """Receives what the bus does. Every method is a no-op here."""

    def on_create(self, topic: str, headers: dict[str, str]) -> None:
        """An event of ``topic`` is being built; may add trace headers in place."""

    def on_published(self, events: Sequence[Event], duration_s: float) -> None:
        """``events`` were written in one round trip taking ``duration_s`` seconds."""

    def on_publish_failed(self, events: Sequence[Event], error: BaseException) -> None:
        """``events`` were refused (quota, backlog) or their write failed."""

    @contextlib.contextmanager
    def handle_scope(self, event: Event, lane: str) -> Iterator[None]:
        """Wraps the run of every handler of one delivery (a consumer span)."""
        yield

    def on_outcome(
        self,
        event: Event,
        lane: str,
        outcome: Outcome,
        duration_s: float,
        error: BaseException | None = None,
    ) -> None:
        """A delivery ended as ``outcome`` after its handlers ran ``duration_s`` s."""

    def on_dropped(self, topic: str, lane: str, reason: DropReason) -> None:
        """An entry of ``topic`` was acknowledged without reaching a handler."""

    def on_rate_limited(self, topic: str, scope: str) -> None:
        """A limiter (``scope``: global, topic or a publisher) held work back."""
