"""Configuration: built-in defaults, the YAML file, environment overrides, errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from titan_bus import BusConfig, ConfigError, load_config
from titan_bus.config import DEFAULT_REDIS_URL, parse_config
from titan_bus.topics import TopicRegistry


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty directory with no TITAN_* variables set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TITAN_CONFIG", raising=False)
    monkeypatch.delenv("TITAN_REDIS_URL", raising=False)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def topics_of(config: BusConfig) -> TopicRegistry:
    return TopicRegistry.from_config(config)


def test_defaults_when_no_file_exists(clean_env: Path) -> None:
    config = load_config()

    assert config == BusConfig()
    assert config.redis.url == DEFAULT_REDIS_URL
    assert config.max_payload_bytes == 1_048_576
    assert topics_of(config).names() == ["chat.v1", "fs.v1", "system.v1", "plugin.v1"]


def test_config_eventbus_yaml_in_working_directory_is_read(clean_env: Path) -> None:
    write(clean_env / "config" / "eventbus.yaml", "key_prefix: fromcwd\n")

    assert load_config().key_prefix == "fromcwd"


def test_titan_config_names_the_file_to_read(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(clean_env / "config" / "eventbus.yaml", "key_prefix: fromcwd\n")
    other = write(clean_env / "elsewhere.yaml", "key_prefix: fromenv\n")
    monkeypatch.setenv("TITAN_CONFIG", str(other))

    assert load_config().key_prefix == "fromenv"


def test_explicit_path_wins_over_titan_config(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "TITAN_CONFIG", str(write(clean_env / "a.yaml", "key_prefix: a\n"))
    )
    explicit = write(clean_env / "b.yaml", "key_prefix: b\n")

    assert load_config(explicit).key_prefix == "b"


def test_titan_redis_url_overrides_the_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(clean_env / "c.yaml", "redis:\n  url: redis://file:6379/0\n")
    monkeypatch.setenv("TITAN_REDIS_URL", "redis://env:6380/2")

    config = load_config(path)

    assert config.redis.url == "redis://env:6380/2"
    assert config.redis.socket_timeout_s == 5.0


def test_titan_redis_url_applies_without_a_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TITAN_REDIS_URL", "redis://env:6380/2")

    assert load_config().redis.url == "redis://env:6380/2"


def test_invalid_titan_redis_url_is_rejected_naming_the_key(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TITAN_REDIS_URL", "localhost:6379")

    with pytest.raises(ConfigError, match=r"redis\.url: .*must start with redis://"):
        load_config()


def test_empty_file_gives_defaults(clean_env: Path) -> None:
    assert load_config(write(clean_env / "empty.yaml", "")) == BusConfig()


def test_stream_named_like_a_default_topic_overrides_its_settings(
    clean_env: Path,
) -> None:
    path = write(
        clean_env / "s.yaml",
        "defaults:\n  retry_limit: 5\n"
        "streams:\n"
        "  - name: chat.v1\n    maxlen: 500\n    retry_limit: 1\n    rate_limit: 20\n",
    )

    topics = topics_of(load_config(path))
    chat, fs = topics.get("chat.v1"), topics.get("fs.v1")

    assert (chat.maxlen, chat.retry_limit, chat.rate_limit) == (500, 1, 20)
    assert chat.handler_timeout_s == 30.0
    assert (fs.maxlen, fs.retry_limit, fs.rate_limit) == (100_000, 5, None)
    assert topics.names() == ["chat.v1", "fs.v1", "system.v1", "plugin.v1"]


def test_stream_with_a_new_name_adds_a_topic(clean_env: Path) -> None:
    path = write(
        clean_env / "s.yaml",
        "streams:\n"
        "  - name: orders.v1\n    maxlen: 10\n"
        "    schema:\n      type: object\n      required: [order_id]\n",
    )

    orders = topics_of(load_config(path)).get("orders.v1")

    assert orders.maxlen == 10
    assert orders.validate({"order_id": "o1"}) == {"order_id": "o1"}


def test_new_topic_without_schema_is_rejected_naming_it(clean_env: Path) -> None:
    path = write(clean_env / "s.yaml", "streams:\n  - name: orders.v1\n")

    with pytest.raises(ConfigError, match=r"'orders\.v1' needs a 'schema'"):
        load_config(path)


def test_builtin_topic_with_a_schema_is_rejected(clean_env: Path) -> None:
    path = write(clean_env / "s.yaml", "streams:\n  - name: chat.v1\n    schema: {}\n")

    with pytest.raises(ConfigError, match=r"'chat\.v1' is a built-in topic"):
        load_config(path)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"streams": [{"name": "chat.v1", "maxlen": -1}]},
            r"streams\[0\]\.maxlen: .*greater than or equal to 1 \(got -1\)",
        ),
        (
            {"streams": [{"name": "chat.v1", "maxlen": "abc"}]},
            r"streams\[0\]\.maxlen: .*valid integer.*'abc'",
        ),
        ({"bogus": 1}, r"bogus: Extra inputs are not permitted"),
        (
            {"streams": [{"name": "chat.v1", "colour": "red"}]},
            r"streams\[0\]\.colour: Extra inputs are not permitted",
        ),
        (
            {"streams": [{"name": "Chat"}]},
            r"streams\[0\]\.name: String should match pattern.*'Chat'",
        ),
        (
            {"redis": {"url": "localhost:6379"}},
            r"redis\.url: .*must start with redis://.*'localhost:6379'",
        ),
        (
            {"streams": [{"name": "x.v1", "schema": {"type": "nonsense"}}]},
            r"streams\[0\]\.schema: .*not a valid JSON Schema",
        ),
        (
            {"processor": {"concurrency": 0}},
            r"processor\.concurrency: .*greater than or equal to 1",
        ),
        ({"priorities": {}}, r"priorities: .*at least one lane"),
        ({"priorities": {"High": 1}}, r"priorities: .*lane name 'High'"),
        ({"priorities": {"a": 0}}, r"priorities: .*weight above 0"),
        ({"streams": "chat.v1"}, r"streams: Input should be a valid list"),
    ],
    ids=[
        "negative-maxlen",
        "text-maxlen",
        "unknown-key",
        "unknown-stream-key",
        "bad-topic-name",
        "url-without-scheme",
        "bad-json-schema",
        "zero-concurrency",
        "no-lanes",
        "bad-lane-name",
        "all-weights-zero",
        "streams-not-a-list",
    ],
)
def test_invalid_value_raises_config_error_naming_key(
    raw: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_config(raw, origin="my.yaml")


def test_config_error_message_starts_with_the_origin() -> None:
    with pytest.raises(ConfigError, match=r"^my\.yaml: bogus"):
        parse_config({"bogus": 1}, origin="my.yaml")


def test_invalid_file_error_names_the_file_and_key(clean_env: Path) -> None:
    path = write(
        clean_env / "bad.yaml", "streams:\n  - name: chat.v1\n    maxlen: -1\n"
    )

    with pytest.raises(
        ConfigError, match=rf"^{re.escape(str(path))}: streams\[0\]\.maxlen"
    ):
        load_config(path)


def test_duplicate_stream_is_rejected_naming_it() -> None:
    raw = {"streams": [{"name": "chat.v1"}, {"name": "chat.v1", "maxlen": 5}]}

    with pytest.raises(ConfigError, match=r"stream 'chat\.v1' is listed twice"):
        parse_config(raw)


def test_duplicate_stream_error_names_the_streams_key() -> None:
    raw = {"streams": [{"name": "chat.v1"}, {"name": "chat.v1", "maxlen": 5}]}

    with pytest.raises(ConfigError, match=r"streams\[1\]"):
        parse_config(raw)


def test_bad_yaml_is_rejected_naming_the_file(clean_env: Path) -> None:
    path = write(clean_env / "bad.yaml", "streams: [\n  - name: chat.v1\n")

    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid YAML"):
        load_config(path)


def test_top_level_list_is_rejected(clean_env: Path) -> None:
    path = write(clean_env / "list.yaml", "- name: chat.v1\n")

    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


def test_missing_file_is_rejected_naming_it(clean_env: Path) -> None:
    missing = clean_env / "nowhere.yaml"

    with pytest.raises(
        ConfigError, match=f"cannot read config file {re.escape(str(missing))}"
    ):
        load_config(missing)


def test_missing_file_named_by_titan_config_is_rejected(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TITAN_CONFIG", str(clean_env / "gone.yaml"))

    with pytest.raises(ConfigError, match=r"gone\.yaml"):
        load_config()


def test_redis_section_that_is_not_a_mapping_is_rejected_with_env_url(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(clean_env / "r.yaml", "redis: redis://x:1/0\n")
    monkeypatch.setenv("TITAN_REDIS_URL", "redis://env:6380/2")

    with pytest.raises(ConfigError, match="redis: expected a mapping"):
        load_config(path)
