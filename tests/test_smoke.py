"""End-to-end: an event published is handled and acknowledged."""

from __future__ import annotations

import asyncio

from titan_bus import Event, EventBus


async def test_published_event_is_handled_and_acked(bus: EventBus) -> None:
    seen: list[Event] = []
    done = asyncio.Event()

    @bus.subscribe("chat.v1")
    async def on_chat(event: Event) -> None:
        seen.append(event)
        done.set()

    event_id = await bus.publish(
        "chat.v1", {"conversation_id": "c1", "role": "user", "text": "hi"}
    )
    runner = asyncio.create_task(bus.run())
    await asyncio.wait_for(done.wait(), timeout=5)
    bus.stop()
    await asyncio.wait_for(runner, timeout=5)

    assert [e.id for e in seen] == [event_id]
    assert seen[0].attempt == 1
    pending = await bus.client.xpending(bus.keys.lane("chat.v1", "normal"), "titan")
    assert pending["pending"] == 0
