"""Publish a ``system.v1`` ``goal.tick`` event on a fixed interval.

Usage::

    python examples/goal_scheduler.py [--interval SECONDS] [--count N] [--config PATH]

Each tick is ``{"name": "goal.tick", "details": {"seq": N, "interval_s": S}}``
from source ``titan.goal-scheduler``; modules that review their goals
subscribe to ``system.v1`` and act on it. Uses the blocking
:class:`~titan_bus.SyncPublisher`, so it needs no asyncio. Runs until SIGINT
or SIGTERM, or until ``--count`` ticks were sent.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from titan_bus import SyncPublisher, TitanBusError

logger = logging.getLogger(__name__)

SOURCE = "titan.goal-scheduler"


def tick_forever(
    publisher: SyncPublisher,
    *,
    interval_s: float,
    count: int = 0,
    stop: threading.Event | None = None,
) -> int:
    """Publish one tick now and one every ``interval_s`` seconds.

    Args:
        publisher: an open publisher.
        interval_s: seconds between ticks.
        count: stop after this many ticks; 0 means never.
        stop: set it to stop between two ticks.

    Returns:
        the number of ticks published.
    """
    stop = stop or threading.Event()
    seq = 0
    while not stop.is_set() and (count == 0 or seq < count):
        seq += 1
        details = {"seq": seq, "interval_s": interval_s}
        event_id = publisher.publish(
            "system.v1", {"name": "goal.tick", "details": details}
        )
        logger.info("published system.v1 event %s: goal.tick #%d", event_id, seq)
        if count == 0 or seq < count:
            stop.wait(interval_s)

    return seq


def main(argv: list[str] | None = None) -> int:
    """Run the scheduler; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=60.0, help="seconds")
    parser.add_argument("--count", type=int, default=0, help="0: until stopped")
    parser.add_argument("--config", type=Path, help="bus config file (YAML)")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.count < 0:
        parser.error("--interval must be above 0 and --count 0 or more")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s goal-scheduler %(levelname)s %(message)s",
    )

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        with SyncPublisher.from_config(args.config, source=SOURCE) as publisher:
            sent = tick_forever(
                publisher, interval_s=args.interval, count=args.count, stop=stop
            )
    except TitanBusError as exc:
        print(f"goal_scheduler: {exc}", file=sys.stderr)
        return 1
    logger.info("goal scheduler stopped after %d ticks", sent)

    return 0


if __name__ == "__main__":
    sys.exit(main())
