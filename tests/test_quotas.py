"""Publisher quotas: a shared publish rate per ``source``, and a payload size.

The rate quota is a token bucket in Redis that reads Redis's clock, so two
publisher processes with the same ``source`` share it even when one of them
runs with a clock 10 s off (``faketime``, from Debian's ``faketime``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from flow_helpers import (
    FlowKeys,
    FlowProcess,
    faketime_command,
    flow_config,
    max_in_window,
    read_json_line,
    start_publisher,
)
from servers import write_config

from titan_bus import EventBus, PayloadTooLargeError, RateLimitError
from titan_bus.codec import decode_entry
from titan_bus.keys import KeySpace

pytestmark = pytest.mark.timeout(60)

SOURCE = "plugin.skewed"
SKEW_S = 10.0
TOLERANCE = 0.10


def need_faketime() -> list[str]:
    """Return the faketime command; fail in CI, skip elsewhere, if missing."""
    command = faketime_command()
    if command is None:
        message = "faketime is not installed (apt-get install faketime)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    return command


def id_ms(entry_id: bytes) -> int:
    """Return the Redis time, in Unix ms, at which a stream entry was added."""
    return int(entry_id.decode().split("-")[0])


@pytest.mark.slow
def test_shared_quota_holds_when_one_publisher_clock_is_ten_seconds_off(
    tmp_path: Path, redis_url: str, key_prefix: str, sync_redis: redis.Redis
) -> None:
    """Two processes publish as ``plugin.skewed`` (20/s, burst 2) for 5 s.

    One runs under faketime, 10 s ahead. Together they store no more than
    20 * 5 + 2 events (+10% for timing), and no one-second span of Redis
    time holds more than 20 + 2 of them.
    """
    skewed = need_faketime()
    rate, burst, duration_s = 20, 2, 5.0
    publishers = [{"name": SOURCE, "rate_limit": rate, "rate_burst": burst}]
    raw = flow_config(redis_url, key_prefix, publishers=publishers)
    config = write_config(tmp_path / "bus.yaml", raw)
    started: list[FlowProcess] = []
    try:
        for tag, prefix in (("true", []), ("skewed", skewed)):
            started.append(
                start_publisher(
                    config,
                    source=SOURCE,
                    duration_s=duration_s,
                    tag=tag,
                    prefix_command=prefix,
                )
            )
        offsets = [read_json_line(p, 30)["clock"] - time.time() for p in started]
        sync_redis.set(FlowKeys(key_prefix).go, 1)
        finals = [read_json_line(p, duration_s + 15) for p in started]
        statuses = [p.wait(10) for p in started]
    finally:
        for process in started:
            process.stop()

    assert statuses == [0, 0]
    assert abs(offsets[0]) < 1.0, f"true clock is {offsets[0]:+.2f} s off"
    assert abs(offsets[1] - SKEW_S) < 1.0, f"skewed clock is {offsets[1]:+.2f} s off"
    published = [int(final["published"]) for final in finals]
    assert min(published) > 0.2 * sum(published), published

    lane = KeySpace(key_prefix).lane("system.v1", "normal")
    entries = sync_redis.xrange(lane)
    assert len(entries) == sum(published)
    assert len(entries) <= (rate * duration_s + burst) * (1 + TOLERANCE)
    assert len(entries) >= 0.8 * rate * duration_s, "publishers did not keep up"
    added_ms = [id_ms(entry_id) for entry_id, _ in entries]
    assert max_in_window(added_ms, 1000) <= rate + burst

    # The skewed process stamped its events with its own clock, 10 s ahead.
    lead_s: dict[str, list[float]] = {"true": [], "skewed": []}
    for entry_id, fields in entries:
        event = decode_entry(fields)
        stamped_ms = event.time.timestamp() * 1000
        lead_s[event.data["details"]["tag"]].append(
            (stamped_ms - id_ms(entry_id)) / 1000
        )
    assert all(abs(lead) < 1.0 for lead in lead_s["true"])
    assert all(abs(lead - SKEW_S) < 1.0 for lead in lead_s["skewed"])


async def test_over_quota_publish_raises_with_retry_after(make_config: Any) -> None:
    """Over its quota, ``publish`` raises at once, names the publisher, and
    writes nothing; after ``retry_after_s`` the publish goes through."""
    publishers = [{"name": "tight", "rate_limit": 2, "rate_burst": 1}]
    async with EventBus(make_config(publishers=publishers)) as bus:
        lane = bus.keys.lane("system.v1", "normal")
        data = {"name": "quota.test"}
        await bus.publish("system.v1", data, source="tight")

        with pytest.raises(RateLimitError) as caught:
            await bus.publish("system.v1", data, source="tight")
        retry_after_s = caught.value.retry_after_s
        assert 0 < retry_after_s <= 0.5
        assert "'tight'" in str(caught.value)
        assert await bus.client.xlen(lane) == 1

        await bus.publish("system.v1", data, source="someone.else")
        await asyncio.sleep(retry_after_s)
        await bus.publish("system.v1", data, source="tight")
        assert await bus.client.xlen(lane) == 3


async def test_batch_larger_than_burst_is_refused_whole(make_config: Any) -> None:
    """A ``publish_many`` of more events than the burst can never pass: it
    raises at once (even with ``on_quota="wait"``) and writes nothing."""
    publishers = [{"name": "batcher", "rate_limit": 10, "rate_burst": 3}]
    async with EventBus(make_config(publishers=publishers), source="batcher") as bus:
        events = [bus.event("system.v1", {"name": f"n{n}"}) for n in range(4)]
        with pytest.raises(RateLimitError) as caught:
            await bus.publish_many(events, on_quota="wait")
        assert caught.value.retry_after_s > 0
        assert await bus.client.xlen(bus.keys.lane("system.v1", "normal")) == 0


async def test_waiting_publisher_is_paced_by_its_quota(make_config: Any) -> None:
    """With ``on_quota="wait"``, 6 publishes at 5/s (burst 1) span >= 1 s."""
    publishers = [{"name": "paced", "rate_limit": 5, "rate_burst": 1}]
    async with EventBus(make_config(publishers=publishers), source="paced") as bus:
        for n in range(6):
            await bus.publish("system.v1", {"name": f"n{n}"}, on_quota="wait")
        entries = await bus.client.xrange(bus.keys.lane("system.v1", "normal"))

    added_ms = [id_ms(entry_id) for entry_id, _ in entries]
    assert len(added_ms) == 6
    # Five refills of 200 ms each; the writes trail their grants by a round
    # trip, so the span may fall a little short of 1000 ms, never by much.
    assert added_ms[-1] - added_ms[0] >= 950, added_ms


async def test_payload_quota_of_a_publisher(make_config: Any) -> None:
    """A publisher's ``max_payload_bytes`` refuses what the topic allows."""
    publishers = [{"name": "small", "max_payload_bytes": 64}]
    async with EventBus(make_config(publishers=publishers)) as bus:
        lane = bus.keys.lane("system.v1", "normal")
        data = {"name": "big", "details": {"text": "x" * 200}}

        with pytest.raises(PayloadTooLargeError) as caught:
            await bus.publish("system.v1", data, source="small")
        message = str(caught.value)
        assert "'small'" in message and "64 bytes" in message
        assert await bus.client.xlen(lane) == 0

        await bus.publish("system.v1", data, source="another")
        await bus.publish("system.v1", {"name": "tiny"}, source="small")
        stored = [decode_entry(f).source for _, f in await bus.client.xrange(lane)]
        assert Counter(stored) == {"another": 1, "small": 1}
