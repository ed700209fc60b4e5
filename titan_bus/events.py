"""The event envelope and its CloudEvents 1.0 form.

An :class:`Event` carries the CloudEvents attributes (``id``, ``source``,
``type``, ``time``, ``subject``, ``datacontenttype``, ``data``) plus the bus's
own: ``topic``, ``priority`` (the lane), ``attempt`` and ``headers``. Header
names follow the CloudEvents extension naming rule (lowercase letters and
digits, at most 20), so ``traceparent``, ``tracestate``, ``correlationid`` and
``causationid`` travel as ordinary CloudEvents extensions on export.

The stored form of an envelope is produced in exactly one place,
:mod:`titan_bus.codec`, so that a signature can later cover it byte for byte.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from titan_bus.errors import ValidationError
from titan_bus.ids import new_event_id

HEADER_NAME = re.compile(r"^[a-z0-9]{1,20}$")
DEFAULT_PRIORITY = "normal"

_CORE_ATTRIBUTES = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
        "topic",
        "priority",
        "attempt",
    }
)


class Event(BaseModel):
    """One event: a CloudEvents envelope around a topic-validated payload.

    Attributes:
        id: unique, time-sortable id (see :mod:`titan_bus.ids`).
        source: the publisher's identity, e.g. ``"titan.chat"`` or a plugin name.
        type: the CloudEvents type; ``"titan.<topic>"`` unless the publisher sets it.
        time: when the event was created, timezone-aware UTC.
        subject: optional subject within the source (a path, a conversation id).
        data: the payload, already validated against the topic's schema.
        topic: the versioned topic, e.g. ``"chat.v1"``.
        priority: the lane the event travels in, e.g. ``"high"``.
        attempt: delivery attempt, 1 on the first delivery.
        headers: trace context and correlation ids, CloudEvents extension names.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=new_event_id, min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=256)
    type: str = Field(min_length=1, max_length=256)
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str | None = Field(default=None, max_length=1024)
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]
    topic: str = Field(min_length=1, max_length=200)
    priority: str = Field(default=DEFAULT_PRIORITY, min_length=1, max_length=32)
    attempt: int = Field(default=1, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("time")
    @classmethod
    def _time_is_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("time must be timezone-aware")
        try:
            return value.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError(f"time {value.isoformat()} is out of range") from exc

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not HEADER_NAME.match(name) or name in _CORE_ATTRIBUTES:
                raise ValueError(
                    f"header name {name!r} must be 1-20 lowercase letters or digits "
                    "and not an envelope attribute"
                )

        return value

    @property
    def correlation_id(self) -> str | None:
        """The id that ties this event to a conversation or workflow, if any."""
        return self.headers.get("correlationid")

    @property
    def causation_id(self) -> str | None:
        """The id of the event that caused this one, if any."""
        return self.headers.get("causationid")

    def with_attempt(self, attempt: int) -> Event:
        """Return a copy of this event with ``attempt`` replaced."""
        return self.model_copy(update={"attempt": attempt})

    def to_cloudevent(self) -> dict[str, Any]:
        """Return the event as a CloudEvents 1.0 JSON object (structured mode).

        Headers become top-level extension attributes.
        """
        body = self.model_dump(mode="json", exclude={"headers"}, exclude_none=True)
        body.update(self.headers)

        return body

    def to_cloudevent_json(self) -> str:
        """Return the event as a CloudEvents 1.0 JSON document."""
        return json.dumps(self.to_cloudevent(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_cloudevent(cls, document: str | bytes | dict[str, Any]) -> Event:
        """Build an event from a CloudEvents 1.0 JSON document or object.

        Unknown extension attributes become headers. ``topic`` must be present;
        ``priority`` and ``attempt`` default to ``normal`` and 1.

        Raises:
            ValidationError: the document is not valid JSON or not a valid event.
        """
        body = _load_document(document)
        headers = {k: v for k, v in body.items() if k not in _CORE_ATTRIBUTES}
        core = {k: v for k, v in body.items() if k in _CORE_ATTRIBUTES}
        bad = [k for k, v in headers.items() if not isinstance(v, str)]
        if bad:
            raise ValidationError(f"CloudEvents extensions must be strings: {bad}")

        try:
            return cls.model_validate({**core, "headers": headers})
        except ValueError as exc:
            raise ValidationError(f"not a valid event: {exc}") from exc


def _load_document(document: str | bytes | dict[str, Any]) -> dict[str, Any]:
    if isinstance(document, dict):
        return dict(document)

    try:
        body = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"CloudEvents document is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ValidationError("CloudEvents document must be a JSON object")

    return body
