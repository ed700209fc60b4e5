"""A publisher for the quota tests: publishes as fast as its quota allows.

Usage::

    python tests/apps/flow_publisher.py --config FILE --source NAME \
        --duration-s SECONDS [--topic TOPIC] [--tag TAG]

It prints one JSON line ``{"clock": <time.time()>}`` at once, so the test can
see which clock the process runs on (e.g. under ``faketime``), then waits
(30 s at most) until the key ``<prefix>:flow:go`` exists, so that several
publishers start together. Then it publishes events with ``source`` NAME and
``on_quota="wait"`` for ``--duration-s`` seconds and prints a last JSON line
``{"published": <count>, "clock": <time.time()>}``. Each payload is
``{"name": "quota.test", "details": {"n": <count so far>, "tag": TAG}}``, so
the test can tell the events of each publisher apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from titan_bus import EventBus, load_config

GO_TIMEOUT_S = 30.0


def main() -> int:
    """Parse the arguments and publish; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--topic", default="system.v1")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    print(json.dumps({"clock": time.time()}), flush=True)
    bus = EventBus(load_config(args.config), source=args.source)

    return asyncio.run(publish(bus, args.topic, args.duration_s, args.tag))


async def publish(bus: EventBus, topic: str, duration_s: float, tag: str) -> int:
    """Wait for the go key, publish for ``duration_s`` seconds, print the count."""
    go = f"{bus.config.key_prefix}:flow:go"
    async with bus:
        deadline = time.monotonic() + GO_TIMEOUT_S
        while not await bus.client.exists(go):
            if time.monotonic() > deadline:
                print("no go signal within 30 s", file=sys.stderr)
                return 1
            await asyncio.sleep(0.005)

        published = 0
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            data = {"name": "quota.test", "details": {"n": published, "tag": tag}}
            await bus.publish(topic, data, on_quota="wait")
            published += 1

    print(json.dumps({"published": published, "clock": time.time()}), flush=True)

    return 0


if __name__ == "__main__":
    sys.exit(main())
