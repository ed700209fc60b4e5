"""Running a topic's handlers on one delivery and deciding what happens next.

Outcomes, by what the handlers did:

- returned: acknowledged (and marked handled for the idempotency window);
- raised :class:`~titan_bus.signals.Reject`: dead-lettered at once;
- raised :class:`~titan_bus.signals.RetryLater`, any other exception, or ran
  past ``handler_timeout_s``: retried after a backoff while attempts remain
  (``retry_limit`` retries after the first attempt, ``retry_limit + 1`` in
  all), dead-lettered after the last one.

A retry waits in the topic's delayed set in Redis, not in a sleeping
coroutine, so it survives restarts and holds back no other event.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from titan_bus.deadletters import Failure
from titan_bus.events import Event
from titan_bus.observe import Observer, Outcome
from titan_bus.settle import Delivery, Settler
from titan_bus.signals import Reject, RetryLater
from titan_bus.topics import Topic, TopicRegistry

logger = logging.getLogger(__name__)

Handler = Callable[[Event], Awaitable[None]]

MAX_RETRY_DELAY_S = 7 * 24 * 3600.0
"""Longest retry delay a handler may ask for, in seconds (one week)."""


def backoff_s(attempt: int, *, base_s: float, max_s: float) -> float:
    """Return the delay before retrying a failed ``attempt``, in seconds.

    Exponential (``base_s * 2 ** (attempt - 1)``, capped at ``max_s``) with
    "equal jitter": a uniform draw from the upper half of that value, so
    retries of events that failed together spread out but never come early.
    """
    ceiling = min(max_s, base_s * 2 ** min(attempt - 1, 62))

    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


class HandlerRunner:
    """Runs handlers with a timeout and settles each delivery by its outcome.

    The observer is told the event's priority as its lane, also for a retry
    read from the group's retry stream, so metrics and spans keep one lane
    per priority.

    Args:
        registry: the bus's topics (retry policy, timeout).
        handlers: topic name to the handlers run, in order, for each event.
        settler: where outcomes are written.
        consumer: this consumer's name, recorded with dead letters.
        observer: told how each delivery ended and how long it ran.
    """

    def __init__(
        self,
        *,
        registry: TopicRegistry,
        handlers: Mapping[str, Sequence[Handler]],
        settler: Settler,
        consumer: str,
        observer: Observer,
    ) -> None:
        self._observer = observer
        self._registry = registry
        self._handlers = handlers
        self._settler = settler
        self._consumer = consumer

    async def run(self, delivery: Delivery) -> None:
        """Run every handler of the delivery's topic, then settle it."""
        event, lane = delivery.event, delivery.lane
        topic = self._registry.get(lane.topic)
        error: BaseException | None = None
        started = time.perf_counter()
        try:
            with self._observer.handle_scope(event, event.priority):
                async with asyncio.timeout(topic.handler_timeout_s):
                    for handler in self._handlers[lane.topic]:
                        await handler(event)
        except Reject as signal:
            logger.warning(
                "%s event %s rejected by handler (%s); dead-lettering",
                lane.topic,
                event.id,
                signal.reason or "no reason",
            )
            error, outcome = signal, self._give_up(delivery, signal)
        except Exception as exc:
            error = _as_failure(exc, topic)
            outcome = self.failed(delivery, topic, error)
        else:
            logger.debug("handled %s event %s (%s)", lane.topic, event.id, lane.name)
            outcome = "handled"
            self._settler.ack(delivery)
        elapsed = time.perf_counter() - started
        self._observer.on_outcome(event, event.priority, outcome, elapsed, error)

    def crashed(self, delivery: Delivery, exc: BaseException) -> None:
        """Settle a delivery whose runs kept stopping its processor."""
        topic = self._registry.get(delivery.lane.topic)
        outcome = self.failed(delivery, topic, exc)
        event = delivery.event
        self._observer.on_outcome(event, event.priority, outcome, 0.0, exc)

    def failed(self, delivery: Delivery, topic: Topic, exc: BaseException) -> Outcome:
        """Retry the delivery later, or dead-letter it if attempts are spent."""
        event = delivery.event
        if event.attempt > topic.retry_limit:
            logger.error(
                "%s event %s failed on its last attempt %d (%s: %s); dead-lettering",
                topic.name,
                event.id,
                event.attempt,
                type(exc).__name__,
                exc,
            )
            return self._give_up(delivery, exc)

        delay = backoff_s(
            event.attempt, base_s=topic.retry_base_s, max_s=topic.retry_max_s
        )
        if isinstance(exc, RetryLater) and exc.after_s is not None:
            delay = exc.after_s
            if not math.isfinite(delay) or not 0 <= delay <= MAX_RETRY_DELAY_S:
                logger.warning(
                    "%s event %s: RetryLater(after_s=%r) out of range; using %s s",
                    topic.name,
                    event.id,
                    exc.after_s,
                    MAX_RETRY_DELAY_S if delay > 0 else 0,
                )
                delay = MAX_RETRY_DELAY_S if delay > 0 else 0.0
        logger.warning(
            "%s event %s failed attempt %d of %d (%s: %s); retrying in %.2f s",
            topic.name,
            event.id,
            event.attempt,
            topic.retry_limit + 1,
            type(exc).__name__,
            exc,
            delay,
        )
        self._settler.retry(delivery, delay_s=delay, failed_ms=int(time.time() * 1000))

        return "retried"

    def _give_up(self, delivery: Delivery, exc: BaseException) -> Outcome:
        first = delivery.first_failed_ms
        failure = Failure.from_exception(
            exc,
            attempts=delivery.event.attempt,
            consumer=self._consumer,
            first_failed_at=(
                datetime.fromtimestamp(first / 1000, UTC) if first is not None else None
            ),
        )
        self._settler.dead_letter(delivery, failure)

        return "rejected" if isinstance(exc, Reject) else "dead_lettered"


def _as_failure(exc: Exception, topic: Topic) -> BaseException:
    if isinstance(exc, TimeoutError):
        return TimeoutError(
            f"handler ran past handler_timeout_s={topic.handler_timeout_s}"
        )

    return exc
