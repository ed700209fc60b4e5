"""Inspecting, replaying and purging a topic's dead letters.

Replay writes the original stored envelope back into its lane, byte for
byte (so the event id and trace context are kept), with the attempt count
reset to 1, and deletes the dead letter in the same transaction: an event is
never both replayed and still listed, and never lost in between.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import redis.asyncio as aioredis

from titan_bus.codec import ATTEMPT_FIELD, EVENT_FIELD
from titan_bus.deadletters import REPLAY_LUA, DeadLetter, read_dead_letter
from titan_bus.errors import TitanBusError, ValidationError
from titan_bus.keys import KeySpace
from titan_bus.topics import TopicRegistry

logger = logging.getLogger(__name__)

SCAN_BATCH = 500


class DeadLetterNotFoundError(TitanBusError):
    """Raised when a dead letter named by id does not exist."""


class ReplayError(TitanBusError):
    """Raised when some dead letters could not be replayed (they stay listed)."""


class DeadLetters:
    """The dead letters of every topic of one bus.

    Args:
        client: an asyncio Redis client.
        keys: the key space.
        registry: the bus's topics.
    """

    def __init__(
        self, client: aioredis.Redis, *, keys: KeySpace, registry: TopicRegistry
    ) -> None:
        self._client = client
        self._keys = keys
        self._registry = registry

    async def count(self, topic: str) -> int:
        """Return how many dead letters ``topic`` holds."""
        return int(await self._client.xlen(self._key(topic)))

    async def entries(self, topic: str, *, limit: int = 100) -> list[DeadLetter]:
        """Return up to ``limit`` dead letters of ``topic``, oldest first."""
        return await self._range(topic, "-", limit)

    async def find(self, topic: str, event_id: str) -> DeadLetter:
        """Return the dead letter of event ``event_id`` (or with that dead-letter id).

        Raises:
            DeadLetterNotFoundError: no dead letter of ``topic`` matches.
        """
        async for letter in self._scan(topic):
            if event_id in (letter.dlq_id, letter.event.id if letter.event else None):
                return letter

        raise DeadLetterNotFoundError(f"{topic}: no dead letter for event {event_id!r}")

    async def replay(self, topic: str, event_ids: Iterable[str] | None) -> list[str]:
        """Put dead letters back into their lanes with attempts reset to 1.

        Args:
            topic: the topic.
            event_ids: event (or dead-letter) ids to replay; every one if None.

        Returns:
            The event ids replayed.

        Raises:
            DeadLetterNotFoundError: an id names no dead letter (nothing moves).
            ValidationError: a named dead letter holds no valid event.
        """
        if event_ids is None:
            letters = [letter async for letter in self._scan(topic)]
            letters = [letter for letter in letters if letter.stored is not None]
        else:
            letters = [await self.find(topic, event_id) for event_id in event_ids]
            bad = [letter.dlq_id for letter in letters if letter.stored is None]
            if bad:
                raise ValidationError(
                    f"{topic}: dead letters {bad} hold no valid event"
                )

        return await self._move_back(topic, letters)

    async def purge(self, topic: str) -> int:
        """Delete every dead letter of ``topic``; return how many there were."""
        pipe = self._client.pipeline(transaction=True)
        pipe.xlen(self._key(topic))
        pipe.delete(self._key(topic))
        count, _ = await pipe.execute()
        logger.warning("purged %d dead letters of %s", count, topic)

        return int(count)

    async def _move_back(self, topic: str, letters: list[DeadLetter]) -> list[str]:
        if not letters:
            return []

        pipe = self._client.pipeline(transaction=False)
        for letter in letters:
            assert letter.event is not None and letter.stored is not None
            target = self._replay_key(topic, letter)
            args: list[Any] = [
                letter.dlq_id,
                EVENT_FIELD,
                letter.stored,
                ATTEMPT_FIELD,
                b"1",
            ]
            pipe.eval(REPLAY_LUA, 2, self._key(topic), target, *args)
        replies = await pipe.execute(raise_on_error=False)
        replayed = []
        for letter, reply in zip(letters, replies, strict=True):
            if isinstance(reply, Exception):
                logger.error(
                    "%s dead letter %s not replayed: %s", topic, letter.dlq_id, reply
                )
            elif letter.event is not None:
                replayed.append(letter.event.id)
        logger.info("replayed %d dead letters of %s", len(replayed), topic)
        if len(replayed) < len(letters):
            raise ReplayError(
                f"{topic}: replayed {len(replayed)} of {len(letters)} dead letters; "
                "the others are still listed (see the log for why)"
            )

        return replayed

    def _replay_key(self, topic: str, letter: DeadLetter) -> str:
        """Return where a replay goes: the retries of the group that gave up on
        it (so other groups, which handled it, do not get it again), else its lane.
        """
        group = letter.failure.get("group")
        if isinstance(group, str) and group:
            return self._keys.retry_lane(topic, group)

        spec = self._registry.get(topic)
        assert letter.event is not None
        lane = letter.event.priority
        return self._keys.lane(
            topic, lane if lane in spec.lanes else list(spec.lanes)[-1]
        )

    async def _scan(self, topic: str) -> AsyncIterator[DeadLetter]:
        start = "-"
        while True:
            batch = await self._range(topic, start, SCAN_BATCH)
            for letter in batch:
                yield letter
            if len(batch) < SCAN_BATCH:
                return
            start = "(" + batch[-1].dlq_id

    async def _range(self, topic: str, start: str, count: int) -> list[DeadLetter]:
        reply: Any = await self._client.xrange(self._key(topic), min=start, count=count)

        return [read_dead_letter(topic, _text(i), f) for i, f in reply or []]

    def _key(self, topic: str) -> str:
        self._registry.get(topic)
        return self._keys.dead_letters(topic)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
