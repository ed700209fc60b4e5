"""Recovery: own pending re-read, vanished entries, lost groups and streams.

Entries deleted or trimmed while pending must never reach a handler as
empty events; they are cleared from the group and counted. A Redis that
comes back empty, or a lane stream deleted under a running processor, must
not leave a dead reader: the processor warns, recreates its groups and
handles what is published next. Servers that get killed or flushed are
private to the test (see ``servers.py``), never the session's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from helpers import chat, running, wait_until
from servers import RedisServer

from titan_bus import Event, EventBus, SyncPublisher
from titan_bus.config import BusConfig
from titan_bus.errors import BusConnectionError

TOPIC = "chat.v1"
GROUP = "titan"


async def pending_total(bus: EventBus, topic: str = TOPIC) -> int:
    total = 0
    for lane in bus.topics.get(topic).lanes:
        key = bus.keys.lane(topic, lane)
        total += int((await bus.client.xpending(key, GROUP))["pending"])

    return total


async def nothing_pending(bus: EventBus) -> bool:
    return await pending_total(bus) == 0


class Recorder:
    """Subscribes a handler that records events, and can hold them in flight."""

    def __init__(self, bus: EventBus) -> None:
        self.events: list[Event] = []
        self.gate = asyncio.Event()
        self.gate.set()

        @bus.subscribe(TOPIC)
        async def on_chat(event: Event) -> None:
            self.events.append(event)
            await self.gate.wait()

    @property
    def texts(self) -> list[str]:
        return [e.data["text"] for e in self.events]


async def test_own_pending_entries_are_re_read_at_start_without_a_claim(
    make_config: Any,
) -> None:
    """Cut-short handlers leave entries pending; a restart re-reads them at once."""
    config = make_config(
        defaults={"claim_idle_s": 600}, processor={"shutdown_grace_s": 0.1}
    )
    async with EventBus(config) as bus:
        recorder = Recorder(bus)
        recorder.gate.clear()
        async with running(bus, consumer="same"):
            for n in range(5):
                await bus.publish(TOPIC, chat(str(n)))
            await wait_until(lambda: len(recorder.events) == 5, what="5 in flight")
        assert await pending_total(bus) == 5

        recorder.gate.set()
        async with running(bus, consumer="same"):
            await wait_until(lambda: len(recorder.events) == 10, what="5 re-read")
            await wait_until(lambda: nothing_pending(bus), what="re-read acked")

    assert sorted(recorder.texts[5:]) == [str(n) for n in range(5)]
    assert {e.attempt for e in recorder.events[5:]} == {1}


async def test_entries_deleted_or_trimmed_while_pending_never_reach_a_handler(
    make_config: Any,
) -> None:
    """XDEL 3 of 6 pending entries and XTRIM a lane of 4; 7 vanish, 3 run."""
    config = make_config(
        defaults={"claim_idle_s": 600},
        processor={"shutdown_grace_s": 0.1, "concurrency": 20},
    )
    async with EventBus(config) as bus:
        recorder = Recorder(bus)
        recorder.gate.clear()
        async with running(bus, consumer="slow"):
            for n in range(6):
                await bus.publish(TOPIC, chat(f"normal {n}"))
            for n in range(4):
                await bus.publish(TOPIC, chat(f"low {n}"), priority="low")
            await wait_until(lambda: len(recorder.events) == 10, what="10 in flight")

        normal = bus.keys.lane(TOPIC, "normal")
        doomed = [entry_id for entry_id, _ in await bus.client.xrange(normal)][:3]
        assert await bus.client.xdel(normal, *doomed) == 3
        await bus.client.xtrim(bus.keys.lane(TOPIC, "low"), maxlen=0)
        assert await pending_total(bus) == 10

        recorder.gate.set()
        async with running(bus, consumer="slow") as processor:
            await wait_until(lambda: nothing_pending(bus), what="pending cleared")
            await wait_until(lambda: len(recorder.events) == 13, what="3 handled")
            assert processor.vanished == 7

    assert sorted(recorder.texts[10:]) == [f"normal {n}" for n in range(3, 6)]
    assert all(e.data == chat(e.data["text"]) for e in recorder.events)


async def test_claimed_entries_that_vanished_are_cleared_and_counted(
    make_config: Any, sync_redis: redis.Redis
) -> None:
    """A consumer that died holding 10 entries, 5 of them since deleted."""
    config = make_config(defaults={"claim_idle_s": 0.3})
    async with EventBus(config) as bus:
        recorder = Recorder(bus)
        lane = bus.keys.lane(TOPIC, "normal")
        await bus.client.xgroup_create(lane, GROUP, id="0", mkstream=True)
        for n in range(10):
            await bus.publish(TOPIC, chat(str(n)))
        read = sync_redis.xreadgroup(GROUP, "dead", {lane: ">"}, count=10)
        ids = [entry_id for entry_id, _ in read[0][1]]
        assert sync_redis.xdel(lane, *ids[::2]) == 5

        async with running(bus, consumer="live") as processor:
            await wait_until(lambda: nothing_pending(bus), what="claims done")
            await wait_until(lambda: len(recorder.events) == 5, what="5 handled")
            assert processor.vanished == 5

    assert sorted(recorder.texts) == [str(n) for n in range(1, 10, 2)]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which it may kill or flush."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


def private_config(make_config: Any, server: RedisServer) -> BusConfig:
    config: BusConfig = make_config(
        redis={"url": server.url, "socket_timeout_s": 2, "connect_timeout_s": 1},
        defaults={"claim_idle_s": 1},
    )
    return config


async def publish_when_up(config: BusConfig, text: str) -> str:
    """Publish once Redis takes writes again (bounded retries)."""
    for _ in range(100):
        try:
            with SyncPublisher(config) as publisher:
                return publisher.publish(TOPIC, chat(text))
        except BusConnectionError:
            await asyncio.sleep(0.05)

    raise AssertionError("Redis did not take the write within 5 s")


def warnings_from(caplog: pytest.LogCaptureFixture, module: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == module and r.levelno == logging.WARNING
    ]


async def test_redis_restarted_empty_under_a_running_processor(
    make_config: Any, private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = private_config(make_config, private_redis)
    async with EventBus(config) as bus:
        recorder = Recorder(bus)
        async with running(bus):
            await publish_when_up(config, "before")
            await wait_until(lambda: recorder.texts == ["before"], what="first")

            private_redis.kill()
            private_redis.start()
            assert private_redis.client().dbsize() == 0

            await publish_when_up(config, "after")
            await wait_until(
                lambda: recorder.texts == ["before", "after"],
                timeout_s=15,
                what="an event published after the restart",
            )
            await wait_until(lambda: nothing_pending(bus), what="acked")

    assert warnings_from(caplog, "titan_bus.processor")
    groups = private_redis.client().xinfo_groups(bus.keys.lane(TOPIC, "normal"))
    assert [g["name"] for g in groups] == [GROUP.encode()]


async def test_redis_flushed_under_a_running_processor(
    make_config: Any, private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Same data loss, but the connection stays up: NOGROUP, not a disconnect."""
    config = private_config(make_config, private_redis)
    async with EventBus(config) as bus:
        recorder = Recorder(bus)
        async with running(bus):
            await publish_when_up(config, "before")
            await wait_until(lambda: recorder.texts == ["before"], what="first")

            private_redis.client().flushall()
            await publish_when_up(config, "after")
            await wait_until(
                lambda: recorder.texts == ["before", "after"],
                timeout_s=10,
                what="an event published after the flush",
            )

    assert any("recreating" in m for m in warnings_from(caplog, "titan_bus.processor"))


async def test_lane_stream_deleted_under_a_running_processor(
    bus: EventBus, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder(bus)
    lane = bus.keys.lane(TOPIC, "normal")
    async with running(bus):
        await bus.publish(TOPIC, chat("before"))
        await wait_until(lambda: recorder.texts == ["before"], what="first")

        await bus.client.delete(lane)
        await wait_until(
            lambda: bool(warnings_from(caplog, "titan_bus.processor")),
            what="a warning about the lost stream",
        )
        for n in range(3):
            await bus.publish(TOPIC, chat(f"after {n}"))
        await wait_until(
            lambda: len(recorder.events) == 4, what="events after the deletion"
        )
        await wait_until(lambda: nothing_pending(bus), what="acked")

    assert recorder.texts[1:] == [f"after {n}" for n in range(3)]
