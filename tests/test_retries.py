"""Retries: backoff in Redis, the retry limit, RetryLater, Reject, timeouts.

Every test runs a real processor against the session's private Redis. A
retry must wait in the topic's delayed set (a sorted set in Redis), so it
survives a restart and never holds back other events.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import chat, running, wait_until

from titan_bus import Event, EventBus, Reject, RetryLater
from titan_bus.deadletters import DeadLetter
from titan_bus.handling import backoff_s

TOPIC = "chat.v1"
QUICK = {"retry_base_s": 0.05, "retry_max_s": 0.2, "claim_idle_s": 1.0}


async def pending_total(bus: EventBus, topic: str = TOPIC) -> int:
    """Entries pending in the bus's group on every lane of ``topic``."""
    total = 0
    for lane in bus.topics.get(topic).lanes:
        key = bus.keys.lane(topic, lane)
        total += int((await bus.client.xpending(key, "titan"))["pending"])

    return total


async def waiting(bus: EventBus, topic: str = TOPIC) -> int:
    """Events waiting in ``topic``'s delayed set."""
    return int(
        await bus.client.zcard(
            bus.keys.retry_delayed(topic, bus.config.processor.group)
        )
    )


async def settled(bus: EventBus) -> bool:
    """True when nothing is pending and nothing waits for a retry."""
    return await pending_total(bus) == 0 and await waiting(bus) == 0


async def only_dead_letter(bus: EventBus) -> DeadLetter:
    await wait_until(lambda: _has_dead_letters(bus), what="a dead letter", timeout_s=10)
    [letter] = await bus.dead_letters.entries(TOPIC)

    return letter


async def _has_dead_letters(bus: EventBus) -> bool:
    return await bus.dead_letters.count(TOPIC) > 0


def test_backoff_grows_exponentially_with_jitter_up_to_the_maximum() -> None:
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (60, 0.5)]:
        delays = [backoff_s(attempt, base_s=0.1, max_s=0.5) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(set(delays)) > 1, "no jitter"


async def test_handler_failing_twice_is_called_with_attempts_1_2_3_and_acked(
    make_config: Any,
) -> None:
    seen: list[tuple[str, int]] = []

    async with EventBus(make_config(defaults=QUICK)) as bus:

        @bus.subscribe(TOPIC)
        async def flaky(event: Event) -> None:
            seen.append((event.id, event.attempt))
            if event.attempt < 3:
                raise RuntimeError(f"failure {event.attempt}")

        async with running(bus):
            event_id = await bus.publish(TOPIC, chat())
            await wait_until(lambda: len(seen) == 3, what="3 attempts")
            await wait_until(lambda: settled(bus), what="acked, nothing waiting")

        assert seen == [(event_id, 1), (event_id, 2), (event_id, 3)]
        assert await bus.dead_letters.count(TOPIC) == 0


@pytest.mark.parametrize("limit", [0, 2])
async def test_retry_limit_n_means_n_plus_1_attempts_then_dead_letters(
    make_config: Any, limit: int
) -> None:
    attempts: list[int] = []

    async with EventBus(make_config(defaults={**QUICK, "retry_limit": limit})) as bus:

        @bus.subscribe(TOPIC)
        async def always_fails(event: Event) -> None:
            attempts.append(event.attempt)
            raise ValueError("broken payload handling")

        async with running(bus):
            event_id = await bus.publish(TOPIC, chat())
            letter = await only_dead_letter(bus)
            await wait_until(lambda: settled(bus), what="dead letter acked")
            # Longer than any backoff of this config: a further attempt
            # would have been released by now.
            await _pause(0.5)

        assert attempts == list(range(1, limit + 2))
        assert letter.event is not None and letter.event.id == event_id
        assert letter.failure["attempts"] == limit + 1
        assert letter.failure["error_type"] == "ValueError"
        assert letter.failure["error_message"] == "broken payload handling"


async def _pause(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    await wait_until(lambda: time.monotonic() >= deadline, timeout_s=seconds + 1)


async def test_retry_later_waits_at_least_the_time_asked(make_config: Any) -> None:
    after_s = 0.6
    raised_at: list[float] = []
    retried_at: list[float] = []

    async with EventBus(make_config(defaults=QUICK)) as bus:

        @bus.subscribe(TOPIC)
        async def later(event: Event) -> None:
            if event.attempt == 1:
                raised_at.append(time.monotonic())
                raise RetryLater(after_s, reason="downstream busy")
            retried_at.append(time.monotonic())

        async with running(bus):
            await bus.publish(TOPIC, chat())
            await wait_until(lambda: bool(retried_at), what="the retry", timeout_s=5)
            await wait_until(lambda: settled(bus), what="retry acked")

        # Due times are whole milliseconds of Redis's clock: allow 2 ms.
        assert retried_at[0] - raised_at[0] >= after_s - 0.002
        assert await bus.dead_letters.count(TOPIC) == 0


async def test_reject_goes_straight_to_dead_letters_after_one_attempt(
    make_config: Any,
) -> None:
    attempts: list[int] = []

    async with EventBus(make_config(defaults={**QUICK, "retry_limit": 5})) as bus:

        @bus.subscribe(TOPIC)
        async def rejects(event: Event) -> None:
            attempts.append(event.attempt)
            raise Reject("text is not a command")

        async with running(bus):
            await bus.publish(TOPIC, chat())
            letter = await only_dead_letter(bus)
            await wait_until(lambda: settled(bus), what="rejected event acked")
            await _pause(0.3)

        assert attempts == [1]
        assert letter.failure["attempts"] == 1
        assert letter.failure["error_type"] == "Reject"
        assert letter.failure["error_message"] == "text is not a command"


async def test_handler_timeout_counts_as_a_failed_attempt(make_config: Any) -> None:
    attempts: list[int] = []
    config = make_config(defaults={**QUICK, "handler_timeout_s": 0.2})

    async with EventBus(config) as bus:

        @bus.subscribe(TOPIC)
        async def slow_once(event: Event) -> None:
            attempts.append(event.attempt)
            if event.attempt == 1:
                await _pause(5)

        async with running(bus):
            await bus.publish(TOPIC, chat())
            await wait_until(lambda: attempts == [1, 2], what="a second attempt")
            await wait_until(lambda: settled(bus), what="second attempt acked")

        assert await bus.dead_letters.count(TOPIC) == 0


async def test_handler_always_timing_out_is_dead_lettered_as_timeout(
    make_config: Any,
) -> None:
    defaults = {**QUICK, "handler_timeout_s": 0.1, "retry_limit": 1}

    async with EventBus(make_config(defaults=defaults)) as bus:

        @bus.subscribe(TOPIC)
        async def hangs(event: Event) -> None:
            await _pause(5)

        async with running(bus):
            await bus.publish(TOPIC, chat())
            letter = await only_dead_letter(bus)

        assert letter.failure["error_type"] == "TimeoutError"
        assert "handler_timeout_s" in letter.failure["error_message"]
        assert letter.failure["attempts"] == 2


async def test_failing_event_waits_in_redis_without_holding_back_others(
    make_config: Any,
) -> None:
    """With one handler slot, 20 events pass while a retry waits 2.5 s."""
    config = make_config(defaults=QUICK, processor={"concurrency": 1})
    order: list[str] = []

    async with EventBus(config) as bus:

        @bus.subscribe(TOPIC)
        async def on_chat(event: Event) -> None:
            text = event.data["text"]
            if text == "stuck" and event.attempt == 1:
                raise RetryLater(2.5)
            order.append(f"{text}#{event.attempt}")

        async with running(bus):
            await bus.publish(TOPIC, chat("stuck"))
            await wait_until(lambda: waiting(bus), what="retry in the delayed set")
            for n in range(20):
                await bus.publish(TOPIC, chat(str(n)))
            await wait_until(lambda: len(order) == 20, what="the 20 others handled")
            assert await waiting(bus) == 1
            await wait_until(lambda: len(order) == 21, what="the retry", timeout_s=5)
            await wait_until(lambda: settled(bus), what="all acked")

        assert order[-1] == "stuck#2"
        assert sorted(order[:-1]) == sorted(f"{n}#1" for n in range(20))


async def test_waiting_retry_survives_a_processor_restart(make_config: Any) -> None:
    attempts: list[tuple[str, int]] = []

    async with EventBus(make_config(defaults=QUICK)) as bus:

        @bus.subscribe(TOPIC)
        async def on_chat(event: Event) -> None:
            attempts.append((event.id, event.attempt))
            if event.attempt == 1:
                raise RetryLater(1.0)

        async with running(bus, consumer="first"):
            event_id = await bus.publish(TOPIC, chat())
            await wait_until(lambda: waiting(bus), what="retry in the delayed set")

        assert await waiting(bus) == 1
        assert await pending_total(bus) == 0
        assert attempts == [(event_id, 1)]

        async with running(bus, consumer="second"):
            await wait_until(lambda: len(attempts) == 2, what="retry after restart")
            await wait_until(lambda: settled(bus), what="retry acked")

        assert attempts == [(event_id, 1), (event_id, 2)]
