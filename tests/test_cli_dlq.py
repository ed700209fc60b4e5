"""``titan-bus dlq``: list, show, replay and purge, as real subprocesses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis
from cli_helpers import CliRun, assert_one_error_line, make_cli

from titan_bus import Event, EventBus, Reject
from titan_bus.codec import decode_entry
from titan_bus.config import load_config
from titan_bus.keys import KeySpace

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def cli(config_file: Path, tmp_path: Path) -> CliRun:
    """Run ``titan-bus --config <test config> ARGS`` in the test's directory."""
    return make_cli(config_file, tmp_path)


async def dead_letter_two(config_file: Path) -> list[str]:
    """Publish two system.v1 events and let a handler reject both."""
    bus = EventBus(load_config(config_file))

    @bus.subscribe("system.v1")
    async def refuse(event: Event) -> None:
        raise Reject(f"no thanks to {event.data['name']}")

    async with bus:
        ids = [
            await bus.publish("system.v1", {"name": n}, headers={"traceparent": tp})
            for n, tp in (("a", TRACEPARENT), ("b", TRACEPARENT))
        ]
        runner = asyncio.create_task(bus.run())
        for _ in range(200):
            if await bus.dead_letters.count("system.v1") == 2:
                break
            await asyncio.sleep(0.02)
        bus.stop()
        await runner

    return ids


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def dead(config_file: Path) -> list[str]:
    """The ids of two events now in system.v1's dead letters."""
    return asyncio.run(dead_letter_two(config_file))


def test_list_json_carries_envelope_and_failure(cli: CliRun, dead: list[str]) -> None:
    result = cli("dlq", "list", "system.v1", "--json")

    assert result.returncode == 0, result.stderr
    letters = json.loads(result.stdout)
    assert [letter["id"] for letter in letters] == dead
    first: dict[str, Any] = letters[0]
    assert first["topic"] == "system.v1"
    assert first["data"] == {"name": "a", "details": {}}
    assert first["error_type"] == "Reject"
    assert first["error_message"] == "no thanks to a"
    assert first["attempts"] == 1
    assert first["consumer"]
    assert first["first_failed_at"] and first["last_failed_at"]


def test_show_prints_one_dead_letter(cli: CliRun, dead: list[str]) -> None:
    result = cli("dlq", "show", "system.v1", dead[1])

    assert result.returncode == 0, result.stderr
    assert dead[1] in result.stdout
    assert "no thanks to b" in result.stdout


def test_show_of_an_unknown_id_is_one_error_line(cli: CliRun, dead: list[str]) -> None:
    result = cli("dlq", "show", "system.v1", "01NOSUCHEVENT0000000000000")

    assert result.returncode == 1
    assert_one_error_line(result, "system.v1", "no dead letter")


def test_replay_keeps_id_and_trace_and_resets_attempts(
    cli: CliRun, dead: list[str], sync_redis: redis.Redis, key_prefix: str
) -> None:
    result = cli("dlq", "replay", "system.v1", "--id", dead[0], "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["replayed"] == [dead[0]]
    # Back to the group that gave up on it, not to every group of the topic.
    lane = KeySpace(key_prefix).retry_lane("system.v1", "titan")
    _, newest = sync_redis.xrevrange(lane, count=1)[0]
    event = decode_entry(newest)
    assert (event.id, event.attempt) == (dead[0], 1)
    assert event.headers["traceparent"] == TRACEPARENT
    remaining = json.loads(cli("dlq", "list", "system.v1", "--json").stdout)
    assert [letter["id"] for letter in remaining] == [dead[1]]


def test_replay_needs_ids_or_all(cli: CliRun, dead: list[str]) -> None:
    result = cli("dlq", "replay", "system.v1")

    assert result.returncode == 2
    assert_one_error_line(result, "--id", "--all")


def test_purge_asks_first_and_keeps_everything_on_no(
    cli: CliRun, dead: list[str]
) -> None:
    refused = cli("dlq", "purge", "system.v1", stdin="n\n")
    listed = json.loads(cli("dlq", "list", "system.v1", "--json").stdout)

    assert refused.returncode != 0
    assert len(listed) == 2


def test_purge_with_yes_deletes_them_all(cli: CliRun, dead: list[str]) -> None:
    result = cli("dlq", "purge", "system.v1", "--yes", "--json")

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"topic": "system.v1", "purged": 2}
    assert json.loads(cli("dlq", "list", "system.v1", "--json").stdout) == []
