"""Dead letters: the per-topic stream of events the bus set aside, with why.

An entry in ``<prefix>:{<topic>}:dlq`` keeps the original stored envelope byte
for byte (field ``event``; for an entry that was not a valid envelope, its raw
fields as JSON in ``raw``) next to the reason it was set aside.
"""

from __future__ import annotations

import contextlib
import json
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from titan_bus.codec import (
    EVENT_FIELD,
    EntryFields,
    canonical_json,
    decode_entry,
    raw_fields_text,
)
from titan_bus.errors import TitanBusError
from titan_bus.events import Event

TRACEBACK_LINES = 12


@dataclass(frozen=True)
class Failure:
    """Why an event was set aside.

    Attributes:
        error_type: the exception class name, or a short reason code.
        error_message: the human-readable reason.
        traceback: the last lines of the traceback, or empty.
        attempts: delivery attempts made before giving up.
        first_failed_at: when the first attempt failed (UTC).
        last_failed_at: when the last attempt failed (UTC).
        consumer: the consumer that gave up on it.
    """

    error_type: str
    error_message: str
    attempts: int
    consumer: str
    traceback: str = ""
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        attempts: int,
        consumer: str,
        first_failed_at: datetime | None = None,
    ) -> Failure:
        """Describe ``exc`` as a failure, keeping a short traceback."""
        lines = traceback.format_exception(exc)
        now = datetime.now(UTC)

        return cls(
            error_type=type(exc).__name__,
            error_message=safe_text(exc),
            traceback=safe_text("".join(lines[-TRACEBACK_LINES:])),
            attempts=attempts,
            consumer=consumer,
            first_failed_at=first_failed_at or now,
            last_failed_at=now,
        )


# KEYS[1] dead letters; KEYS[2] the stream the entry came from; ARGV[1] group;
# ARGV[2] entry id; ARGV[3..] dead-letter fields. The ack runs only if the
# dead letter was written (a refused XADD, e.g. out of memory, aborts the
# script), so an event is never acked without its dead letter.
MOVE_TO_DEAD_LETTERS_LUA = """
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], '*', unpack(fields))
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
"""

# KEYS[1] dead letters; KEYS[2] the stream to replay into; ARGV[1] dead-letter
# id; ARGV[2..] entry fields. The dead letter is deleted only once the replay
# was written.
REPLAY_LUA = """
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return redis.call('XDEL', KEYS[1], ARGV[1])
"""


def safe_text(value: object) -> str:
    """Return ``str(value)`` as text that encodes to UTF-8, whatever it holds.

    An exception message may hold lone surrogates (an undecodable file name)
    or its ``__str__`` may itself raise; neither may stop an event from
    reaching the dead letters.
    """
    try:
        text = str(value)
    except Exception as exc:
        text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"

    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_fields(
    fields: dict[bytes, bytes],
    failure: Failure,
    *,
    lane: str,
    entry_id: str,
    group: str | None = None,
) -> EntryFields:
    """Return the dead-letter entry for a stream entry and its failure."""
    now = datetime.now(UTC)
    meta: dict[str, Any] = {
        "error_type": failure.error_type,
        "error_message": failure.error_message,
        "traceback": failure.traceback,
        "attempts": failure.attempts,
        "consumer": failure.consumer,
        "first_failed_at": (failure.first_failed_at or now).isoformat(),
        "last_failed_at": (failure.last_failed_at or now).isoformat(),
        "lane": lane,
        "entry_id": entry_id,
        "group": group,
    }
    out: EntryFields = {b"failure": canonical_json(meta)}
    if EVENT_FIELD in fields and _is_json(fields[EVENT_FIELD]):
        out[EVENT_FIELD] = fields[EVENT_FIELD]
    else:
        out[b"raw"] = canonical_json(raw_fields_text(fields))

    return out


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return False

    return True


@dataclass(frozen=True)
class DeadLetter:
    """One entry of a topic's dead letters, as read back.

    Attributes:
        dlq_id: its id in the dead-letter stream.
        topic: the topic.
        event: the original event, or None if the entry was not a valid one.
        raw: the raw fields of an entry that was not a valid event, else None.
        failure: error_type, error_message, traceback, attempts, consumer,
            first_failed_at, last_failed_at, lane, entry_id.
        stored: the envelope exactly as stored, for a byte-exact replay.
    """

    dlq_id: str
    topic: str
    event: Event | None
    raw: dict[str, str] | None
    failure: dict[str, Any]
    stored: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the envelope's attributes next to the failure's, for ``--json``."""
        body: dict[str, Any] = {"dlq_id": self.dlq_id, "topic": self.topic}
        if self.event is not None:
            body.update(self.event.to_cloudevent())
        else:
            body["raw"] = self.raw
        for name in FAILURE_KEYS:
            body[name] = self.failure.get(name)

        return body


FAILURE_KEYS = (
    "error_type",
    "error_message",
    "attempts",
    "first_failed_at",
    "last_failed_at",
    "consumer",
    "lane",
    "entry_id",
    "traceback",
)


def read_dead_letter(topic: str, dlq_id: str, fields: dict[bytes, bytes]) -> DeadLetter:
    """Rebuild a :class:`DeadLetter` from its stream entry; never raises on bad data."""
    failure = _json_object(fields.get(b"failure"))
    event = None
    if EVENT_FIELD in fields:
        with contextlib.suppress(TitanBusError):
            event = decode_entry({EVENT_FIELD: fields[EVENT_FIELD]})
    raw = None
    if event is None:
        raw_json = _json_object(fields.get(b"raw"))
        raw = {str(k): str(v) for k, v in raw_json.items()} or raw_fields_text(fields)

    stored = fields[EVENT_FIELD] if event is not None else None
    attempts = failure.get("attempts")
    if event is not None and isinstance(attempts, int) and attempts >= 1:
        event = event.with_attempt(attempts)

    return DeadLetter(dlq_id, topic, event, raw, failure, stored)


def _json_object(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {"unreadable": raw[:1000].decode("utf-8", "backslashreplace")}

    return value if isinstance(value, dict) else {}
