"""Recovery: taking over events held by processors that stopped answering.

An entry stays pending on the consumer that read it until acknowledged. If
that consumer's process died, the entry would wait forever; so every
processor periodically claims entries idle for longer than the topic's
``claim_idle_s`` (``XAUTOCLAIM``) and handles them.

Claimed entries are *suspects*: one of them may be what killed the previous
owner. They are claimed and handled one at a time, with nothing else in
flight, and each is marked in ``<prefix>:{<topic>}:suspects`` while it runs.
If the processor dies during that run, the mark survives: the next claimer
then knows this entry crashed a processor on its own. Redis's delivery count
gives the attempt number; an entry past its topic's limit is dead-lettered
without running only when such a mark proves it guilty, so an event that
merely shared a batch with a poison event is never dead-lettered for its
neighbour's crashes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from titan_bus.handling import HandlerRunner
from titan_bus.intake import Intake
from titan_bus.keys import KeySpace
from titan_bus.lanes import Lane
from titan_bus.reader import Entry
from titan_bus.settle import Delivery, Settler
from titan_bus.topics import TopicRegistry

logger = logging.getLogger(__name__)

# KEYS[1] lane stream; ARGV[1] group; ARGV[2] own consumer; ARGV[3] idle ms.
_REMOVE_IDLE_LUA = """
local removed = {}
local ok, list = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return removed end
for _, c in ipairs(list) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['name'] ~= ARGV[2] and tonumber(f['pending']) == 0
     and tonumber(f['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    removed[#removed + 1] = f['name']
  end
end
return removed
"""


@dataclass(frozen=True)
class Claimed:
    """One entry taken over from another consumer.

    Attributes:
        lane: the lane it lives in.
        entry_id: its stream entry id.
        fields: its stored fields.
        deliveries: Redis's delivery count, this claim included.
        crashed_alone: a previous solo run of it never finished.
    """

    lane: Lane
    entry_id: str
    fields: dict[bytes, bytes]
    deliveries: int
    crashed_alone: bool


class Claimer:
    """Claims idle entries of a group, one at a time, for one consumer.

    Args:
        client: an asyncio Redis client.
        keys: the key space.
        group: the consumer group.
        consumer: the claiming consumer's name.
    """

    def __init__(
        self, client: aioredis.Redis, *, keys: KeySpace, group: str, consumer: str
    ) -> None:
        self._client = client
        self._keys = keys
        self._group = group
        self._consumer = consumer
        self._cursors: dict[str, str] = {}
        self._remove_idle = client.register_script(_REMOVE_IDLE_LUA)
        self.vanished = 0

    async def claim_one(self, lane: Lane, *, min_idle_ms: int) -> Claimed | None:
        """Claim the next entry of ``lane`` idle for at least ``min_idle_ms``.

        Entries deleted or trimmed while pending are dropped from the group by
        Redis during the claim; they are counted in :attr:`vanished`.
        """
        while True:
            cursor = self._cursors.get(lane.key, "0-0")
            reply = await self._client.xautoclaim(
                lane.key, self._group, self._consumer, min_idle_ms, cursor, count=1
            )
            next_cursor, entries = _text(reply[0]), reply[1]
            self._note_vanished(lane, reply[2] if len(reply) > 2 else [])
            self._cursors[lane.key] = next_cursor
            if entries:
                return await self._describe(lane, entries[0])
            if next_cursor == "0-0":
                return None

    async def _describe(self, lane: Lane, entry: Any) -> Claimed:
        entry_id = _text(entry[0])
        pipe = self._client.pipeline(transaction=False)
        pipe.xpending_range(lane.key, self._group, entry_id, entry_id, 1)
        pipe.hexists(self._keys.suspects(lane.topic), _suspect_field(lane, entry_id))
        pending, crashed = await pipe.execute()
        deliveries = int(pending[0]["times_delivered"]) if pending else 1

        return Claimed(lane, entry_id, entry[1] or {}, deliveries, bool(crashed))

    def _note_vanished(self, lane: Lane, deleted: list[Any]) -> None:
        if deleted:
            self.vanished += len(deleted)
            logger.warning(
                "%d pending entries of %s lane %s were deleted or trimmed before "
                "being handled; cleared from group %s",
                len(deleted),
                lane.topic,
                lane.name,
                self._group,
            )

    async def mark_suspect(self, lane: Lane, entry_id: str) -> None:
        """Record that ``entry_id`` is about to run alone."""
        await self._client.hset(
            self._keys.suspects(lane.topic),
            _suspect_field(lane, entry_id),
            self._consumer,
        )

    def clear_suspect(self, pipe: Any, lane: Lane, entry_id: str) -> None:
        """Queue on ``pipe`` the removal of a suspect mark."""
        pipe.hdel(self._keys.suspects(lane.topic), _suspect_field(lane, entry_id))

    async def remove_idle_consumers(self, lane: Lane, *, idle_ms: int) -> list[str]:
        """Delete consumers of ``lane`` that own nothing and were idle ``idle_ms``.

        Check and delete happen in one script, so a consumer that reads an
        entry in between cannot be deleted with it (which would drop the entry
        from the group).

        Returns:
            The names of the consumers removed.
        """
        removed = [
            _text(name)
            for name in await self._remove_idle(
                keys=[lane.key], args=[self._group, self._consumer, idle_ms]
            )
        ]
        if removed:
            logger.info(
                "removed %d idle consumers from %s lane %s group %s: %s",
                len(removed),
                lane.topic,
                lane.name,
                self._group,
                ", ".join(removed),
            )

        return removed


class Recovery:
    """Claims idle entries and runs each alone, settling it before the next.

    Args:
        claimer: claims entries for this consumer.
        intake: decodes claimed entries and drops what must not run.
        runner: runs handlers and settles outcomes.
        settler: flushed after each suspect, so it is settled before the next.
        registry: the bus's topics (retry limit, claim idle time).
        drain: waits until this processor has nothing else in flight.
    """

    def __init__(
        self,
        *,
        claimer: Claimer,
        intake: Intake,
        runner: HandlerRunner,
        settler: Settler,
        registry: TopicRegistry,
        drain: Callable[[], Awaitable[None]],
    ) -> None:
        self._claimer = claimer
        self._intake = intake
        self._runner = runner
        self._settler = settler
        self._registry = registry
        self._drain = drain

    async def run_round(
        self, lanes: Sequence[Lane], *, limit: int, stopping: Callable[[], bool]
    ) -> int:
        """Claim and run up to ``limit`` suspects; return how many were claimed."""
        claimed = 0
        for lane in lanes:
            idle_ms = int(self._registry.get(lane.topic).claim_idle_s * 1000)
            while claimed < limit and not stopping():
                suspect = await self._claimer.claim_one(lane, min_idle_ms=idle_ms)
                if suspect is None:
                    break
                if claimed == 0:
                    await self._drain()
                    await self._settler.flush()
                claimed += 1
                await self._run_suspect(suspect)

        return claimed

    async def _run_suspect(self, suspect: Claimed) -> None:
        lane, entry_id = suspect.lane, suspect.entry_id
        entry = Entry(lane, entry_id, suspect.fields)
        delivery = self._intake.delivery(entry, deliveries=suspect.deliveries)
        if delivery is not None and await self._intake.fresh([delivery]):
            await self._settle_suspect(suspect, delivery)

        async def clear(pipe: Any) -> None:
            self._claimer.clear_suspect(pipe, lane, entry_id)

        self._settler.then(clear)
        await self._settler.flush()

    async def _settle_suspect(self, suspect: Claimed, delivery: Delivery) -> None:
        topic = self._registry.get(suspect.lane.topic)
        last = topic.retry_limit + 1
        if delivery.event.attempt > last and suspect.crashed_alone:
            # This delivery does not run: the attempts made are those before it.
            made = delivery.event.with_attempt(delivery.event.attempt - 1)
            self._runner.crashed(
                replace(delivery, event=made),
                RuntimeError(
                    f"the processor handling it stopped during "
                    f"{suspect.deliveries - 1} deliveries, the last time with no "
                    "other event in flight"
                ),
            )
            return

        if delivery.event.attempt > last:
            capped = delivery.event.with_attempt(last)
            delivery = replace(delivery, event=capped)
        logger.warning(
            "claimed %s event %s from lane %s (delivery %d); running it alone",
            suspect.lane.topic,
            delivery.event.id,
            suspect.lane.name,
            suspect.deliveries,
        )
        await self._claimer.mark_suspect(suspect.lane, suspect.entry_id)
        await self._runner.run(delivery)


def _suspect_field(lane: Lane, entry_id: str) -> str:
    return f"{lane.name}/{entry_id}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
