"""``titan-bus streams`` and ``titan-bus tail``, run as real subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import redis
from cli_helpers import (
    CHAT,
    CLI,
    RUN_TIMEOUT_S,
    CliRun,
    assert_one_error_line,
    clean_env,
    make_cli,
    publish_chat,
)

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


# -- streams ---------------------------------------------------------------


def test_streams_counts_each_groups_waiting_retries_as_delayed(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    normal = keys.lane("chat.v1", "normal")
    sync_redis.xgroup_create(normal, "workers", id="0", mkstream=True)
    sync_redis.zadd(keys.retry_delayed("chat.v1", "workers"), {"a": 1, "b": 2})
    publish_chat(cli, "--delay", "60")

    result = cli("streams", "--json")

    assert result.returncode == 0, result.stderr
    chat = next(t for t in json.loads(result.stdout) if t["topic"] == "chat.v1")
    assert chat["delayed"] == 3


def test_streams_json_reports_lengths_groups_dead_letters_and_delayed(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    for _ in range(3):
        publish_chat(cli)
    publish_chat(cli, "--delay", "60")
    normal = keys.lane("chat.v1", "normal")
    sync_redis.xgroup_create(normal, "workers", id="0")
    sync_redis.xreadgroup("workers", "w1", {normal: ">"}, count=2)
    sync_redis.xadd(keys.dead_letters("chat.v1"), {"reason": "test"})

    result = cli("streams", "--json")

    assert result.returncode == 0, result.stderr
    topics = {t["topic"]: t for t in json.loads(result.stdout)}
    assert set(topics) >= {"chat.v1", "fs.v1", "system.v1", "plugin.v1"}
    chat = topics["chat.v1"]
    assert (chat["dead_letters"], chat["delayed"]) == (1, 1)
    lanes = {lane["lane"]: lane for lane in chat["lanes"]}
    assert lanes["normal"]["length"] == 3
    assert lanes["normal"]["key"] == normal
    [group] = lanes["normal"]["groups"]
    assert group["name"] == "workers"
    assert (group["consumers"], group["pending"], group["lag"]) == (1, 2, 1)
    assert lanes["high"] == {"lane": "high", "key": keys.lane("chat.v1", "high"),
                             "length": 0, "groups": [], "weight": 5}  # fmt: skip
    assert (chat["rate_limit"], chat["strict_priority"]) == (None, False)
    assert topics["fs.v1"]["dead_letters"] == 0


def test_streams_shows_unknown_lag_as_unknown(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    normal = keys.lane("chat.v1", "normal")
    ids = [sync_redis.xadd(normal, {"x": str(i)}) for i in range(3)]
    # A group created at an id in the middle: Redis cannot count its lag.
    sync_redis.xgroup_create(normal, "midway", id=ids[1])

    as_json = cli("streams", "--json")
    as_table = cli("streams")

    chat = next(t for t in json.loads(as_json.stdout) if t["topic"] == "chat.v1")
    normal_lane = next(lane for lane in chat["lanes"] if lane["lane"] == "normal")
    assert normal_lane["groups"][0]["lag"] is None
    row = next(line for line in as_table.stdout.splitlines() if "midway" in line)
    assert row.split()[-1] == "?"


def test_streams_table_lists_every_topic_and_lane(cli: CliRun, key_prefix: str) -> None:
    result = cli("streams")

    assert result.returncode == 0, result.stderr
    assert key_prefix in result.stdout
    for topic in ("chat.v1", "fs.v1", "system.v1", "plugin.v1"):
        assert topic in result.stdout
    assert result.stdout.count("normal") == 4


# -- tail ------------------------------------------------------------------


def test_tail_count_prints_events_already_published(cli: CliRun) -> None:
    first = publish_chat(cli)
    second = publish_chat(cli, "-p", "high")

    as_json = cli("tail", "chat.v1", "--from-start", "--count", "2", "--json")
    as_lines = cli("tail", "chat.v1", "--from-start", "--count", "2")

    assert as_json.returncode == 0, as_json.stderr
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [e["id"] for e in events] == [first, second]
    assert events[1]["priority"] == "high"
    assert events[0]["data"] == CHAT
    lines = as_lines.stdout.splitlines()
    assert first in lines[0] and "normal" in lines[0] and "titan.cli" in lines[0]
    assert second in lines[1] and "high" in lines[1]


def test_tail_follows_only_new_events(
    config_file: Path, tmp_path: Path, cli: CliRun
) -> None:
    old = publish_chat(cli)
    with subprocess.Popen(
        [CLI, "--config", str(config_file), "tail", "chat.v1", "--count", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
    ) as tail:
        assert tail.stderr is not None
        banner = tail.stderr.readline()
        new = publish_chat(cli)
        try:
            out, _ = tail.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            tail.kill()

    assert "following chat.v1" in banner
    assert tail.returncode == 0
    assert new in out
    assert old not in out


def test_tail_lane_option_follows_one_lane(cli: CliRun) -> None:
    publish_chat(cli, "-p", "low")
    high = publish_chat(cli, "-p", "high")

    result = cli("tail", "chat.v1", "--lane", "high", "--from-start", "-n", "1")

    assert result.returncode == 0, result.stderr
    assert [line.split()[2] for line in result.stdout.splitlines()] == [high]


def test_tail_shows_malformed_entries_and_goes_on(
    cli: CliRun, sync_redis: redis.Redis, keys: KeySpace
) -> None:
    sync_redis.xadd(keys.lane("chat.v1", "normal"), {"junk": b"\xff\xfe"})
    good = publish_chat(cli)

    as_lines = cli("tail", "chat.v1", "--from-start", "-n", "2")
    as_json = cli("tail", "chat.v1", "--from-start", "-n", "2", "--json")

    assert as_lines.returncode == 0, as_lines.stderr
    bad_line, good_line = as_lines.stdout.splitlines()
    assert "malformed" in bad_line and "no 'event' field" in bad_line
    assert good in good_line
    bad, event = (json.loads(line) for line in as_json.stdout.splitlines())
    assert bad["malformed"] is True and bad["fields"] == {"junk": "\\xff\\xfe"}
    assert event["id"] == good


def test_tail_unknown_topic_fails(cli: CliRun) -> None:
    result = cli("tail", "nope.v1", "-n", "1")

    assert result.returncode == 2
    assert_one_error_line(result, "unknown topic 'nope.v1'")


def test_tail_exits_quietly_with_0_on_ctrl_c(config_file: Path, tmp_path: Path) -> None:
    with subprocess.Popen(
        [CLI, "--config", str(config_file), "tail", "chat.v1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
    ) as tail:
        assert tail.stderr is not None
        banner = tail.stderr.readline()
        tail.send_signal(signal.SIGINT)
        try:
            out, err = tail.communicate(timeout=RUN_TIMEOUT_S)
        finally:
            tail.kill()

    assert "following chat.v1" in banner
    assert tail.returncode == 0
    assert (out, err) == ("", "")


def test_streams_with_redis_unreachable_fails(cli: CliRun) -> None:
    result = cli("streams", TITAN_REDIS_URL="redis://127.0.0.1:1/0")

    assert result.returncode == 1
    assert_one_error_line(result, "read stream info", "unreachable")
