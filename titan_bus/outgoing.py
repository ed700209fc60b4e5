"""Building and checking outgoing events, and queuing their writes.

Everything that decides what a publish writes lives here, so every publish
path applies the same checks and nothing reaches Redis unless all passed.
A write is one of three kinds: a plain ``XADD`` into the lane; a script that
stores the event only if its idempotency key is new; or a schedule into the
topic's delayed set, released into the lane when due.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from titan_bus.codec import EntryFields, canonical_json, encode_entry
from titan_bus.dedup import PUBLISH_ONCE_LUA, publish_once_args
from titan_bus.delayed import SCHEDULE_LUA, delayed_member
from titan_bus.errors import PayloadTooLargeError, ValidationError
from titan_bus.events import DEFAULT_PRIORITY, Event
from titan_bus.keys import KeySpace
from titan_bus.observe import Observer
from titan_bus.topics import TopicRegistry

MAX_DELAY_S = 366 * 24 * 3600.0
"""Longest delay a publish may ask for, in seconds (a year)."""

Outgoing = Event | tuple[str, Mapping[str, Any]]
"""An event from :meth:`EventFactory.event`, or a ``(topic, data)`` pair."""


@dataclass(frozen=True)
class StreamWrite:
    """One event to write, and how.

    Lanes are not trimmed here: trimming at write time could drop entries no
    group has acknowledged yet (see :mod:`titan_bus.retention`).

    Attributes:
        key: the lane stream key.
        fields: the entry fields.
        event: the event.
        once_key: the idempotency key's Redis key, or None.
        delayed_key: the topic's delayed set, for a delayed event, or None.
        delay_ms: delay from Redis's now, in ms (delayed events).
        due_ms: absolute due time, Unix ms; wins over ``delay_ms`` if set.
    """

    key: str
    fields: EntryFields
    event: Event
    once_key: str | None = None
    delayed_key: str | None = None
    delay_ms: int = 0
    due_ms: int | None = None

    def queue(self, pipe: Any, *, window_s: float) -> None:
        """Queue this write on a (sync or async) pipeline."""
        if self.delayed_key is not None:
            member = delayed_member(self.event.priority, self.fields)
            due = "" if self.due_ms is None else self.due_ms
            pipe.eval(
                SCHEDULE_LUA, 1, self.delayed_key, self.delay_ms, member, "", "", due
            )
        elif self.once_key is not None:
            args = publish_once_args(window_s, self.event.id, self.fields)
            pipe.eval(PUBLISH_ONCE_LUA, 2, self.once_key, self.key, *args)
        else:
            pipe.xadd(self.key, self.fields)

    def stored_id(self, reply: Any) -> str:
        """Return the id of the event Redis holds after this write's ``reply``."""
        if self.once_key is None:
            return self.event.id

        return reply.decode() if isinstance(reply, bytes) else str(reply)


class EventFactory:
    """Turns a topic and payload into a validated event and its stream write.

    Args:
        registry: the bus's topics.
        keys: the key space.
        source: the publisher identity stamped on events that name none.
        observer: may add trace headers to each new event.
        payload_caps: publisher identity to its own payload-size quota, bytes.
    """

    def __init__(
        self,
        registry: TopicRegistry,
        keys: KeySpace,
        source: str,
        observer: Observer | None = None,
        payload_caps: Mapping[str, int] | None = None,
    ) -> None:
        self.registry = registry
        self.keys = keys
        self.source = source
        self.observer = observer or Observer()
        self._payload_caps = dict(payload_caps or {})

    def event(
        self,
        topic: str,
        data: Mapping[str, Any],
        *,
        priority: str = DEFAULT_PRIORITY,
        source: str | None = None,
        subject: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Event:
        """Return a new, fully validated event.

        Raises:
            UnknownTopicError: ``topic`` is not registered.
            ValidationError: the payload, priority or a header is invalid.
        """
        spec = self.registry.get(topic)
        payload = spec.validate(data)
        all_headers = dict(headers or {})
        if correlation_id is not None:
            all_headers["correlationid"] = correlation_id
        if causation_id is not None:
            all_headers["causationid"] = causation_id
        self.observer.on_create(topic, all_headers)
        try:
            return Event(
                source=source or self.source,
                type=type or f"titan.{topic}",
                subject=subject,
                data=payload,
                topic=topic,
                priority=spec.lane_for(priority),
                headers=all_headers,
            )
        except ValueError as exc:
            raise ValidationError(f"{topic}: invalid event: {exc}") from exc

    def write_for(
        self,
        item: Outgoing,
        *,
        idempotency_key: str | None = None,
        delay_s: float | None = None,
        at: datetime | None = None,
    ) -> StreamWrite:
        """Return the write that stores ``item``, checking its size.

        Args:
            item: the event, or ``(topic, data)``.
            idempotency_key: store the event only if this key is new.
            delay_s: hold the event this many seconds before it is handled.
            at: hold the event until this time (timezone-aware).

        Raises:
            UnknownTopicError, ValidationError: as for :meth:`event`.
            PayloadTooLargeError: the payload is over the topic's or the
                publisher's ``max_payload_bytes``.
        """
        event = self.event(*item) if isinstance(item, tuple) else self._recheck(item)
        if idempotency_key == "":
            raise ValidationError(f"{event.topic}: idempotency_key must not be empty")
        try:
            self._check_size(event)
            fields = encode_entry(event)
        except ValueError as exc:
            raise ValidationError(
                f"{event.topic}: payload cannot be stored as JSON: {exc}"
            ) from exc
        delayed = _delay(event.topic, delay_s, at)
        if delayed is not None and idempotency_key is not None:
            raise ValidationError(
                f"{event.topic}: a delayed publish cannot take an idempotency key"
            )
        once = idempotency_key and self.keys.publish_key(event.topic, idempotency_key)

        return StreamWrite(
            key=self.keys.lane(event.topic, event.priority),
            fields=fields,
            event=event,
            once_key=once or None,
            delayed_key=None if delayed is None else self.keys.delayed(event.topic),
            delay_ms=0 if delayed is None else delayed[0],
            due_ms=None if delayed is None else delayed[1],
        )

    def _check_size(self, event: Event) -> None:
        size = len(canonical_json(event.data))
        limit = self.registry.get(event.topic).max_payload_bytes
        source_cap = self._payload_caps.get(event.source)
        whose = "topic"
        if source_cap is not None and source_cap < limit:
            limit, whose = source_cap, f"publisher {event.source!r}"
        if size > limit:
            raise PayloadTooLargeError(
                f"{event.topic}: payload is {size} bytes, over the {whose} limit "
                f"of {limit} bytes (max_payload_bytes)"
            )

    def _recheck(self, event: Event) -> Event:
        spec = self.registry.get(event.topic)
        spec.validate(event.data)
        spec.lane_for(event.priority)

        return event


def _delay(
    topic: str, delay_s: float | None, at: datetime | None
) -> tuple[int, int | None] | None:
    """Return ``(delay_ms, due_ms)`` for a delayed publish, or None."""
    if delay_s is not None and at is not None:
        raise ValidationError(f"{topic}: give delay_s or at, not both")
    if delay_s is not None:
        if not math.isfinite(delay_s) or not 0 <= delay_s <= MAX_DELAY_S:
            raise ValidationError(
                f"{topic}: delay_s must be 0 to {MAX_DELAY_S:g} seconds, got {delay_s}"
            )
        # Rounded up to whole ms, never down: 1.001 * 1000 is 1000.999... in
        # floating point, and truncating it would release the event 1 ms early.
        return math.ceil(round(delay_s * 1000, 3)), None
    if at is not None:
        if at.tzinfo is None:
            raise ValidationError(f"{topic}: 'at' must be timezone-aware, got {at}")
        return 0, int(at.timestamp() * 1000)

    return None
