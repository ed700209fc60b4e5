"""The event envelope and its CloudEvents 1.0 JSON form."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from titan_bus import Event, ValidationError

ENVELOPE_ATTRIBUTES = {
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


def make_event(**fields: Any) -> Event:
    base: dict[str, Any] = {
        "source": "tests",
        "type": "titan.chat.v1",
        "topic": "chat.v1",
        "data": {"conversation_id": "c1", "role": "user", "text": "hi"},
    }
    return Event(**{**base, **fields})


def cloudevent(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": "01HZY0000000000000000000AB",
        "source": "tests",
        "type": "titan.chat.v1",
        "time": "2024-05-01T12:00:00Z",
        "topic": "chat.v1",
        "data": {"text": "hi"},
    }
    body.update(fields)
    return body


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
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
header_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda name: name not in ENVELOPE_ATTRIBUTES
)
offsets = st.integers(min_value=-23 * 60, max_value=23 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_times = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=offsets
)
events = st.builds(
    Event,
    source=st.text(min_size=1, max_size=40),
    type=st.text(min_size=1, max_size=40),
    time=aware_times,
    subject=st.none() | st.text(max_size=40),
    data=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    topic=st.sampled_from(["chat.v1", "fs.v1", "orders.v2"]),
    priority=st.sampled_from(["high", "normal", "low"]),
    attempt=st.integers(min_value=1, max_value=1000),
    headers=st.dictionaries(header_names, st.text(max_size=30), max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(events)
def test_cloudevent_object_round_trips(event: Event) -> None:
    assert Event.from_cloudevent(event.to_cloudevent()) == event


@settings(max_examples=150, deadline=None)
@given(events)
def test_cloudevent_json_round_trips(event: Event) -> None:
    document = event.to_cloudevent_json()

    assert Event.from_cloudevent(document) == event
    assert Event.from_cloudevent(document.encode("utf-8")) == event


def test_cloudevent_has_headers_as_top_level_extensions() -> None:
    event = make_event(headers={"traceparent": "00-abc-def-01", "correlationid": "k"})

    body = event.to_cloudevent()

    assert body["specversion"] == "1.0"
    assert body["traceparent"] == "00-abc-def-01"
    assert body["correlationid"] == "k"
    assert "headers" not in body


def test_event_time_is_normalised_to_utc() -> None:
    local = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))

    event = make_event(time=local)

    assert event.time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert event.time.utcoffset() == timedelta(0)


def test_event_defaults_to_attempt_one_and_a_fresh_id() -> None:
    first, second = make_event(), make_event()

    assert first.attempt == 1
    assert first.priority == "normal"
    assert first.id != second.id


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_event(time=datetime(2024, 5, 1, 12, 0))


def test_cloudevent_with_naive_time_is_rejected() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        Event.from_cloudevent(cloudevent(time="2024-05-01T12:00:00"))


@pytest.mark.parametrize(
    "name", ["Trace", "trace-parent", "a" * 21, "", "topic", "data", "trace_id"]
)
def test_bad_header_name_is_rejected_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match=f"header name '{name}'"):
        make_event(headers={name: "x"})


def test_bad_extension_name_in_cloudevent_is_rejected_naming_it() -> None:
    with pytest.raises(ValidationError, match="'TraceParent'"):
        Event.from_cloudevent(cloudevent(TraceParent="00-abc"))


def test_unknown_cloudevent_extensions_become_headers() -> None:
    event = Event.from_cloudevent(
        cloudevent(traceparent="00-abc-def-01", correlationid="order-7")
    )

    assert event.headers == {"traceparent": "00-abc-def-01", "correlationid": "order-7"}
    assert event.correlation_id == "order-7"
    assert event.causation_id is None


def test_non_string_extension_is_rejected_naming_it() -> None:
    with pytest.raises(ValidationError, match=r"must be strings.*'retries'"):
        Event.from_cloudevent(cloudevent(retries=3))


def test_cloudevent_without_priority_or_attempt_gets_defaults() -> None:
    event = Event.from_cloudevent(cloudevent())

    assert event.priority == "normal"
    assert event.attempt == 1


def test_cloudevent_without_topic_is_rejected_naming_it() -> None:
    body = cloudevent()
    del body["topic"]

    with pytest.raises(ValidationError, match="topic"):
        Event.from_cloudevent(body)


@pytest.mark.parametrize(
    "document",
    ["not json", "{", b"\xff\xfe", ""],
    ids=["text", "cut", "bytes", "empty"],
)
def test_non_json_document_raises_validation_error(document: str | bytes) -> None:
    with pytest.raises(ValidationError, match="not JSON"):
        Event.from_cloudevent(document)


@pytest.mark.parametrize("document", ["[1, 2]", '"event"', "42", "null"])
def test_non_object_document_raises_validation_error(document: str) -> None:
    with pytest.raises(ValidationError, match="must be a JSON object"):
        Event.from_cloudevent(document)


def test_wrong_specversion_is_rejected() -> None:
    with pytest.raises(ValidationError, match="specversion"):
        Event.from_cloudevent(cloudevent(specversion="0.3"))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_arbitrary_object_is_an_event_or_validation_error(body: dict[str, Any]) -> None:
    try:
        event = Event.from_cloudevent(json.dumps(body))
    except ValidationError:
        return

    assert isinstance(event, Event)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "time": st.text(max_size=30)
            | st.datetimes(timezones=offsets).map(datetime.isoformat),
            "attempt": json_values,
            "data": json_values,
            "priority": json_values,
            "subject": json_values,
        },
    )
)
def test_mutated_cloudevent_is_an_event_or_validation_error(
    changes: dict[str, Any],
) -> None:
    with contextlib.suppress(ValidationError):
        Event.from_cloudevent(json.dumps(cloudevent(**changes)))


def test_time_that_overflows_in_utc_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match="time"):
        Event.from_cloudevent(cloudevent(time="0001-01-01T00:00:00+01:00"))
