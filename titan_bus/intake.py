"""Intake: turning stream entries into deliveries, or setting them aside.

An entry never reaches a handler when it was deleted while pending
(*vanished*: acknowledged and counted), is not a valid envelope (*malformed*:
moved to the dead letters with the reason), or its event was already handled
by this group within the idempotency window (*duplicate*: acknowledged and
counted).
"""

from __future__ import annotations

import logging

from titan_bus.codec import decode_entry
from titan_bus.deadletters import Failure
from titan_bus.dedup import HandledMarks
from titan_bus.errors import MalformedEntryError, ValidationError
from titan_bus.events import Event
from titan_bus.lanes import Lane
from titan_bus.observe import Observer
from titan_bus.reader import Entry
from titan_bus.settle import FIRST_FAILED_FIELD, Delivery, Settler
from titan_bus.topics import TopicRegistry

logger = logging.getLogger(__name__)


class Intake:
    """Decodes entries for one consumer and filters out what must not run.

    Args:
        settler: where set-aside entries are acknowledged or dead-lettered.
        marks: the group's handled marks, or None without idempotency.
        observer: told about every entry dropped.
        consumer: this consumer's name, recorded with dead letters.
        group: the consumer group, for messages.
        registry: the bus's topics, to check each payload against its schema.
    """

    def __init__(
        self,
        *,
        settler: Settler,
        marks: HandledMarks | None,
        observer: Observer,
        consumer: str,
        group: str,
        registry: TopicRegistry,
    ) -> None:
        self._registry = registry
        self._settler = settler
        self._marks = marks
        self._observer = observer
        self._consumer = consumer
        self._group = group
        self.duplicates = 0
        self.vanished = 0
        self.running: dict[str, tuple[str, str]] = {}
        """Task name to ``(topic, event id)`` of every event being handled now."""

    def delivery(self, entry: Entry, *, deliveries: int = 1) -> Delivery | None:
        """Decode an entry; set aside what cannot be handled and return None.

        Args:
            entry: the entry as read.
            deliveries: Redis's delivery count; each delivery past the first
                was cut short by a stopped processor and counts as an attempt.
        """
        lane = entry.lane
        # redis-py reads an entry deleted while pending as {} rather than
        # None; a live entry always has at least one field.
        if not entry.fields:
            self.vanished += 1
            logger.warning(
                "pending entry %s of %s lane %s was deleted before being handled",
                entry.entry_id,
                lane.topic,
                lane.name,
            )
            self._settler.drop(lane, [entry.entry_id])
            self._observer.on_dropped(lane.topic, lane.name, "vanished")
            return None
        try:
            event = self._check(lane, decode_entry(entry.fields))
        except MalformedEntryError as exc:
            logger.warning(
                "malformed entry %s in %s lane %s: %s; moved to dead letters",
                entry.entry_id,
                lane.topic,
                lane.name,
                exc,
            )
            failure = Failure(
                "MalformedEntryError", str(exc), deliveries, self._consumer
            )
            self._settler.set_aside(lane, entry.entry_id, entry.fields, failure)
            self._observer.on_dropped(lane.topic, lane.name, "malformed")
            return None
        if deliveries > 1:
            event = event.with_attempt(event.attempt + deliveries - 1)
        first = _int_or_none(entry.fields.get(FIRST_FAILED_FIELD))

        return Delivery(lane, entry.entry_id, entry.fields, event, first)

    def _check(self, lane: Lane, event: Event) -> Event:
        """Return ``event`` if it belongs where it was read and fits its schema.

        Entries can be written by anyone with access to the stream, not only
        through ``publish``; one that claims another topic, names no lane of
        its topic, or carries a payload its topic's schema rejects is set aside
        rather than handed to handlers that trust the schema.

        Raises:
            MalformedEntryError: it does not; the message says how.
        """
        if event.topic != lane.topic:
            raise MalformedEntryError(
                f"envelope names topic {event.topic!r} but was read from {lane.topic}"
            )
        topic = self._registry.get(lane.topic)
        if event.priority not in topic.lanes:
            raise MalformedEntryError(f"envelope names unknown lane {event.priority!r}")
        try:
            topic.validate(event.data)
        except ValidationError as exc:
            raise MalformedEntryError(str(exc)) from exc

        return event

    async def fresh(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Return the deliveries whose events this group has not handled yet.

        A copy of an event already running here (:attr:`running`), handled
        here but not yet marked in Redis, or read earlier in the same batch is
        a duplicate too: the first copy carries the event on (acked, retried,
        or claimed if this process dies).
        """
        if not deliveries:
            return deliveries

        events = [d.event for d in deliveries]
        seen = (
            await self._marks.handled(events)
            if self._marks is not None
            else [False] * len(events)
        )
        fresh = []
        taken = set(self.running.values()) | self._settler.handled_unwritten()
        for delivery, handled in zip(deliveries, seen, strict=True):
            name = (delivery.event.topic, delivery.event.id)
            if not handled and name not in taken:
                taken.add(name)
                fresh.append(delivery)
                continue
            lane = delivery.lane
            self.duplicates += 1
            logger.info(
                "%s event %s already handled or read twice by group %s; "
                "dropping the duplicate",
                lane.topic,
                delivery.event.id,
                self._group,
            )
            self._settler.drop(lane, [delivery.entry_id])
            self._observer.on_dropped(lane.topic, lane.name, "duplicate")

        return fresh


def _int_or_none(raw: bytes | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None
