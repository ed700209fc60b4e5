"""Run a test bus application as a processor, without the ``titan-bus`` CLI.

Usage::

    python tests/apps/run_processor.py --config FILE --app MODULE:FACTORY \
        [--consumer NAME]

``FACTORY`` is a function of ``MODULE`` (imported from this folder) that
returns an :class:`~titan_bus.EventBus`. The first SIGTERM or SIGINT asks the
processor to stop (in-flight handlers get ``shutdown_grace_s``) and the
script exits 0; a second one ends it at once with status 128 + signal.

The tests use it when ``TITAN_TEST_PROCESSOR=script`` is set, to tell a fault
of the processor apart from one of the CLI around it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys

from titan_bus import EventBus


def main() -> int:
    """Parse the arguments, build the bus and run it; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--app", required=True, help="MODULE:FACTORY")
    parser.add_argument("--consumer", default=None)
    args = parser.parse_args()

    os.environ["TITAN_CONFIG"] = args.config
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    module_name, _, factory = args.app.partition(":")
    bus = getattr(importlib.import_module(module_name), factory)()

    return asyncio.run(serve(bus, consumer=args.consumer))


async def serve(bus: EventBus, *, consumer: str | None) -> int:
    """Run ``bus``'s processor until a signal; return the exit status."""
    processor = bus.make_processor(consumer=consumer)
    bus.processor = processor
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) > 1:
            os._exit(128 + signum)
        processor.stop()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    async with bus:
        await processor.run()

    return 0


if __name__ == "__main__":
    sys.exit(main())
