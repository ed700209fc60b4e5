"""Settling deliveries: ack, retry later, or dead-letter, batched per round trip.

Handlers finish one by one; their outcomes are queued here and written by one
background flush, so a busy processor settles many events per Redis round
trip. Within one event the order of commands is what makes it safe: the retry
is scheduled (or the dead letter written) before, or atomically with, the ack,
so a lost connection can cause a duplicate delivery but never a lost event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from titan_bus.connection import is_connection_problem
from titan_bus.deadletters import (
    MOVE_TO_DEAD_LETTERS_LUA,
    Failure,
    dead_letter_fields,
)
from titan_bus.dedup import HandledMarks
from titan_bus.delayed import DelayedSet, delayed_member
from titan_bus.events import Event
from titan_bus.keys import KeySpace
from titan_bus.lanes import Lane

logger = logging.getLogger(__name__)

FIRST_FAILED_FIELD = b"first_failed_ms"
FLUSH_RETRY_S = 0.2

Command = Callable[[Any], Awaitable[Any]]
"""Queues Redis commands on a pipeline (awaiting only queues; no I/O)."""


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to this processor.

    Attributes:
        lane: the lane it was read from.
        entry_id: its stream entry id.
        fields: its raw fields, as stored.
        event: the decoded event (``attempt`` already includes crash attempts).
        first_failed_ms: when an earlier attempt first failed, Unix ms, or None.
    """

    lane: Lane
    entry_id: str
    fields: dict[bytes, bytes]
    event: Event
    first_failed_ms: int | None = None


class Settler:
    """Queues settlement commands and flushes them in pipelined batches.

    Args:
        client: an asyncio Redis client.
        keys: the key space.
        group: the consumer group.
        delayed: each topic's delayed set of this group's retries.
        marks: the group's handled marks, or None without idempotency.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        keys: KeySpace,
        group: str,
        delayed: dict[str, DelayedSet],
        marks: HandledMarks | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._group = group
        self._delayed = delayed
        self._marks = marks
        self._batch = _Batch()
        self._flushing = _Batch()
        self._wake = asyncio.Event()
        self._closed = False

    def ack(self, delivery: Delivery) -> None:
        """Acknowledge a delivery and mark its event handled for this group.

        Acks and marks are gathered per lane and topic, so a flush sends one
        ``XACK`` per lane and one mark command per topic, however many events.
        """
        self._batch.acks.setdefault(delivery.lane.key, []).append(delivery.entry_id)
        handled = self._batch.handled.setdefault(delivery.event.topic, [])
        handled.append(delivery.event.id)
        self._wake.set()

    def retry(self, delivery: Delivery, *, delay_s: float, failed_ms: int) -> None:
        """Schedule the next attempt ``delay_s`` from now and ack this one."""
        fields = dict(delivery.fields)
        fields[b"attempt"] = str(delivery.event.attempt + 1).encode()
        first = delivery.first_failed_ms or failed_ms
        fields[FIRST_FAILED_FIELD] = str(first).encode()
        member = delayed_member("retry", fields)
        ack = (delivery.lane.key, self._group, delivery.entry_id)
        delayed = self._delayed[delivery.lane.topic]

        self._push(
            lambda pipe: delayed.schedule(pipe, member, delay_s=delay_s, ack=ack)
        )

    def dead_letter(self, delivery: Delivery, failure: Failure) -> None:
        """Write the delivery to its topic's dead letters, then ack it."""
        self.set_aside(
            delivery.lane,
            delivery.entry_id,
            delivery.fields,
            failure,
            lane_name=delivery.event.priority,
        )

    def set_aside(
        self,
        lane: Lane,
        entry_id: str,
        fields: dict[bytes, bytes],
        failure: Failure,
        *,
        lane_name: str | None = None,
    ) -> None:
        """Dead-letter a raw entry (one that may not even decode), then ack it.

        ``lane_name`` is recorded as the dead letter's lane (the event's
        priority for a retry read from the group's retry stream).
        """
        dead = dead_letter_fields(
            fields,
            failure,
            lane=lane_name or lane.name,
            entry_id=entry_id,
            group=self._group,
        )
        dlq = self._keys.dead_letters(lane.topic)
        flat = [part for pair in dead.items() for part in pair]

        async def command(pipe: Any) -> None:
            pipe.eval(
                MOVE_TO_DEAD_LETTERS_LUA, 2, dlq, lane.key, self._group, entry_id, *flat
            )

        self._push(command)

    def drop(self, lane: Lane, entry_ids: list[str]) -> None:
        """Acknowledge entries that must not be handled (deleted, duplicates)."""
        if entry_ids:
            self._batch.acks.setdefault(lane.key, []).extend(entry_ids)
            self._wake.set()

    def handled_unwritten(self) -> set[tuple[str, str]]:
        """Return ``(topic, event id)`` of handled events not yet marked in Redis."""
        return {
            (topic, event_id)
            for batch in (self._flushing, self._batch)
            for topic, ids in batch.handled.items()
            for event_id in ids
        }

    def then(self, command: Command) -> None:
        """Queue any other command, run after those queued before it."""
        self._push(command)

    def _push(self, command: Command) -> None:
        self._batch.commands.append(command)
        self._wake.set()

    def close(self) -> None:
        """Make :meth:`run` return at its next step (call :meth:`flush` after)."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Flush queued commands whenever there are some, until closed."""
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            try:
                await self.flush()
            except Exception as exc:
                if is_connection_problem(exc):
                    logger.warning("could not settle events (%s); will retry", exc)
                else:
                    logger.exception("settling events failed; will retry")
                await asyncio.sleep(FLUSH_RETRY_S)
                self._wake.set()

    async def flush(self) -> None:
        """Write everything queued in one pipelined round trip."""
        batch, self._batch = self._batch, _Batch()
        if batch.empty():
            return

        pipe = self._client.pipeline(transaction=False)
        try:
            await batch.queue(pipe, self._group, self._marks)
        except Exception:
            batch.absorb(self._batch)
            self._batch = batch
            raise
        self._flushing = batch
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception:
            # Nothing or part of it ran; running it again can only duplicate a
            # delivery (the dedup window absorbs that), never lose one.
            batch.absorb(self._batch)
            self._batch = batch
            raise
        finally:
            self._flushing = _Batch()
        for result in results:
            if isinstance(result, Exception):
                logger.error("settling command refused by Redis: %s", result)


@dataclass
class _Batch:
    """Settlements waiting for the next flush."""

    commands: list[Command] = field(default_factory=list)
    acks: dict[str, list[str]] = field(default_factory=dict)
    handled: dict[str, list[str]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.commands or self.acks or self.handled)

    async def queue(self, pipe: Any, group: str, marks: HandledMarks | None) -> None:
        """Queue marks first, then acks, then the other commands, on ``pipe``."""
        if marks is not None:
            for topic, event_ids in self.handled.items():
                marks.mark(pipe, topic, event_ids)
        for key, ids in self.acks.items():
            pipe.xack(key, group, *ids)
        for command in self.commands:
            try:
                await command(pipe)
            except Exception:
                # A command that cannot even be built (a bug, or a value Redis
                # cannot take) is dropped; its entry stays pending and is
                # claimed again later, rather than blocking every other ack.
                logger.exception("dropped a settlement command that failed to build")

    def absorb(self, newer: _Batch) -> None:
        """Append what was queued after this batch was taken."""
        self.commands.extend(newer.commands)
        for key, ids in newer.acks.items():
            self.acks.setdefault(key, []).extend(ids)
        for topic, event_ids in newer.handled.items():
            self.handled.setdefault(topic, []).extend(event_ids)
