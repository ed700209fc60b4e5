"""The stream-entry codec: canonical bytes out, events or MalformedEntryError back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from titan_bus import Event, MalformedEntryError
from titan_bus.codec import (
    ATTEMPT_FIELD,
    EVENT_FIELD,
    canonical_json,
    data_size,
    decode_entry,
    encode_entry,
    envelope_bytes,
)


def make_event(**fields: Any) -> Event:
    base: dict[str, Any] = {
        "id": "01HZY0000000000000000000AB",
        "source": "tests",
        "type": "titan.system.v1",
        "time": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        "topic": "system.v1",
        "data": {"name": "boot", "details": {"zeta": 1, "alpha": [1, 2]}},
        "headers": {"traceparent": "00-abc-def-01"},
    }
    return Event(**{**base, **fields})


def fields_of(event: Event) -> dict[bytes, bytes]:
    """Return the entry fields as Redis hands them back (bytes to bytes)."""
    fields: dict[bytes, bytes] = {}
    for key, value in encode_entry(event).items():
        assert isinstance(key, bytes) and isinstance(value, bytes)
        fields[key] = value
    return fields


def with_fields(**changes: bytes | None) -> dict[bytes, bytes]:
    """Return a valid entry with some fields replaced (None removes one)."""
    fields = fields_of(make_event())
    for name, value in changes.items():
        if value is None:
            fields.pop(name.encode(), None)
        else:
            fields[name.encode()] = value
    return fields


def test_encode_then_decode_returns_the_same_event() -> None:
    event = make_event(subject="boot/1", priority="high", attempt=2)

    assert decode_entry(fields_of(event)) == event


def test_entry_has_exactly_the_event_and_attempt_fields() -> None:
    assert set(encode_entry(make_event())) == {EVENT_FIELD, ATTEMPT_FIELD}


def test_same_event_gives_the_same_bytes() -> None:
    event = make_event()
    rebuilt = decode_entry(fields_of(event))

    assert envelope_bytes(event) == envelope_bytes(event)
    assert envelope_bytes(rebuilt) == envelope_bytes(event)


def test_canonical_form_ignores_key_insertion_order() -> None:
    one = make_event(data={"name": "x", "details": {"b": 1, "a": 2}})
    two = make_event(data={"details": {"a": 2, "b": 1}, "name": "x"})

    assert envelope_bytes(one) == envelope_bytes(two)


def test_canonical_form_sorts_keys_at_every_level() -> None:
    raw = envelope_bytes(make_event())

    def check_sorted(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in pairs]
        assert names == sorted(names)
        return dict(pairs)

    json.loads(raw, object_pairs_hook=check_sorted)


def test_canonical_form_has_no_insignificant_white_space() -> None:
    raw = envelope_bytes(make_event(source="tests", type="t"))

    assert b" " not in raw
    assert b"\n" not in raw


def test_canonical_form_keeps_non_ascii_as_utf8() -> None:
    raw = envelope_bytes(make_event(data={"name": "café ☕", "details": {}}))

    assert "café ☕".encode() in raw


def test_attempt_lives_in_its_own_field() -> None:
    event = make_event(attempt=4)
    fields = fields_of(event)

    assert fields[ATTEMPT_FIELD] == b"4"
    assert "attempt" not in json.loads(fields[EVENT_FIELD])


def test_envelope_bytes_do_not_change_with_the_attempt() -> None:
    event = make_event()

    assert envelope_bytes(event.with_attempt(7)) == envelope_bytes(event)


def test_decoded_attempt_comes_from_the_attempt_field() -> None:
    assert decode_entry(with_fields(attempt=b"5")).attempt == 5


def test_missing_attempt_field_means_first_attempt() -> None:
    assert decode_entry(with_fields(attempt=None)).attempt == 1


def test_data_size_is_the_canonical_payload_length() -> None:
    event = make_event(data={"name": "é", "details": {}})

    assert data_size(event) == len(b'{"details":{},"name":"\xc3\xa9"}')
    assert canonical_json({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_missing_event_field_is_malformed_naming_the_fields() -> None:
    with pytest.raises(MalformedEntryError, match=r"no 'event' field.*'other'"):
        decode_entry({b"other": b"1"})


def test_event_field_not_json_is_malformed() -> None:
    with pytest.raises(MalformedEntryError, match="Invalid JSON"):
        decode_entry(with_fields(event=b"{not json"))


def test_event_field_not_utf8_is_malformed() -> None:
    raw = envelope_bytes(make_event()).replace(b'"boot"', b'"\xff\xfe"')

    with pytest.raises(MalformedEntryError, match="invalid unicode"):
        decode_entry(with_fields(event=raw))


def test_event_field_that_is_a_json_array_is_malformed() -> None:
    with pytest.raises(MalformedEntryError, match="object"):
        decode_entry(with_fields(event=b"[1, 2]"))


def test_envelope_missing_an_attribute_is_malformed_naming_it() -> None:
    body = json.loads(envelope_bytes(make_event()))
    del body["topic"]

    with pytest.raises(MalformedEntryError, match="at topic"):
        decode_entry(with_fields(event=canonical_json(body)))


@pytest.mark.parametrize("attempt", [b"0", b"-3"])
def test_attempt_below_one_is_malformed(attempt: bytes) -> None:
    with pytest.raises(MalformedEntryError, match="attempt must be at least 1"):
        decode_entry(with_fields(attempt=attempt))


@pytest.mark.parametrize("attempt", [b"x", b"", b"1.5", b"\xff", b"9" * 5000])
def test_attempt_not_an_integer_is_malformed(attempt: bytes) -> None:
    with pytest.raises(MalformedEntryError, match="attempt is not an integer"):
        decode_entry(with_fields(attempt=attempt))


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([EVENT_FIELD, ATTEMPT_FIELD]) | st.binary(max_size=12),
        st.binary(max_size=200),
        max_size=4,
    )
)
def test_arbitrary_fields_decode_or_raise_malformed(fields: dict[bytes, bytes]) -> None:
    try:
        event = decode_entry(fields)
    except MalformedEntryError:
        return

    assert isinstance(event, Event)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
attribute_names = st.sampled_from(
    [
        *("id", "source", "type", "time", "subject", "data", "topic", "priority"),
        *("headers", "specversion", "datacontenttype", "attempt", "extra"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    replaced=st.dictionaries(attribute_names, json_values, max_size=3),
    removed=st.sets(attribute_names, max_size=3),
    attempt=st.none() | st.binary(max_size=6) | st.integers().map(lambda n: b"%d" % n),
)
def test_mutated_envelope_decodes_or_raises_malformed(
    replaced: dict[str, Any], removed: set[str], attempt: bytes | None
) -> None:
    body = json.loads(envelope_bytes(make_event()))
    body.update(replaced)
    for name in removed:
        body.pop(name, None)
    fields = {EVENT_FIELD: canonical_json(body)}
    if attempt is not None:
        fields[ATTEMPT_FIELD] = attempt

    try:
        event = decode_entry(fields)
    except MalformedEntryError:
        return

    assert isinstance(event, Event)


def test_time_that_overflows_in_utc_is_malformed() -> None:
    body = json.loads(envelope_bytes(make_event()))
    body["time"] = "0001-01-01T00:00:00+01:00"

    with pytest.raises(MalformedEntryError, match="time"):
        decode_entry(with_fields(event=canonical_json(body)))
