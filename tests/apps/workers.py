"""A bus application for tests that run processors as real subprocesses.

Loaded by ``titan-bus run --app workers:app --app-dir tests/apps`` or by
``tests/apps/run_processor.py``; either way :func:`app` builds the bus with
:meth:`EventBus.from_config`, so it follows the test's config file.

It handles ``system.v1`` events, and what a handler does is chosen by the
event itself, so one app serves every crash test:

- ``name == "work"``: sleep ``details["sleep_s"]`` seconds (0 if absent),
  then record the event as handled;
- ``name == "poison"``: sleep ``details["sleep_s"]`` seconds, then end the
  process at once with ``os._exit(1)``, as a crashing native library would.

Every step is recorded in Redis, under ``<key_prefix>:test:`` (outside every
topic's keys), so the test can count deliveries across processes that die:
see :class:`Records`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from titan_bus import Event, EventBus


@dataclass(frozen=True)
class Records:
    """Names of the Redis keys where handlers record what they did.

    Attributes:
        started: set of event ids whose handler started (any process).
        handled: set of event ids whose handler finished.
        runs: hash of event id to how many times its handler started.
        finishes: hash of event id to how many times its handler finished.
    """

    prefix: str

    @property
    def started(self) -> str:
        return f"{self.prefix}:test:started"

    @property
    def handled(self) -> str:
        return f"{self.prefix}:test:handled"

    @property
    def runs(self) -> str:
        return f"{self.prefix}:test:runs"

    @property
    def finishes(self) -> str:
        return f"{self.prefix}:test:finishes"

    def started_by(self, pid: int) -> str:
        """Set of event ids whose handler started in process ``pid``."""
        return f"{self.prefix}:test:started:{pid}"

    def handled_by(self, pid: int) -> str:
        """Set of event ids whose handler finished in process ``pid``."""
        return f"{self.prefix}:test:handled:{pid}"


def app() -> EventBus:
    """Build the bus from ``$TITAN_CONFIG`` and subscribe the recording handler."""
    bus = EventBus.from_config()
    records = Records(bus.config.key_prefix)
    pid = os.getpid()

    @bus.subscribe("system.v1")
    async def on_system(event: Event) -> None:
        pipe = bus.client.pipeline(transaction=False)
        pipe.sadd(records.started, event.id)
        pipe.sadd(records.started_by(pid), event.id)
        pipe.hincrby(records.runs, event.id, 1)
        await pipe.execute()

        await asyncio.sleep(float(event.data["details"].get("sleep_s", 0)))
        if event.data["name"] == "poison":
            os._exit(1)

        pipe = bus.client.pipeline(transaction=False)
        pipe.sadd(records.handled, event.id)
        pipe.sadd(records.handled_by(pid), event.id)
        pipe.hincrby(records.finishes, event.id, 1)
        await pipe.execute()

    return bus
