"""The topic registry: every topic the bus knows, with its resolved settings.

A topic is ``name.vN``. The built-in ``chat.v1``, ``fs.v1``, ``system.v1`` and
``plugin.v1`` always exist; configuration may override their settings and add
topics that bring a JSON Schema.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from titan_bus.config import BusConfig, StreamConfig
from titan_bus.errors import UnknownTopicError, ValidationError
from titan_bus.schemas import (
    BUILTIN_PAYLOADS,
    TOPIC_NAME,
    PayloadValidator,
    json_schema_validator_for,
    model_validator_for,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topic:
    """One topic with every setting resolved (stream entry over defaults).

    Attributes:
        name: the versioned topic name, e.g. ``"chat.v1"``.
        lanes: lane name to weight, highest priority first.
        maxlen: retention per lane, in entries (``None``: unbounded).
        rate_limit: handled events per second across all processors, or None.
        retry_limit: retries after the first attempt.
        retry_base_s: first retry delay, in seconds.
        retry_max_s: largest retry delay, in seconds.
        handler_timeout_s: a handler running longer has failed, in seconds.
        claim_idle_s: idle time after which another processor may claim, in s.
        max_payload_bytes: largest serialized payload accepted, in bytes.
        rate_burst: tokens the rate limiter may grant at once, in events.
        strict_priority: higher lanes always first (else weighted sharing).
        max_backlog: unacknowledged events above which publishing stops.
        backlog_policy: ``reject`` raises at once, ``block`` waits.
        backlog_timeout_s: how long ``block`` waits, in seconds.
    """

    name: str
    lanes: dict[str, int]
    maxlen: int | None
    rate_limit: float | None
    retry_limit: int
    retry_base_s: float
    retry_max_s: float
    handler_timeout_s: float
    claim_idle_s: float
    max_payload_bytes: int
    validator: PayloadValidator = field(repr=False, compare=False)
    rate_burst: int | None = None
    strict_priority: bool = False
    max_backlog: int | None = None
    backlog_policy: str = "reject"
    backlog_timeout_s: float = 5.0

    def validate(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``data`` checked against this topic's schema.

        Raises:
            ValidationError: the payload does not match; the message names the
                topic and the field.
        """
        if not isinstance(data, Mapping):
            raise ValidationError(
                f"{self.name}: payload must be a JSON object, got {type(data).__name__}"
            )

        return self.validator(self.name, data)

    def lane_for(self, priority: str) -> str:
        """Return ``priority`` if it is one of this topic's lanes.

        Raises:
            ValidationError: the topic has no such lane.
        """
        if priority not in self.lanes:
            raise ValidationError(
                f"{self.name}: unknown priority {priority!r}; "
                f"lanes are {', '.join(self.lanes)}"
            )

        return priority


class TopicRegistry:
    """All topics of one bus, looked up by name."""

    def __init__(self, topics: Mapping[str, Topic]) -> None:
        self._topics = dict(topics)

    @classmethod
    def from_config(cls, config: BusConfig) -> TopicRegistry:
        """Build the registry: built-in topics, then ``streams:`` entries."""
        entries = {stream.name: stream for stream in config.streams}
        names = list(BUILTIN_PAYLOADS) + [
            n for n in entries if n not in BUILTIN_PAYLOADS
        ]

        return cls({name: _resolve(name, entries.get(name), config) for name in names})

    def get(self, name: str) -> Topic:
        """Return the topic called ``name``.

        Raises:
            UnknownTopicError: no such topic; the message lists the known ones.
        """
        topic = self._topics.get(name)
        if topic is None:
            hint = (
                "" if TOPIC_NAME.match(name) else " (topic names look like 'chat.v1')"
            )
            raise UnknownTopicError(
                f"unknown topic {name!r}{hint}; known topics: {', '.join(self._topics)}"
            )

        return topic

    def __contains__(self, name: object) -> bool:
        return name in self._topics

    def __iter__(self) -> Iterator[Topic]:
        return iter(self._topics.values())

    def names(self) -> list[str]:
        """Return the topic names in registration order."""
        return list(self._topics)


def _resolve(name: str, entry: StreamConfig | None, config: BusConfig) -> Topic:
    defaults = config.defaults
    overrides = entry.model_dump(exclude_none=True) if entry is not None else {}

    def pick(key: str) -> Any:
        return overrides.get(key, getattr(defaults, key))

    if name in BUILTIN_PAYLOADS:
        validator = model_validator_for(BUILTIN_PAYLOADS[name])
    else:
        assert entry is not None and entry.schema_ is not None
        validator = json_schema_validator_for(entry.schema_)
    lanes = dict((entry.priorities if entry else None) or config.priorities)
    if pick("claim_idle_s") <= pick("handler_timeout_s"):
        logger.warning(
            "%s: claim_idle_s (%s) is not above handler_timeout_s (%s): an event "
            "whose handler is still running may be claimed and run twice",
            name,
            pick("claim_idle_s"),
            pick("handler_timeout_s"),
        )

    return Topic(
        name=name,
        lanes=dict(sorted(lanes.items(), key=lambda kv: -kv[1])),
        maxlen=pick("maxlen"),
        rate_limit=pick("rate_limit"),
        retry_limit=pick("retry_limit"),
        retry_base_s=pick("retry_base_s"),
        retry_max_s=pick("retry_max_s"),
        handler_timeout_s=pick("handler_timeout_s"),
        claim_idle_s=pick("claim_idle_s"),
        max_payload_bytes=pick("max_payload_bytes") or config.max_payload_bytes,
        validator=validator,
        rate_burst=pick("rate_burst"),
        strict_priority=pick("strict_priority"),
        max_backlog=pick("max_backlog"),
        backlog_policy=pick("backlog_policy"),
        backlog_timeout_s=pick("backlog_timeout_s"),
    )
