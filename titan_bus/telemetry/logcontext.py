"""Delivery context on log records: event id, topic, lane and trace id.

While the handlers of one delivery run, :func:`bind_delivery` keeps the event
id, topic and lane in a context variable (asyncio tasks started by a handler
inherit it). :class:`LogContextFilter`, attached to a handler, copies them onto
every record passing through, with the current OpenTelemetry ``trace_id`` and
``span_id`` when a span is active, unless the call already set them with
``extra=``. The CLI's JSON formatter (:mod:`titan_bus.cli.logs`) writes those
attributes as fields, so a log line of a handler can be joined with its trace.

Records logged by the bus itself after the handlers returned (the line saying
a failed event will be retried, for instance) are outside that scope; they name
the topic and event id in their message instead.
"""

from __future__ import annotations

import contextvars
import logging

from opentelemetry import trace

from titan_bus.events import Event

_DELIVERY: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "titan_bus_delivery", default=None
)

Token = contextvars.Token[tuple[str, str, str] | None]


def bind_delivery(event: Event, lane: str) -> Token:
    """Make ``event`` (read from ``lane``) the delivery that log records name.

    Returns:
        The token that :func:`unbind_delivery` takes to restore the previous one.
    """
    return _DELIVERY.set((event.id, event.topic, lane))


def unbind_delivery(token: Token) -> None:
    """Restore the delivery bound before :func:`bind_delivery` gave ``token``."""
    _DELIVERY.reset(token)


class LogContextFilter(logging.Filter):
    """Adds ``event_id``, ``topic``, ``lane``, ``trace_id`` and ``span_id`` to records.

    It never drops a record. Attributes a call set itself are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record`` with the current delivery and span; return True."""
        delivery = _DELIVERY.get()
        if delivery is not None:
            for name, value in zip(
                ("event_id", "topic", "lane"), delivery, strict=True
            ):
                if not hasattr(record, name):
                    setattr(record, name, value)
        span = trace.get_current_span().get_span_context()
        if span.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = trace.format_trace_id(span.trace_id)
            record.span_id = trace.format_span_id(span.span_id)

        return True


def install_log_context(logger: logging.Logger | None = None) -> None:
    """Attach one :class:`LogContextFilter` to every handler of ``logger`` (root).

    Call it after the handlers are configured; calling it again adds no second
    filter.
    """
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, LogContextFilter) for f in handler.filters):
            handler.addFilter(LogContextFilter())
