"""The processor: reads lanes through a consumer group and runs handlers.

One processor is one consumer in the group; several processors (processes or
hosts) share the group's work. An entry is acknowledged only after every
handler of its topic returned; until then it stays pending in Redis, owned by
this consumer, so a crash loses nothing: another processor claims it (see
:mod:`titan_bus.recovery`). Failures are retried and finally dead-lettered
(see :mod:`titan_bus.handling`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from titan_bus.config import ProcessorConfig
from titan_bus.connection import is_connection_problem
from titan_bus.dedup import HandledMarks
from titan_bus.delayed import DelayedSet
from titan_bus.handling import Handler, HandlerRunner
from titan_bus.housekeeping import Housekeeper
from titan_bus.intake import Intake
from titan_bus.keys import KeySpace
from titan_bus.lanes import RETRY_LANE, topic_lanes
from titan_bus.limits import FlowGate
from titan_bus.observe import Observer
from titan_bus.reader import Entry, LaneReader
from titan_bus.recovery import Claimer, Recovery
from titan_bus.retention import Retention
from titan_bus.settle import Settler
from titan_bus.topics import TopicRegistry

logger = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
CLAIM_CHECK_MIN_S = 0.5
CLAIM_CHECK_MAX_S = 30.0
CLAIMS_PER_ROUND = 10
BACKGROUND_STOP_S = 2.0
GATED_IDLE_POLL_S = 0.05
"""How often an idle processor under a rate limit looks for work, in seconds.

It cannot block on the lanes while holding permits, so it polls instead: a
take, a read and a give-back about 20 times a second while idle."""

__all__ = ["Handler", "Processor", "new_consumer_name"]


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
        observer: receives what the processor does; nothing if None.
        gate: the rate limits to respect; none if None.
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
        observer: Observer | None = None,
        gate: FlowGate | None = None,
    ) -> None:
        self._client = client
        self._observer = observer or Observer()
        self._registry = registry
        self.config = config
        self.group = config.group
        self.consumer = consumer or new_consumer_name()
        topics = [registry.get(name) for name in handlers]
        self.lanes = [lane for t in topics for lane in topic_lanes(t, keys, self.group)]
        self._reader = LaneReader(
            client,
            lanes=self.lanes,
            group=self.group,
            consumer=self.consumer,
            block_ms=config.block_ms,
            strict_topics=[t.name for t in topics if t.strict_priority],
        )
        self._gate = gate or FlowGate(client, topic_buckets={}, global_bucket=None)
        delayed = {
            t.name: DelayedSet(
                client,
                keys.delayed(t.name),
                dead_letters=keys.dead_letters(t.name),
                lanes={lane: keys.lane(t.name, lane) for lane in t.lanes},
            )
            for t in topics
        }
        retries = {
            t.name: DelayedSet(
                client,
                keys.retry_delayed(t.name, self.group),
                dead_letters=keys.dead_letters(t.name),
                lanes={RETRY_LANE: keys.retry_lane(t.name, self.group)},
            )
            for t in topics
        }
        self._marks = (
            HandledMarks(client, keys=keys, group=self.group, window_s=w)
            if (w := config.idempotency_window_s) > 0
            else None
        )
        self._settler = Settler(
            client,
            keys=keys,
            group=self.group,
            delayed=retries,
            marks=self._marks,
        )
        self._runner = HandlerRunner(
            registry=registry,
            handlers={t: list(hs) for t, hs in handlers.items()},
            settler=self._settler,
            consumer=self.consumer,
            observer=self._observer,
        )
        self._claimer = Claimer(
            client, keys=keys, group=self.group, consumer=self.consumer
        )
        self._intake = Intake(
            settler=self._settler,
            marks=self._marks,
            observer=self._observer,
            consumer=self.consumer,
            group=self.group,
            registry=registry,
        )
        self._recovery = Recovery(
            claimer=self._claimer,
            intake=self._intake,
            runner=self._runner,
            settler=self._settler,
            registry=registry,
            drain=self._wait_idle,
        )
        self._housekeeper = Housekeeper(
            delayed=[*delayed.values(), *retries.values()],
            lanes=self.lanes,
            registry=registry,
            retention=Retention(client),
            claimer=self._claimer,
            interval_s=config.retention_interval_s,
            marks=self._marks,
        )
        idle = [t.claim_idle_s for t in topics] or [CLAIM_CHECK_MAX_S]
        self._claim_every_s = min(
            CLAIM_CHECK_MAX_S, max(CLAIM_CHECK_MIN_S, min(idle) / 2)
        )
        self._topics = [t.name for t in topics]
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._held: list[Entry] = []
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

    @property
    def vanished(self) -> int:
        """Pending entries found deleted or trimmed before they were handled."""
        return self._claimer.vanished + self._intake.vanished

    @property
    def duplicates(self) -> int:
        """Deliveries dropped because the group had handled the event already."""
        return self._intake.duplicates

    async def run(self) -> None:
        """Process events until :meth:`stop` is called, then shut down cleanly.

        In-flight handlers get ``shutdown_grace_s`` seconds to finish; whatever
        finished is acknowledged, the rest stays pending for another consumer.
        """
        if not self.lanes:
            logger.warning("processor %s has no handlers; nothing to do", self.consumer)
        background = [
            asyncio.create_task(self._settler.run(), name="titan-settler"),
            asyncio.create_task(self._housekeeper.release_loop(), name="titan-release"),
            asyncio.create_task(
                self._housekeeper.maintenance_loop(), name="titan-maint"
            ),
        ]
        try:
            await self._serve()
        finally:
            self.ready = False
            await self._drain()
            self._settler.close()
            self._housekeeper.stop()
            _, stuck = await asyncio.wait(background, timeout=BACKGROUND_STOP_S)
            for task in stuck:
                task.cancel()
            try:
                await self._settler.flush()
            except Exception as exc:
                logger.warning("final acknowledgements not written (%s)", exc)
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
        loop = asyncio.get_running_loop()
        next_claim = loop.time() + self._claim_every_s
        while not self._stopping.is_set():
            try:
                if recovering:
                    await self._start_reading()
                    recovering, pause = False, RECONNECT_MIN_S
                if loop.time() >= next_claim:
                    await self._recovery.run_round(
                        self.lanes,
                        limit=CLAIMS_PER_ROUND,
                        stopping=self._stopping.is_set,
                    )
                    next_claim = loop.time() + self._claim_every_s
                await self._step()
            except ResponseError as exc:
                if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                    logger.warning(
                        "group %s or a lane stream vanished (%s); recreating",
                        self.group,
                        exc,
                    )
                    recovering = True
                    continue
                # Out of memory, a key of the wrong type, a script error: Redis
                # refused; nothing is acked, so nothing is lost. Keep trying.
                self.ready, recovering = False, True
                logger.error(
                    "Redis refused a command of group %s (%s); retrying in %.1f s",
                    self.group,
                    exc,
                    pause,
                )
                await self._sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_S)
            except Exception as exc:
                if not is_connection_problem(exc):
                    raise
                self.ready, recovering = False, True
                logger.warning("lost Redis (%s); reconnecting in %.1f s", exc, pause)
                await self._sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_S)

    async def _start_reading(self) -> None:
        await self.ensure_groups()
        self._held.clear()
        self._reader.restart_own_pending()
        self.ready = True
        logger.info(
            "processor %s reading %d lanes as group %s",
            self.consumer,
            len(self.lanes),
            self.group,
        )

    async def _step(self) -> None:
        """Start as many handlers as there are free slots, reading if needed.

        Entries a read returned beyond the free slots (a blocking read asks
        each lane for at least one) wait in :attr:`_held`, pending in Redis
        under this consumer, so no more than ``concurrency`` handlers run.
        """
        free = self.config.concurrency - len(self._tasks)
        if free <= 0 or not self.lanes:
            await self._wait_for_slot()
            return
        if not self._held:
            self._held = await self._read(free)
        start, self._held = self._held[:free], self._held[free:]
        await self._dispatch(start)

    async def _read(self, free: int) -> list[Entry]:
        if self._reader.own_pending_left:
            own = await self._reader.read_own_pending(free)
            return [entry for entry in own if entry.name not in self._tasks]
        if not self._gate.active:
            return await self._reader.read_new(free)

        permits = await self._gate.take(free, self._topics)
        if permits.total <= 0 or all(permits.caps.get(t, 1) <= 0 for t in self._topics):
            for scope in permits.blocked_by():
                topic, kind = ("*", "global") if scope == "global" else (scope, "topic")
                self._observer.on_rate_limited(topic, kind)
            await self._sleep(min(permits.wait_s(), self.config.block_ms / 1000))
            return []
        # Never block while holding permits: the bucket refills meanwhile, and
        # a blocking read can return more entries than were permitted.
        entries = await self._reader.read_new(
            min(free, permits.total), permits.caps, block=False
        )
        used: dict[str, int] = {}
        for entry in entries:
            used[entry.lane.topic] = used.get(entry.lane.topic, 0) + 1
        await self._gate.give_back(permits, used)
        if not entries:
            await self._sleep(min(GATED_IDLE_POLL_S, self.config.block_ms / 1000))

        return entries

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _wait_for_slot(self) -> None:
        if not self._tasks:
            await self._sleep(self.config.block_ms / 1000)
            return
        await asyncio.wait(
            list(self._tasks.values()),
            timeout=self.config.block_ms / 1000,
            return_when=asyncio.FIRST_COMPLETED,
        )

    async def _wait_idle(self) -> None:
        """Wait until no handler of this processor is running."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))

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

    # -- dispatching ---------------------------------------------------------

    async def _dispatch(self, entries: list[Entry]) -> None:
        decoded = [self._intake.delivery(entry) for entry in entries]
        deliveries = [delivery for delivery in decoded if delivery is not None]
        for delivery in await self._intake.fresh(deliveries):
            name = f"{delivery.lane.key} {delivery.entry_id}"
            task = asyncio.create_task(self._runner.run(delivery), name=name)
            self._tasks[name] = task
            self._intake.running[name] = (delivery.event.topic, delivery.event.id)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        name = task.get_name()
        self._tasks.pop(name, None)
        self._intake.running.pop(name, None)
