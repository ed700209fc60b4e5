"""A processor for the flow-control tests that records each handler start.

Usage::

    python tests/apps/flow_processor.py --config FILE --consumer NAME \
        [--topic TOPIC ...] [--sleep-s SECONDS]

It builds the bus from ``FILE``, subscribes one handler to each ``TOPIC``
(``system.v1`` if none) and runs the processor until SIGTERM or SIGINT. Once
the processor reads, the consumer name is added to ``<prefix>:flow:ready``.

Each handler start is recorded by one Lua script, with the time read from
Redis itself (never the local clock), under ``<prefix>:flow:`` (outside every
topic's keys; see ``tests/flow_helpers.py``):

- ``log``: list of ``"<event id> <topic> <lane> <redis time us> <consumer>"``;
- ``counts``: hash of event id to handler starts;
- ``running:<consumer>`` and ``peak:<consumer>``: handlers running now in this
  processor and the most seen at once.

The handler then sleeps ``--sleep-s`` and marks itself finished.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any

from titan_bus import Event, EventBus

# KEYS log, counts, running, peak; ARGV id, topic, lane, consumer.
_START_LUA = """
local t = redis.call('TIME')
local us = t[1] .. string.format('%06d', tonumber(t[2]))
local line = table.concat({ARGV[1], ARGV[2], ARGV[3], us, ARGV[4]}, ' ')
redis.call('RPUSH', KEYS[1], line)
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local now = redis.call('INCR', KEYS[3])
if now > tonumber(redis.call('GET', KEYS[4]) or '0') then
  redis.call('SET', KEYS[4], now)
end
return us
"""


def main() -> int:
    """Parse the arguments, build the bus and run it; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--topic", action="append", default=[])
    parser.add_argument("--sleep-s", type=float, default=0.0)
    args = parser.parse_args()

    os.environ["TITAN_CONFIG"] = args.config
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    bus = EventBus.from_config()
    topics = args.topic or ["system.v1"]
    subscribe(bus, topics, consumer=args.consumer, sleep_s=args.sleep_s)

    return asyncio.run(serve(bus, consumer=args.consumer))


def subscribe(
    bus: EventBus, topics: list[str], *, consumer: str, sleep_s: float
) -> None:
    """Subscribe the recording handler to every topic in ``topics``."""
    prefix = f"{bus.config.key_prefix}:flow"
    start = bus.client.register_script(_START_LUA)
    keys: list[Any] = [
        f"{prefix}:log",
        f"{prefix}:counts",
        f"{prefix}:running:{consumer}",
        f"{prefix}:peak:{consumer}",
    ]

    async def record(event: Event) -> None:
        args = [event.id, event.topic, event.priority, consumer]
        await start(keys=keys, args=args)
        try:
            await asyncio.sleep(sleep_s)
        finally:
            await bus.client.decr(keys[2])

    for topic in topics:
        bus.subscribe(topic)(record)


async def serve(bus: EventBus, *, consumer: str) -> int:
    """Run the processor until a signal; return the exit status."""
    processor = bus.make_processor(consumer=consumer)
    bus.processor = processor
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, processor.stop)

    async with bus:
        # Loaded first, so that no handler waits for an extra round trip.
        await bus.client.script_load(_START_LUA)
        task = asyncio.create_task(processor.run())
        while not processor.ready and not task.done():
            await asyncio.sleep(0.01)
        if processor.ready:
            await bus.client.sadd(f"{bus.config.key_prefix}:flow:ready", consumer)
        await task

    return 0


if __name__ == "__main__":
    sys.exit(main())
