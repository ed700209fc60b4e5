"""The processor: reads lanes through a consumer group and runs handlers.

One processor is one consumer in the group; several processors (processes or
hosts) share the group's work. An entry is acknowledged only after every
handler of its topic returned; until then it stays pending in Redis, owned by
this consumer, so a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from redis.typing import KeyT, StreamIdT

from titan_bus.codec import decode_entry
from titan_bus.config import ProcessorConfig
from titan_bus.connection import is_connection_problem
from titan_bus.deadletters import Failure, dead_letter_fields
from titan_bus.errors import MalformedEntryError
from titan_bus.events import Event
from titan_bus.keys import KeySpace
from titan_bus.lanes import Lane, LaneScheduler
from titan_bus.topics import TopicRegistry

logger = logging.getLogger(__name__)

Handler = Callable[[Event], Awaitable[None]]
Entry = tuple[Lane, str, dict[bytes, bytes]]

RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0


def new_consumer_name() -> str:
    """Return a consumer name unique to this process: host, pid, random tag."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Processor:
    """Runs the handlers of a set of topics for one consumer group.

    Args:
        client: an asyncio Redis client.
        registry: the bus's topics.
        keys: the key space.
        config: group name, concurrency, block time, shutdown grace.
        handlers: topic name to the handlers run, in order, for each event.
        consumer: this consumer's name; unique per process if omitted.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        registry: TopicRegistry,
        keys: KeySpace,
        config: ProcessorConfig,
        handlers: Mapping[str, Sequence[Handler]],
        consumer: str | None = None,
    ) -> None:
        self._client = client
        self._registry = registry
        self._keys = keys
        self.config = config
        self.group = config.group
        self.consumer = consumer or new_consumer_name()
        self._handlers = {topic: list(hs) for topic, hs in handlers.items()}
        self.lanes = [
            Lane(topic, name, keys.lane(topic, name), weight)
            for topic in self._handlers
            for name, weight in registry.get(topic).lanes.items()
        ]
        self._by_key = {lane.key: lane for lane in self.lanes}
        self._scheduler = LaneScheduler(self.lanes)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._acks: list[tuple[str, str]] = []
        self._ack_wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self.ready = False

    # -- lifecycle -----------------------------------------------------------

    def stop(self) -> None:
        """Ask the processor to stop fetching; :meth:`run` then drains and returns."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    async def run(self) -> None:
        """Process events until :meth:`stop` is called, then shut down cleanly.

        In-flight handlers get ``shutdown_grace_s`` seconds to finish; whatever
        finished is acknowledged, the rest stays pending for another consumer.
        """
        if not self.lanes:
            logger.warning("processor %s has no handlers; nothing to do", self.consumer)
        acker = asyncio.create_task(self._ack_loop(), name="titan-acker")
        try:
            await self._serve()
        finally:
            self.ready = False
            await self._drain()
            acker.cancel()
            await asyncio.gather(acker, return_exceptions=True)
            await self._flush_acks()
            logger.info("processor %s stopped", self.consumer)

    async def ensure_groups(self) -> None:
        """Create the consumer group on every lane (idempotent, from the start)."""
        for lane in self.lanes:
            try:
                await self._client.xgroup_create(
                    lane.key, self.group, id="0", mkstream=True
                )
                logger.info("created group %s on %s", self.group, lane.key)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _serve(self) -> None:
        pause = RECONNECT_MIN_S
        recovering = True
        while not self._stopping.is_set():
            try:
                if recovering:
                    await self.ensure_groups()
                    await self._dispatch(await self._read_own_pending())
                    recovering, pause = False, RECONNECT_MIN_S
                    self.ready = True
                    logger.info(
                        "processor %s reading %d lanes as group %s",
                        self.consumer,
                        len(self.lanes),
                        self.group,
                    )
                await self._dispatch(await self._fetch())
            except ResponseError as exc:
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                logger.warning("group or stream vanished (%s); recreating it", exc)
                recovering = True
            except Exception as exc:
                if not is_connection_problem(exc):
                    raise
                self.ready, recovering = False, True
                logger.warning("lost Redis (%s); retrying in %.1f s", exc, pause)
                await self._sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_S)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    # -- reading -------------------------------------------------------------

    async def _read_own_pending(self) -> list[Entry]:
        """Return entries this consumer already owns (re-read after a reconnect)."""
        streams: dict[KeyT, StreamIdT] = {lane.key: "0" for lane in self.lanes}
        if not streams:
            return []
        reply = await self._client.xreadgroup(self.group, self.consumer, streams)

        return [e for e in self._entries(reply) if _task_name(e) not in self._tasks]

    async def _fetch(self) -> list[Entry]:
        free = self.config.concurrency - len(self._tasks)
        if free <= 0 or not self.lanes:
            await self._wait_for_slot()
            return []

        plan = self._scheduler.plan(free)
        pipe = self._client.pipeline(transaction=False)
        for key, count in plan.items():
            pipe.xreadgroup(self.group, self.consumer, {key: ">"}, count=count)
        entries: list[Entry] = []
        for (key, asked), reply in zip(plan.items(), await pipe.execute(), strict=True):
            got = self._entries(reply)
            self._scheduler.record(key, asked, len(got))
            entries.extend(got)
        if entries:
            return entries

        return await self._blocking_read(free)

    async def _blocking_read(self, free: int) -> list[Entry]:
        streams: dict[KeyT, StreamIdT] = {lane.key: ">" for lane in self.lanes}
        reply = await self._client.xreadgroup(
            self.group,
            self.consumer,
            streams,
            count=max(1, free // len(streams)),
            block=self.config.block_ms,
        )
        entries = self._entries(reply)
        for lane, _, _ in entries:
            self._scheduler.wake(lane.key)

        return entries

    def _entries(self, reply: object) -> list[Entry]:
        entries: list[Entry] = []
        for key, items in _stream_items(reply):
            lane = self._by_key[key.decode() if isinstance(key, bytes) else key]
            for entry_id, fields in items:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                entries.append((lane, eid, fields or {}))

        return entries

    async def _wait_for_slot(self) -> None:
        if not self._tasks:
            await self._sleep(self.config.block_ms / 1000)
            return
        await asyncio.wait(
            list(self._tasks.values()),
            timeout=self.config.block_ms / 1000,
            return_when=asyncio.FIRST_COMPLETED,
        )

    # -- handling ------------------------------------------------------------

    async def _dispatch(self, entries: list[Entry]) -> None:
        malformed: list[tuple[Entry, MalformedEntryError]] = []
        for entry in entries:
            lane, entry_id, fields = entry
            try:
                event = decode_entry(fields)
            except MalformedEntryError as exc:
                malformed.append((entry, exc))
                continue
            name = _task_name(entry)
            task = asyncio.create_task(self._handle(lane, entry_id, event), name=name)
            self._tasks[name] = task
            task.add_done_callback(self._forget)
        if malformed:
            await self._set_aside(malformed)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task.get_name(), None)

    async def _handle(self, lane: Lane, entry_id: str, event: Event) -> None:
        topic = self._registry.get(lane.topic)
        try:
            for handler in self._handlers[lane.topic]:
                await asyncio.wait_for(handler(event), timeout=topic.handler_timeout_s)
        except Exception:
            logger.exception(
                "handler failed on %s event %s (lane %s, attempt %d); left pending",
                lane.topic,
                event.id,
                lane.name,
                event.attempt,
            )
            return

        logger.debug(
            "handled %s event %s from lane %s", lane.topic, event.id, lane.name
        )
        self._acks.append((lane.key, entry_id))
        self._ack_wake.set()

    async def _set_aside(
        self, malformed: list[tuple[Entry, MalformedEntryError]]
    ) -> None:
        """Move entries that are not valid envelopes to their topic's dead letters."""
        pipe = self._client.pipeline(transaction=False)
        for (lane, entry_id, fields), exc in malformed:
            logger.warning(
                "malformed entry %s in %s lane %s: %s; moved to dead letters",
                entry_id,
                lane.topic,
                lane.name,
                exc,
            )
            failure = Failure("MalformedEntryError", str(exc), 1, self.consumer)
            dead = dead_letter_fields(
                fields, failure, lane=lane.name, entry_id=entry_id
            )
            pipe.xadd(self._keys.dead_letters(lane.topic), dead)
            pipe.xack(lane.key, self.group, entry_id)
        await pipe.execute()

    # -- acknowledging -------------------------------------------------------

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            try:
                await self._flush_acks()
            except Exception as exc:
                if not is_connection_problem(exc):
                    raise
                logger.warning("could not acknowledge (%s); will retry", exc)
                await asyncio.sleep(RECONNECT_MIN_S)
                self._ack_wake.set()

    async def _flush_acks(self) -> None:
        batch, self._acks = self._acks, []
        if not batch:
            return
        by_key: dict[str, list[str]] = {}
        for key, entry_id in batch:
            by_key.setdefault(key, []).append(entry_id)
        pipe = self._client.pipeline(transaction=False)
        for key, ids in by_key.items():
            pipe.xack(key, self.group, *ids)
        try:
            await pipe.execute()
        except Exception:
            self._acks[:0] = batch
            raise

    async def _drain(self) -> None:
        if not self._tasks:
            return
        grace = self.config.shutdown_grace_s
        logger.info("waiting up to %.1f s for %d handlers", grace, len(self._tasks))
        _, late = await asyncio.wait(list(self._tasks.values()), timeout=grace)
        for task in late:
            task.cancel()
        if late:
            logger.warning(
                "%d handlers cut short; their events stay pending", len(late)
            )
            await asyncio.gather(*late, return_exceptions=True)


def _task_name(entry: Entry) -> str:
    """Return a name unique per in-flight entry (ids repeat across streams)."""
    return f"{entry[0].key} {entry[1]}"


def _stream_items(reply: object) -> list[Any]:
    """Return the ``[stream key, [(entry id, fields), ...]]`` pairs of a reply."""
    return list(reply) if isinstance(reply, list) else []
