"""Watch a directory and publish each change as an ``fs.v1`` event.

Usage::

    python examples/file_watcher.py [DIRECTORY] [--config PATH] [--priority LANE]

DIRECTORY defaults to ``./watched`` and is created if missing. Changes inside
it, subdirectories included, become ``fs.v1`` events with ``change``
(``created``, ``modified`` or ``deleted``), the absolute ``path`` and, for a
file that still exists, its ``size`` in bytes; the envelope's ``time`` says
when the change was seen. A rename shows up as ``deleted`` plus ``created``
(the watcher does not pair them into ``moved``). Editor swap files and the
like are ignored. Runs until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from watchfiles import Change, awatch

from titan_bus import EventBus, TitanBusError

logger = logging.getLogger(__name__)

SOURCE = "titan.fs-watcher"
TOPIC = "fs.v1"
_CHANGE_NAMES = {
    Change.added: "created",
    Change.modified: "modified",
    Change.deleted: "deleted",
}


def payloads(changes: Iterable[tuple[Change, str]]) -> list[dict[str, Any]]:
    """Turn one batch of watchfiles changes into ``fs.v1`` payloads.

    A batch is a set, so order is rebuilt per path: for a path that exists now
    the last change cannot have been its deletion, so ``deleted`` goes first;
    for a path that is gone, ``deleted`` goes last.
    """
    by_path: dict[str, set[Change]] = {}
    for change, path in changes:
        by_path.setdefault(path, set()).add(change)

    result = []
    for path in sorted(by_path):
        exists = os.path.lexists(path)
        order = [Change.deleted, Change.added, Change.modified]
        if not exists:
            order = [Change.added, Change.modified, Change.deleted]
        for change in order:
            if change in by_path[path]:
                result.append(_payload(change, path))

    return result


def _payload(change: Change, path: str) -> dict[str, Any]:
    data: dict[str, Any] = {"change": _CHANGE_NAMES[change], "path": path}
    if change is not Change.deleted:
        try:
            stat = os.stat(path)
        except OSError:
            return data
        if not os.path.isdir(path):
            data["size"] = stat.st_size

    return data


async def watch(
    bus: EventBus, directory: Path, stop: asyncio.Event, *, priority: str = "low"
) -> int:
    """Publish the changes under ``directory`` until ``stop`` is set.

    Args:
        bus: a connected bus.
        directory: the folder to watch, subfolders included.
        stop: set it to end the watch.
        priority: the lane the events travel in.

    Returns:
        the number of events published.
    """
    published = 0
    logger.info("watching %s for changes (topic %s)", directory, TOPIC)
    async for changes in awatch(directory, stop_event=stop, recursive=True):
        batch = [
            bus.event(TOPIC, data, priority=priority, subject=data["path"])
            for data in payloads(changes)
        ]
        ids = await bus.publish_many(batch)
        for event, event_id in zip(batch, ids, strict=True):
            logger.info(
                "published %s event %s: %s %s (size %s)",
                TOPIC,
                event_id,
                event.data["change"],
                event.data["path"],
                event.data.get("size", "-"),
            )
        published += len(ids)

    return published


async def run(directory: Path, *, config: Path | None, priority: str) -> int:
    """Connect to the bus and watch ``directory`` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async with EventBus.from_config(config, source=SOURCE) as bus:
        bus.topics.get(TOPIC).lane_for(priority)
        count = await watch(bus, directory, stop, priority=priority)
    logger.info("file watcher stopped after %d events", count)

    return count


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default="./watched", type=Path)
    parser.add_argument("--config", type=Path, help="bus config file (YAML)")
    parser.add_argument(
        "--priority", default="low", help="lane for fs.v1 events (default: low)"
    )

    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the watcher; return the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s fs-watcher %(levelname)s %(message)s",
    )
    # watchfiles logs "N changes detected" at INFO; each publish is logged instead.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    directory = args.directory.expanduser().resolve()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(directory, config=args.config, priority=args.priority))
    except TitanBusError as exc:
        print(f"file_watcher: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"file_watcher: {directory}: {exc.strerror}", file=sys.stderr)
        return 1

    return 0


if __name__ == "__main__":
    sys.exit(main())
