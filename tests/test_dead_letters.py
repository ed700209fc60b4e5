"""Dead letters: what they keep, and find, replay and purge on a real server.

A dead letter keeps the stored envelope byte for byte next to why it was
set aside. Replay puts that envelope back with the same event id and trace
context and the attempt count reset. Entries that are not valid envelopes
land there too, with their raw fields, without stopping the processor.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from helpers import chat, running, wait_until

from titan_bus import Event, EventBus, Reject, ValidationError
from titan_bus.codec import envelope_bytes
from titan_bus.deadletters import DeadLetter
from titan_bus.dlq import DeadLetterNotFoundError

TOPIC = "chat.v1"
QUICK = {"retry_base_s": 0.05, "retry_max_s": 0.2}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def pending_total(bus: EventBus, topic: str = TOPIC) -> int:
    total = 0
    for lane in bus.topics.get(topic).lanes:
        key = bus.keys.lane(topic, lane)
        total += int((await bus.client.xpending(key, "titan"))["pending"])

    return total


async def dead_letter_count_is(bus: EventBus, count: int) -> None:
    async def reached() -> bool:
        return await bus.dead_letters.count(TOPIC) == count

    await wait_until(reached, what=f"{count} dead letters", timeout_s=10)


class Switch:
    """Handlers that reject events while ``on``, and record what they see."""

    def __init__(self, bus: EventBus) -> None:
        self.on = True
        self.seen: list[Event] = []

        @bus.subscribe(TOPIC)
        async def handler(event: Event) -> None:
            self.seen.append(event)
            if self.on:
                raise Reject("not today")


async def test_dead_letter_json_carries_envelope_and_failure(make_config: Any) -> None:
    config = make_config(defaults={**QUICK, "retry_limit": 1})
    before = datetime.now(UTC)

    async with EventBus(config) as bus:

        @bus.subscribe(TOPIC)
        async def fails(event: Event) -> None:
            raise KeyError("missing user")

        async with running(bus) as processor:
            event_id = await bus.publish(
                TOPIC, chat("hi"), headers={"traceparent": TRACEPARENT}
            )
            await dead_letter_count_is(bus, 1)
            consumer = processor.consumer

        letter = await bus.dead_letters.find(TOPIC, event_id)

    body = json.loads(json.dumps(letter.to_json()))
    assert (body["id"], body["topic"], body["data"]) == (event_id, TOPIC, chat("hi"))
    assert body["traceparent"] == TRACEPARENT
    assert body["error_type"] == "KeyError"
    assert "missing user" in body["error_message"]
    assert body["attempts"] == 2
    assert body["consumer"] == consumer
    first = datetime.fromisoformat(body["first_failed_at"])
    last = datetime.fromisoformat(body["last_failed_at"])
    assert before <= first < last <= datetime.now(UTC)
    assert "KeyError" in letter.failure["traceback"]


async def test_dead_letter_keeps_the_stored_envelope_byte_for_byte(
    make_config: Any,
) -> None:
    async with EventBus(make_config(defaults={**QUICK, "retry_limit": 2})) as bus:

        @bus.subscribe(TOPIC)
        async def fails(event: Event) -> None:
            raise RuntimeError("no")

        async with running(bus):
            event = bus.event(TOPIC, chat("é ✓"), headers={"traceparent": TRACEPARENT})
            [event_id] = await bus.publish_many([event])
            await dead_letter_count_is(bus, 1)
            await wait_until(lambda: _nothing_pending(bus), what="all acked")

        [letter] = await bus.dead_letters.entries(TOPIC)
        lane = await bus.client.xrange(bus.keys.lane(TOPIC, "normal"))
        group = bus.config.processor.group
        retries = await bus.client.xrange(bus.keys.retry_lane(TOPIC, group))

    # The first delivery (in the shared lane) and both retries (in the group's
    # own retry stream) each stored the same bytes.
    assert (len(lane), len(retries)) == (1, 2)
    stored = {fields[b"event"] for _, fields in [*lane, *retries]}
    assert stored == {letter.stored}
    assert letter.stored == envelope_bytes(event)
    assert letter.event is not None and letter.event.id == event_id


async def _nothing_pending(bus: EventBus) -> bool:
    return await pending_total(bus) == 0


async def test_replay_keeps_id_and_trace_context_and_resets_attempts(
    make_config: Any,
) -> None:
    async with EventBus(make_config(defaults={**QUICK, "retry_limit": 2})) as bus:
        switch = Switch(bus)
        async with running(bus):
            event_id = await bus.publish(
                TOPIC, chat(), headers={"traceparent": TRACEPARENT}
            )
            await dead_letter_count_is(bus, 1)
            switch.on = False

            assert await bus.dead_letters.replay(TOPIC, [event_id]) == [event_id]
            assert await bus.dead_letters.count(TOPIC) == 0
            await wait_until(lambda: len(switch.seen) == 2, what="replayed event")
            await wait_until(lambda: _nothing_pending(bus), what="replay acked")

    replayed = switch.seen[1]
    assert replayed.id == event_id
    assert replayed.headers["traceparent"] == TRACEPARENT
    assert replayed.attempt == 1
    assert replayed.data == switch.seen[0].data


async def test_replay_all_puts_every_dead_letter_back(make_config: Any) -> None:
    async with EventBus(make_config(defaults=QUICK)) as bus:
        switch = Switch(bus)
        async with running(bus):
            ids = [await bus.publish(TOPIC, chat(str(n))) for n in range(3)]
            await dead_letter_count_is(bus, 3)
            switch.on = False

            assert sorted(await bus.dead_letters.replay(TOPIC, None)) == sorted(ids)
            await wait_until(lambda: len(switch.seen) == 6, what="3 replays handled")
            assert await bus.dead_letters.count(TOPIC) == 0

    assert sorted(e.id for e in switch.seen[3:]) == sorted(ids)
    assert {e.attempt for e in switch.seen[3:]} == {1}


async def test_replay_of_an_unknown_id_moves_nothing(make_config: Any) -> None:
    async with EventBus(make_config(defaults=QUICK)) as bus:
        Switch(bus)
        async with running(bus):
            event_id = await bus.publish(TOPIC, chat())
            await dead_letter_count_is(bus, 1)

            with pytest.raises(DeadLetterNotFoundError, match="nope"):
                await bus.dead_letters.replay(TOPIC, [event_id, "nope"])
            assert await bus.dead_letters.count(TOPIC) == 1


async def test_find_by_event_id_or_dead_letter_id(make_config: Any) -> None:
    async with EventBus(make_config(defaults=QUICK)) as bus:
        Switch(bus)
        async with running(bus):
            ids = [await bus.publish(TOPIC, chat(str(n))) for n in range(3)]
            await dead_letter_count_is(bus, 3)

        found = await bus.dead_letters.find(TOPIC, ids[1])
        assert found.event is not None and found.event.id == ids[1]
        again = await bus.dead_letters.find(TOPIC, found.dlq_id)
        assert again == found
        with pytest.raises(DeadLetterNotFoundError):
            await bus.dead_letters.find(TOPIC, "01NOSUCHEVENT")


async def test_purge_deletes_every_dead_letter(make_config: Any) -> None:
    async with EventBus(make_config(defaults=QUICK)) as bus:
        Switch(bus)
        async with running(bus):
            for n in range(2):
                await bus.publish(TOPIC, chat(str(n)))
            await dead_letter_count_is(bus, 2)

        assert await bus.dead_letters.purge(TOPIC) == 2
        assert await bus.dead_letters.entries(TOPIC) == []
        assert await bus.dead_letters.purge(TOPIC) == 0


ENVELOPE_OF_JUNK = b'{"hello": "world"}'
JUNK: list[tuple[dict[bytes, bytes], str]] = [
    ({b"foo": b"bar"}, "no 'event' field"),
    ({b"event": b"not json {", b"attempt": b"1"}, "invalid envelope"),
    ({b"event": b"\xff\xfe\x00 garbage", b"attempt": b"1"}, "invalid envelope"),
    ({b"event": ENVELOPE_OF_JUNK, b"attempt": b"1"}, "invalid envelope"),
]


async def test_malformed_entries_land_in_dead_letters_and_processing_goes_on(
    bus: EventBus,
) -> None:
    seen: list[Event] = []

    @bus.subscribe(TOPIC)
    async def on_chat(event: Event) -> None:
        seen.append(event)

    lane = bus.keys.lane(TOPIC, "normal")
    async with running(bus):
        for fields, _ in JUNK:
            await bus.client.xadd(lane, fields)
        good = await bus.publish(TOPIC, chat("still flowing"))
        await wait_until(lambda: len(seen) == 1, what="the valid event handled")
        await dead_letter_count_is(bus, len(JUNK))
        await wait_until(lambda: _nothing_pending(bus), what="junk acked")

    assert [e.id for e in seen] == [good]
    letters = await bus.dead_letters.entries(TOPIC)
    for letter, (fields, reason) in zip(letters, JUNK, strict=True):
        check_malformed(letter, fields, reason)


def check_malformed(
    letter: DeadLetter, fields: dict[bytes, bytes], reason: str
) -> None:
    """The letter names the reason and keeps the raw fields, escaped if binary.

    An entry whose ``event`` is JSON but not an envelope keeps that field
    byte for byte; its other fields (only ``attempt`` here) are not kept.
    """
    assert letter.event is None
    assert letter.failure["error_type"] == "MalformedEntryError"
    assert reason in letter.failure["error_message"]
    raw = {k.decode(): v.decode("utf-8", "backslashreplace") for k, v in fields.items()}
    if fields.get(b"event") == ENVELOPE_OF_JUNK:
        raw = {"event": ENVELOPE_OF_JUNK.decode()}
    assert letter.raw is not None
    assert {k: letter.raw.get(k) for k in raw} == raw
    body = json.loads(json.dumps(letter.to_json()))
    assert body["error_type"] == "MalformedEntryError"
    assert "id" not in body


async def test_replay_skips_malformed_letters_or_refuses_them_by_name(
    bus: EventBus,
) -> None:
    Switch(bus)
    lane = bus.keys.lane(TOPIC, "normal")
    async with running(bus):
        await bus.client.xadd(lane, {b"event": b"not json"})
        await dead_letter_count_is(bus, 1)
        event_id = await bus.publish(TOPIC, chat())
        await dead_letter_count_is(bus, 2)

    [junk, _] = await bus.dead_letters.entries(TOPIC)
    with pytest.raises(ValidationError, match=junk.dlq_id):
        await bus.dead_letters.replay(TOPIC, [junk.dlq_id])
    assert await bus.dead_letters.replay(TOPIC, None) == [event_id]
    assert [letter.dlq_id for letter in await bus.dead_letters.entries(TOPIC)] == [
        junk.dlq_id
    ]
