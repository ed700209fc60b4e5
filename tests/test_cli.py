"""``titan-bus publish`` and ``config check``, run as real subprocesses.

Every command runs against the session's private Redis with the test's own key
prefix (see :mod:`cli_helpers`); expected failures must be one readable line.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
import redis
from cli_helpers import (
    CHAT,
    CliRun,
    assert_one_error_line,
    lane_events,
    make_cli,
)

from titan_bus.cli.logs import JsonFormatter
from titan_bus.keys import KeySpace

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def cli(config_file: Path, tmp_path: Path) -> CliRun:
    """Run ``titan-bus --config <test config> ARGS`` in the test's directory."""
    return make_cli(config_file, tmp_path)


@pytest.fixture
def keys(key_prefix: str) -> KeySpace:
    """The key space of this test's streams."""
    return KeySpace(key_prefix)


# -- publish ---------------------------------------------------------------


def test_publish_prints_the_id_of_the_stored_event(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    result = cli("publish", "chat.v1", json.dumps(CHAT))

    assert result.returncode == 0, result.stderr
    event_id = result.stdout.strip()
    [event] = lane_events(sync_redis, keys, "normal")
    assert event.id == event_id
    assert event.data == CHAT
    assert event.source == "titan.cli"


def test_publish_options_and_json_output(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    result = cli(
        "publish", "chat.v1", json.dumps(CHAT), "--priority", "high",
        "--source", "tests.cli", "--subject", "conv/c1", "--json",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    [event] = lane_events(sync_redis, keys, "high")
    assert printed["id"] == event.id
    assert (event.source, event.subject, event.priority) == (
        "tests.cli",
        "conv/c1",
        "high",
    )


def test_publish_reads_the_payload_from_a_file_and_from_stdin(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace, tmp_path: Path
) -> None:
    payload_file = tmp_path / "payload.json"
    payload_file.write_text(json.dumps({**CHAT, "text": "from file"}), "utf-8")

    from_file = cli("publish", "chat.v1", f"@{payload_file}")
    from_stdin = cli("publish", "chat.v1", "-", stdin=json.dumps(CHAT))

    assert from_file.returncode == 0, from_file.stderr
    assert from_stdin.returncode == 0, from_stdin.stderr
    events = lane_events(sync_redis, keys, "normal")
    assert [e.id for e in events] == [
        from_file.stdout.strip(),
        from_stdin.stdout.strip(),
    ]
    assert events[0].data["text"] == "from file"


def test_publish_with_a_delay_waits_in_the_delayed_set(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    later = cli("publish", "chat.v1", json.dumps(CHAT), "--delay", "60")
    at = cli("publish", "chat.v1", json.dumps(CHAT), "--at", "2099-01-01T00:00:00Z")

    assert later.returncode == 0, later.stderr
    assert at.returncode == 0, at.stderr
    assert sync_redis.zcard(keys.delayed("chat.v1")) == 2
    assert sync_redis.exists(keys.lane("chat.v1", "normal")) == 0


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("2099-13-01T00:00:00Z", "is not an ISO 8601 time"),
        ("2099-01-01T00:00:00", "timezone-aware"),
    ],
)
def test_publish_with_a_bad_time_fails(cli: CliRun, option: str, named: str) -> None:
    result = cli("publish", "chat.v1", json.dumps(CHAT), "--at", option)

    assert result.returncode == 2
    assert_one_error_line(result, named)


def test_publish_with_an_idempotency_key_stores_one_event(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    first = cli("publish", "chat.v1", json.dumps(CHAT), "--idempotency-key", "k1")
    again = cli("publish", "chat.v1", json.dumps(CHAT), "--idempotency-key", "k1")

    assert first.returncode == again.returncode == 0
    assert first.stdout == again.stdout
    assert sync_redis.xlen(keys.lane("chat.v1", "normal")) == 1


def test_publish_bad_payload_names_the_schema_error(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    result = cli("publish", "chat.v1", '{"bad": 1}')

    assert result.returncode == 2
    line = assert_one_error_line(result, "error: chat.v1: invalid payload:")
    assert "conversation_id: Field required" in line
    assert "bad: Extra inputs are not permitted" in line
    assert result.stdout == ""
    assert sync_redis.exists(keys.lane("chat.v1", "normal")) == 0


def test_publish_to_an_unknown_topic_fails(cli: CliRun) -> None:
    result = cli("publish", "nope.v1", "{}")

    assert result.returncode == 2
    assert_one_error_line(result, "unknown topic 'nope.v1'", "chat.v1")


def test_publish_invalid_json_fails(cli: CliRun) -> None:
    result = cli("publish", "chat.v1", '{"conversation_id": ')

    assert result.returncode == 2
    assert_one_error_line(result, "not valid JSON", "line 1")


def test_publish_unknown_priority_fails(cli: CliRun) -> None:
    result = cli("publish", "chat.v1", json.dumps(CHAT), "--priority", "urgent")

    assert result.returncode == 2
    assert_one_error_line(result, "'urgent'", "high, normal, low")


def test_publish_missing_payload_file_fails(cli: CliRun, tmp_path: Path) -> None:
    result = cli("publish", "chat.v1", f"@{tmp_path / 'absent.json'}")

    assert result.returncode == 2
    assert_one_error_line(result, "cannot read payload file", "absent.json")


def test_publish_too_large_payload_fails(
    cli: CliRun, config_file: Path, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    small = config_file.with_name("small.yaml")
    small.write_text(config_file.read_text() + "max_payload_bytes: 64\n", "utf-8")

    result = cli(
        "publish", "chat.v1", json.dumps({**CHAT, "text": "x" * 100}), config=small
    )

    assert result.returncode == 2
    assert_one_error_line(result, "chat.v1", "bytes", "64")
    assert sync_redis.exists(keys.lane("chat.v1", "normal")) == 0


def test_publish_with_redis_unreachable_fails(cli: CliRun) -> None:
    closed_port = "redis://127.0.0.1:1/0"

    result = cli("publish", "chat.v1", json.dumps(CHAT), TITAN_REDIS_URL=closed_port)

    assert result.returncode == 1
    assert_one_error_line(result, "127.0.0.1:1", "unreachable")


def test_invalid_config_file_is_one_error_line(cli: CliRun, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("processor:\n  concurrency: 0\n", "utf-8")

    result = cli("publish", "chat.v1", json.dumps(CHAT), config=bad)

    assert result.returncode == 1
    assert_one_error_line(result, "processor.concurrency")


# -- config check ----------------------------------------------------------


def test_config_check_summarises_a_valid_file(cli: CliRun, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        textwrap.dedent(
            """
            streams:
              - name: chat.v1
                maxlen: 5000
                retry_limit: 7
              - name: orders.v1
                rate_limit: 50
                schema: {type: object, required: [order_id]}
            """
        ),
        "utf-8",
    )

    result = cli("config", "check", str(good))

    assert result.returncode == 0, result.stderr
    assert f"ok: {good}" in result.stdout
    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    rows = {cells[0]: cells for cells in lines}
    assert rows["chat.v1"][4:7] == ["5000", "-", "7"]
    assert rows["orders.v1"][5] == "50"
    assert "fs.v1" in rows


def test_config_check_uses_the_global_config_option(
    cli: CliRun, key_prefix: str
) -> None:
    result = cli("config", "check")

    assert result.returncode == 0, result.stderr
    assert key_prefix in result.stdout


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("streams:\n  - name: chat.v1\n    maxlen: -1\n", "streams[0].maxlen"),
        ("redis:\n  url: http://example\n", "redis.url"),
        ("streams:\n  - name: Bad Name\n", "streams[0].name"),
        ("nonsense_key: 1\n", "nonsense_key"),
        ("streams: [\n", "not valid YAML"),
    ],
)
def test_config_check_names_the_bad_key(
    cli: CliRun, tmp_path: Path, content: str, named: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content, "utf-8")

    result = cli("config", "check", str(bad))

    assert result.returncode == 1
    assert_one_error_line(result, str(bad), named)


def test_config_check_missing_file_fails(cli: CliRun, tmp_path: Path) -> None:
    result = cli("config", "check", str(tmp_path / "absent.yaml"))

    assert result.returncode == 1
    assert_one_error_line(result, "cannot read config file", "absent.yaml")


# -- logs ------------------------------------------------------------------


def test_json_log_lines_carry_context_passed_with_extra() -> None:
    record = logging.LogRecord(
        "titan_bus.test", logging.WARNING, __file__, 1, "handled %s", ("x",), None
    )
    record.topic = "chat.v1"
    record.event_id = "01ABC"

    line = json.loads(JsonFormatter().format(record))

    assert line["level"] == "warning"
    assert line["logger"] == "titan_bus.test"
    assert line["message"] == "handled x"
    assert (line["topic"], line["event_id"]) == ("chat.v1", "01ABC")
    assert line["time"].endswith("Z")
    assert "lane" not in line


def test_version_and_help(cli: CliRun) -> None:
    assert cli("--version").stdout.startswith("titan-bus ")
    assert "publish" in cli("--help").stdout
