"""Regressions from trying to break the bus: each test is one way it broke.

Real Redis throughout; the out-of-memory test gets a server of its own so
that lowering ``maxmemory`` cannot disturb other tests.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from helpers import chat, running, wait_until
from servers import RedisServer

from titan_bus import ConfigError, Event, EventBus, Reject, RetryLater, ValidationError
from titan_bus.config import parse_config
from titan_bus.dlq import ReplayError

pytestmark = pytest.mark.timeout(60)

QUICK = {"retry_base_s": 0.01, "retry_max_s": 0.05, "claim_idle_s": 0.5}


async def dead_letters(bus: EventBus, topic: str = "chat.v1") -> int:
    return await bus.dead_letters.count(topic)


async def test_a_retry_reaches_only_the_group_that_failed(make_config: Any) -> None:
    """Group A fails twice; group B, with no idempotency marks, runs it once."""
    failing = make_config(
        processor={"group": "a"}, defaults={**QUICK, "retry_limit": 3}
    )
    steady = make_config(processor={"group": "b", "idempotency_window_s": 0})
    runs: dict[str, list[int]] = {"a": [], "b": []}
    bus_a, bus_b = EventBus(failing), EventBus(steady)

    @bus_a.subscribe("chat.v1")
    async def flaky(event: Event) -> None:
        runs["a"].append(event.attempt)
        if event.attempt < 3:
            raise RuntimeError("not yet")

    @bus_b.subscribe("chat.v1")
    async def fine(event: Event) -> None:
        runs["b"].append(event.attempt)

    async with bus_a, bus_b, running(bus_a), running(bus_b):
        await bus_a.publish("chat.v1", chat())
        await wait_until(lambda: runs["a"] == [1, 2, 3], what="a's third attempt")
        await asyncio.sleep(0.3)

    assert runs == {"a": [1, 2, 3], "b": [1]}


async def test_dead_letter_refused_for_memory_is_not_lost(tmp_path: Path) -> None:
    """Out of memory when dead-lettering: the event stays pending, then lands."""
    with RedisServer(tmp_path) as server:
        admin = server.client()
        config = parse_config(
            {
                "redis": {"url": server.url},
                "processor": {"block_ms": 100},
                "defaults": QUICK,
            }
        )
        async with EventBus(config) as bus:
            gate = asyncio.Event()

            @bus.subscribe("chat.v1")
            async def refuse(event: Event) -> None:
                await gate.wait()
                raise Reject("no")

            async with running(bus):
                await bus.publish("chat.v1", chat())
                admin.config_set("maxmemory", 1)
                gate.set()
                await asyncio.sleep(0.5)
                assert await dead_letters(bus) == 0
                admin.config_set("maxmemory", 0)
                await wait_until(
                    lambda: _one_dead_letter(bus), timeout_s=15, what="dead letter"
                )
        admin.close()


async def _one_dead_letter(bus: EventBus) -> bool:
    return await dead_letters(bus) == 1


async def test_delayed_member_without_fields_does_not_stop_the_release(
    bus: EventBus,
) -> None:
    seen: list[str] = []

    @bus.subscribe("chat.v1")
    async def record(event: Event) -> None:
        seen.append(event.data["text"])

    await bus.client.zadd(
        bus.keys.delayed("chat.v1"), {'{"lane":"normal","fields":{}}': 0}
    )
    async with running(bus):
        await bus.publish("chat.v1", chat("later"), delay_s=0.2)
        await wait_until(lambda: seen == ["later"], what="the delayed event")
        await wait_until(lambda: _one_dead_letter(bus), what="the bad member set aside")


async def test_deeply_nested_entry_is_dead_lettered_and_processing_goes_on(
    bus: EventBus,
) -> None:
    seen: list[str] = []

    @bus.subscribe("chat.v1")
    async def record(event: Event) -> None:
        seen.append(event.data["text"])

    deep = b"[" * 100_000 + b"]" * 100_000
    await bus.client.xadd(bus.keys.lane("chat.v1", "normal"), {b"event": deep})
    async with running(bus):
        await bus.publish("chat.v1", chat("after"))
        await wait_until(lambda: seen == ["after"], what="the next event")
        await wait_until(lambda: _one_dead_letter(bus), what="the deep entry set aside")


async def test_error_text_that_is_not_utf8_still_reaches_the_dead_letters(
    bus: EventBus,
) -> None:
    @bus.subscribe("chat.v1")
    async def fails(event: Event) -> None:
        raise Reject("cannot read /tmp/caf\udce9.txt")

    async with running(bus):
        await bus.publish("chat.v1", chat())
        await wait_until(lambda: _one_dead_letter(bus), what="the dead letter")

    [letter] = await bus.dead_letters.entries("chat.v1")
    assert letter.failure["error_message"] == "cannot read /tmp/caf\\udce9.txt"


async def test_retry_later_with_an_infinite_delay_blocks_no_acks(
    bus: EventBus,
) -> None:
    handled: list[str] = []

    @bus.subscribe("chat.v1")
    async def handler(event: Event) -> None:
        if event.data["text"] == "forever" and event.attempt == 1:
            raise RetryLater(after_s=math.inf)
        handled.append(event.data["text"])

    async with running(bus):
        await bus.publish("chat.v1", chat("forever"))
        await bus.publish_many([("chat.v1", chat(f"n{i}")) for i in range(3)])
        await wait_until(lambda: len(handled) == 3, what="the others handled")
        await wait_until(lambda: _nothing_pending(bus), what="everything acked")


async def _nothing_pending(bus: EventBus) -> bool:
    reply = await bus.client.xpending(bus.keys.lane("chat.v1", "normal"), "titan")
    return int(reply["pending"]) == 0


async def test_entry_claiming_another_topic_never_reaches_a_handler(
    bus: EventBus,
) -> None:
    seen: list[str] = []

    @bus.subscribe("chat.v1")
    async def record(event: Event) -> None:
        seen.append(event.id)

    forged = bus.event("fs.v1", {"change": "deleted", "path": "/etc/passwd"})
    fields = bus.factory.write_for(forged).fields
    await bus.client.xadd(bus.keys.lane("chat.v1", "normal"), fields)
    async with running(bus):
        await wait_until(lambda: _one_dead_letter(bus), what="the forged entry")

    assert seen == []
    [letter] = await bus.dead_letters.entries("chat.v1")
    assert "fs.v1" in letter.failure["error_message"]


async def test_replay_that_cannot_be_written_keeps_the_dead_letter(
    bus: EventBus,
) -> None:
    @bus.subscribe("chat.v1")
    async def refuse(event: Event) -> None:
        raise Reject("no")

    async with running(bus):
        event_id = await bus.publish("chat.v1", chat())
        await wait_until(lambda: _one_dead_letter(bus), what="the dead letter")
    await bus.client.delete(bus.keys.retry_lane("chat.v1", "titan"))
    await bus.client.set(bus.keys.retry_lane("chat.v1", "titan"), "not a stream")

    with pytest.raises(ReplayError):
        await bus.dead_letters.replay("chat.v1", [event_id])
    assert await dead_letters(bus) == 1


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        ({"defaults": {"retry_max_s": float("inf")}}, "retry_max_s"),
        ({"processor": {"idempotency_window_s": float("nan")}}, "idempotency"),
        ({"defaults": {"rate_limit": 1e-300}}, "rate_limit"),
        ({"processor": {"block_ms": 20_000}}, "block_ms"),
        ({"redis": {"url": "redis://127.0.0.1:99999/0"}}, "redis.url"),
    ],
)
def test_config_values_that_broke_processors_are_rejected(
    raw: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError, match=where):
        parse_config(raw)


@pytest.mark.parametrize(
    ("data", "options"),
    [
        ({**chat(), "text": "\ud800"}, {}),
        (chat(), {"delay_s": math.nan}),
        (chat(), {"delay_s": math.inf}),
        (chat(), {"idempotency_key": ""}),
    ],
)
async def test_publish_input_that_broke_it_is_a_validation_error(
    bus: EventBus, data: dict[str, Any], options: dict[str, Any]
) -> None:
    with pytest.raises(ValidationError, match=r"chat\.v1"):
        await bus.publish("chat.v1", data, **options)
