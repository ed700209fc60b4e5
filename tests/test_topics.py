"""Topics and their payload schemas: pydantic models built in, JSON Schema in config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from titan_bus import BusConfig, UnknownTopicError, ValidationError
from titan_bus.config import parse_config
from titan_bus.topics import Topic, TopicRegistry

REGISTRY = TopicRegistry.from_config(BusConfig())

VALID: dict[str, list[dict[str, Any]]] = {
    "chat.v1": [
        {"conversation_id": "c1", "role": "user", "text": "hi"},
        {"conversation_id": "c1", "role": "assistant", "text": ""},
        {"conversation_id": "c1", "role": "system", "text": "be brief"},
    ],
    "fs.v1": [
        {"change": "created", "path": "/tmp/a", "size": 10},
        {"change": "modified", "path": "/tmp/a"},
        {"change": "deleted", "path": "/tmp/a", "size": 0},
        {"change": "moved", "path": "/tmp/b", "src_path": "/tmp/a"},
    ],
    "system.v1": [{"name": "boot", "details": {"pid": 1}}, {"name": "boot"}],
    "plugin.v1": [
        {"plugin": "weather", "name": "forecast", "data": {"rain": True}},
        {"plugin": "weather", "name": "forecast"},
    ],
}
REQUIRED = {
    "chat.v1": ["conversation_id", "role", "text"],
    "fs.v1": ["change", "path"],
    "system.v1": ["name"],
    "plugin.v1": ["plugin", "name"],
}
ENUMS = {"chat.v1": "role", "fs.v1": "change"}


def topic(name: str) -> Topic:
    return REGISTRY.get(name)


def valid_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(name, data) for name, cases in VALID.items() for data in cases]


def test_the_four_builtin_topics_exist_by_default() -> None:
    assert REGISTRY.names() == ["chat.v1", "fs.v1", "system.v1", "plugin.v1"]


@pytest.mark.parametrize(("name", "data"), valid_cases())
def test_builtin_topic_accepts_valid_payload(name: str, data: dict[str, Any]) -> None:
    result = topic(name).validate(data)

    assert {k: v for k, v in data.items() if v is not None} == {
        k: v for k, v in result.items() if k in data
    }


@pytest.mark.parametrize("name", list(VALID))
def test_builtin_topic_rejects_unknown_field_naming_it(name: str) -> None:
    data = {**VALID[name][0], "colour": "red"}

    with pytest.raises(ValidationError, match=rf"^{name}: .*colour"):
        topic(name).validate(data)


@pytest.mark.parametrize(
    ("name", "field"), [(n, f) for n, fields in REQUIRED.items() for f in fields]
)
def test_builtin_topic_rejects_missing_field_naming_it(name: str, field: str) -> None:
    data = dict(VALID[name][0])
    del data[field]

    with pytest.raises(ValidationError, match=rf"^{name}: .*{field}: Field required"):
        topic(name).validate(data)


@pytest.mark.parametrize(("name", "field"), list(ENUMS.items()))
def test_builtin_topic_rejects_wrong_enum_value_naming_field(
    name: str, field: str
) -> None:
    data = {**VALID[name][0], field: "shouted"}

    with pytest.raises(ValidationError, match=rf"^{name}: .*{field}:"):
        topic(name).validate(data)


@pytest.mark.parametrize(
    ("name", "data", "field"),
    [
        ("chat.v1", {"conversation_id": 5, "role": "user", "text": "x"}, "conv"),
        ("fs.v1", {"change": "created", "path": "/a", "size": -1}, "size"),
        ("fs.v1", {"change": "created", "path": ""}, "path"),
        ("system.v1", {"name": "boot", "details": [1]}, "details"),
        ("plugin.v1", {"plugin": "p", "name": "n", "data": "x"}, "data"),
    ],
)
def test_builtin_topic_rejects_wrong_type_naming_field(
    name: str, data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError, match=rf"^{name}: .*{field}"):
        topic(name).validate(data)


def test_fs_moved_requires_src_path() -> None:
    with pytest.raises(ValidationError, match=r"^fs\.v1: .*src_path is required"):
        topic("fs.v1").validate({"change": "moved", "path": "/b"})


@pytest.mark.parametrize("change", ["created", "modified", "deleted"])
def test_fs_src_path_is_forbidden_unless_moved(change: str) -> None:
    data = {"change": change, "path": "/b", "src_path": "/a"}

    with pytest.raises(ValidationError, match=r"^fs\.v1: .*src_path is only allowed"):
        topic("fs.v1").validate(data)


@pytest.mark.parametrize("data", [[1, 2], "text", None, 3])
def test_payload_that_is_not_an_object_is_rejected(data: Any) -> None:
    with pytest.raises(ValidationError, match=r"^chat\.v1: payload must be"):
        topic("chat.v1").validate(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
field_names = st.sampled_from(
    [
        *sorted({f for fs in REQUIRED.values() for f in fs}),
        *("size", "src_path", "data", "details", "x"),
    ]
)
payloads = st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=5)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(list(VALID)), data=payloads)
def test_arbitrary_payload_is_valid_or_validation_error(
    name: str, data: dict[str, Any]
) -> None:
    try:
        result = topic(name).validate(data)
    except ValidationError as exc:
        assert str(exc).startswith(f"{name}: ")
        return

    assert isinstance(result, dict)


def orders_registry() -> TopicRegistry:
    schema = {
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "total": {"type": "number", "minimum": 0},
        },
        "required": ["order_id"],
        "additionalProperties": False,
    }
    config = parse_config({"streams": [{"name": "orders.v1", "schema": schema}]})
    return TopicRegistry.from_config(config)


def test_json_schema_topic_from_config_accepts_valid_payload() -> None:
    orders = orders_registry().get("orders.v1")

    assert orders.validate({"order_id": "o1", "total": 3}) == {
        "order_id": "o1",
        "total": 3,
    }


@pytest.mark.parametrize(
    ("data", "where"),
    [({"total": 1}, "payload"), ({"order_id": "o", "total": -1}, "total")],
)
def test_json_schema_topic_rejects_invalid_payload_naming_field(
    data: dict[str, Any], where: str
) -> None:
    orders = orders_registry().get("orders.v1")

    with pytest.raises(ValidationError, match=rf"^orders\.v1: .* at {where}"):
        orders.validate(data)


def test_json_schema_topic_names_missing_required_field() -> None:
    with pytest.raises(ValidationError, match="order_id"):
        orders_registry().get("orders.v1").validate({"total": 1})


@settings(max_examples=100, deadline=None)
@given(payloads)
def test_json_schema_topic_arbitrary_payload_is_valid_or_error(
    data: dict[str, Any],
) -> None:
    orders = orders_registry().get("orders.v1")
    try:
        orders.validate(data)
    except ValidationError as exc:
        assert str(exc).startswith("orders.v1: ")


def test_added_topic_comes_after_the_builtin_ones() -> None:
    assert orders_registry().names()[-1] == "orders.v1"
    assert "orders.v1" in orders_registry()


def test_unknown_topic_raises_listing_known_topics() -> None:
    with pytest.raises(UnknownTopicError) as caught:
        REGISTRY.get("chat.v9")

    message = str(caught.value)
    assert "'chat.v9'" in message
    for name in VALID:
        assert name in message


def test_unknown_topic_with_a_malformed_name_hints_at_the_format() -> None:
    with pytest.raises(UnknownTopicError, match=r"look like 'chat\.v1'"):
        REGISTRY.get("Chat")


def test_unknown_topic_error_is_a_validation_error() -> None:
    assert issubclass(UnknownTopicError, ValidationError)


def test_lanes_are_ordered_highest_weight_first() -> None:
    assert list(topic("chat.v1").lanes) == ["high", "normal", "low"]


def test_lane_for_known_priority_returns_it() -> None:
    assert topic("chat.v1").lane_for("high") == "high"


def test_lane_for_unknown_priority_raises_naming_the_lanes() -> None:
    with pytest.raises(ValidationError, match=r"'urgent'.*high, normal, low"):
        topic("chat.v1").lane_for("urgent")


def test_stream_priorities_override_the_lanes_of_a_topic() -> None:
    config = parse_config(
        {"streams": [{"name": "fs.v1", "priorities": {"bulk": 1, "now": 9}}]}
    )
    fs = TopicRegistry.from_config(config).get("fs.v1")

    assert list(fs.lanes) == ["now", "bulk"]
    with pytest.raises(ValidationError, match="now, bulk"):
        fs.lane_for("high")
