"""The one place where an event becomes bytes in a stream entry, and back.

A stream entry has two fields:

``event``
    The canonical JSON of the envelope without ``attempt``: keys sorted, no
    insignificant white space, UTF-8. Canonical so that a signature computed
    over it by the publisher can be checked byte for byte by any reader.
``attempt``
    The delivery attempt as a decimal string. It lives outside the envelope
    because retries rewrite it, and the component doing that (a processor) must
    not need the publisher's signing key.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from redis.typing import EncodableT, FieldT

from titan_bus.errors import MalformedEntryError
from titan_bus.events import Event

EVENT_FIELD = b"event"
ATTEMPT_FIELD = b"attempt"

EntryFields = dict[FieldT, EncodableT]
"""Fields of a stream entry as written (redis-py's accepted key and value types)."""

_dumps = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def canonical_json(value: Any) -> bytes:
    """Return ``value`` as canonical JSON bytes (sorted keys, compact, UTF-8).

    Raises:
        ValueError: NaN or infinity, a lone surrogate, nesting too deep for
            the encoder, or a value JSON cannot hold.
    """
    try:
        return _dumps(value).encode("utf-8")
    except (UnicodeEncodeError, RecursionError, TypeError) as exc:
        raise ValueError(str(exc)) from exc


def envelope_bytes(event: Event) -> bytes:
    """Return the canonical stored form of ``event`` (everything but ``attempt``)."""
    return canonical_json(event.model_dump(mode="json", exclude={"attempt"}))


def data_size(event: Event) -> int:
    """Return the size, in bytes, of the event's serialized payload."""
    return len(canonical_json(event.data))


def encode_entry(event: Event) -> EntryFields:
    """Return the stream entry fields that store ``event``."""
    return {
        EVENT_FIELD: envelope_bytes(event),
        ATTEMPT_FIELD: str(event.attempt).encode(),
    }


def decode_entry(fields: dict[bytes, bytes]) -> Event:
    """Rebuild the event stored in a stream entry.

    Raises:
        MalformedEntryError: the entry lacks a field, is not UTF-8 JSON, or does
            not describe a valid envelope; the message says which.
    """
    raw = fields.get(EVENT_FIELD)
    if raw is None:
        names = sorted(k.decode("utf-8", "replace") for k in fields)
        raise MalformedEntryError(f"entry has no 'event' field (fields: {names})")

    attempt = _decode_attempt(fields.get(ATTEMPT_FIELD, b"1"))
    try:
        event = Event.model_validate_json(raw)
    except PydanticValidationError as exc:
        raise MalformedEntryError(_describe(exc)) from exc
    except (ValueError, OverflowError) as exc:
        raise MalformedEntryError(f"invalid envelope: {exc}") from exc

    return event if attempt == event.attempt else event.with_attempt(attempt)


def _decode_attempt(raw: bytes) -> int:
    try:
        attempt = int(raw)
    except ValueError as exc:
        raise MalformedEntryError(f"attempt is not an integer: {raw!r}") from exc
    if attempt < 1:
        raise MalformedEntryError(f"attempt must be at least 1, got {attempt}")

    return attempt


def _describe(exc: PydanticValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "envelope"

    return f"invalid envelope at {where}: {first['msg']} ({exc.error_count()} errors)"


def raw_fields_text(fields: dict[bytes, bytes]) -> dict[str, str]:
    """Return entry fields as text, undecodable bytes shown as escapes."""
    return {
        key.decode("utf-8", "backslashreplace"): value.decode(
            "utf-8", "backslashreplace"
        )
        for key, value in fields.items()
    }
