"""Background duties of a processor, apart from reading and handling.

- Releasing due events from each topic's delayed set into their lanes.
- Trimming lanes to ``maxlen`` without dropping unacknowledged entries.
- Removing consumers that are gone and own nothing.
- Expiring idempotency marks older than the window.

Every processor runs them; the scripts behind them are atomic, so several
processors doing the same duty at once is safe, merely redundant.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from titan_bus.connection import is_connection_problem
from titan_bus.dedup import HandledMarks
from titan_bus.delayed import DelayedSet
from titan_bus.lanes import Lane
from titan_bus.recovery import Claimer
from titan_bus.retention import Retention
from titan_bus.topics import TopicRegistry

logger = logging.getLogger(__name__)

RELEASE_POLL_MAX_S = 0.25


class Housekeeper:
    """Runs the delayed-set release and the periodic lane maintenance.

    Args:
        delayed: each subscribed topic's delayed set.
        lanes: the lanes this processor reads.
        registry: the bus's topics (maxlen, claim idle time).
        retention: the lane trimmer.
        claimer: removes idle consumers.
        interval_s: seconds between maintenance rounds.
        marks: the group's handled marks, expired here; None without them.
    """

    def __init__(
        self,
        *,
        delayed: Sequence[DelayedSet],
        lanes: Sequence[Lane],
        registry: TopicRegistry,
        retention: Retention,
        claimer: Claimer,
        interval_s: float,
        marks: HandledMarks | None = None,
    ) -> None:
        self._marks = marks
        self._delayed = list(delayed)
        self._lanes = list(lanes)
        self._registry = registry
        self._retention = retention
        self._claimer = claimer
        self._interval_s = interval_s
        self._stopped = asyncio.Event()
        self.wake = asyncio.Event()

    def stop(self) -> None:
        """Make both loops return at their next step."""
        self._stopped.set()
        self.wake.set()

    async def _pause(self, seconds: float, *, wakeable: bool = False) -> None:
        waiters = [asyncio.ensure_future(self._stopped.wait())]
        if wakeable:
            waiters.append(asyncio.ensure_future(self.wake.wait()))
        await asyncio.wait(waiters, timeout=seconds, return_when="FIRST_COMPLETED")
        for waiter in waiters:
            waiter.cancel()

    async def release_loop(self) -> None:
        """Move due delayed events into their lanes, until cancelled.

        Sleeps until the next event is due, at most ``RELEASE_POLL_MAX_S``
        (events delayed by other processes cannot wake it), or until woken.
        """
        while not self._stopped.is_set():
            wait_s = RELEASE_POLL_MAX_S
            try:
                for delayed in self._delayed:
                    _, next_due = await delayed.release_due()
                    if next_due is not None:
                        wait_s = min(wait_s, next_due)
            except Exception as exc:
                if is_connection_problem(exc):
                    logger.debug("delayed release skipped: %s", exc)
                else:
                    logger.error(
                        "releasing delayed events failed (%s); will retry", exc
                    )
            self.wake.clear()
            await self._pause(wait_s, wakeable=True)

    async def maintenance_loop(self) -> None:
        """Trim lanes and drop idle consumers every ``interval_s``, until cancelled."""
        while not self._stopped.is_set():
            await self._pause(self._interval_s)
            if self._stopped.is_set():
                return
            try:
                await self.maintain()
            except Exception as exc:
                if not is_connection_problem(exc):
                    logger.exception("lane maintenance failed; will try again")
                else:
                    logger.debug("lane maintenance skipped: %s", exc)

    async def maintain(self) -> None:
        """Run one maintenance round over every lane and topic."""
        if self._marks is not None:
            for name in dict.fromkeys(lane.topic for lane in self._lanes):
                await self._marks.expire(name)
        for lane in self._lanes:
            topic = self._registry.get(lane.topic)
            if topic.maxlen is not None:
                trimmed = await self._retention.trim(lane.key, maxlen=topic.maxlen)
                if trimmed:
                    logger.debug("trimmed %d entries from %s", trimmed, lane.key)
            idle_ms = int(topic.claim_idle_s * 2000)
            await self._claimer.remove_idle_consumers(lane, idle_ms=idle_ms)
