"""Small helpers shared by the test modules: bounded waits, a running processor.

Nothing here fakes Redis or the bus; these only wait for, start and observe the
real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis

from titan_bus import EventBus
from titan_bus.processor import Processor

Predicate = Callable[[], bool | Awaitable[bool]]


async def wait_until(
    predicate: Predicate, timeout_s: float = 5.0, *, what: str = "condition"
) -> None:
    """Poll ``predicate`` (sync or async) until it is true.

    Raises:
        AssertionError: it was still false after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(
    bus: EventBus, *, consumer: str | None = None, stop_timeout_s: float = 10.0
) -> AsyncIterator[Processor]:
    """Run ``bus``'s processor in a task; stop it and wait for it on exit.

    Yields once the processor has created its groups and is reading. An error
    that ends the processor early is raised here instead of a timeout, and a
    processor that does not return after ``stop()`` fails the test.
    """
    task = asyncio.create_task(bus.run(consumer=consumer))

    def is_ready() -> bool:
        if task.done():
            task.result()
            raise AssertionError("processor returned before it was ready")
        return bus.processor is not None and bus.processor.ready

    await wait_until(is_ready, what="processor ready")
    assert bus.processor is not None
    try:
        yield bus.processor
    finally:
        await stop_and_wait(bus, task, timeout_s=stop_timeout_s)


async def stop_and_wait(
    bus: EventBus, task: asyncio.Task[None], *, timeout_s: float = 10.0
) -> None:
    """Call ``bus.stop()`` and wait for the run task; raise what it raised.

    Raises:
        AssertionError: the task had not returned ``timeout_s`` seconds later
            (it is then cancelled, so the test does not leak it).
    """
    bus.stop()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        raise AssertionError(f"run() did not return within {timeout_s} s of stop()")

    task.result()


class ConcurrencyProbe:
    """Counts handlers running right now and the most seen at once."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.finished = 0

    @contextlib.asynccontextmanager
    async def inside(self) -> AsyncIterator[None]:
        """Mark the body as one running handler."""
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            yield
        finally:
            self.current -= 1
            self.finished += 1


def chat(text: str = "hello", conversation_id: str = "c1") -> dict[str, Any]:
    """Return a valid ``chat.v1`` payload."""
    return {"conversation_id": conversation_id, "role": "user", "text": text}


def keys_under(client: redis.Redis, prefix: str) -> list[bytes]:
    """Return every key whose name starts with ``prefix:``."""
    return sorted(client.scan_iter(match=f"{prefix}:*"))


async def pending_count(bus: EventBus, key: str) -> int:
    """Return the number of entries pending in the bus's group on ``key``."""
    summary = await bus.client.xpending(key, bus.config.processor.group)
    return int(summary["pending"])


def closed_port() -> int:
    """Return a loopback TCP port that nothing listens on (bound, then freed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]

    return port


def pending_is(
    bus: EventBus, key: str, expected: int = 0
) -> Callable[[], Awaitable[bool]]:
    """Return a predicate: ``expected`` entries are pending on ``key``."""

    async def check() -> bool:
        return await pending_count(bus, key) == expected

    return check


def stream_length_is(
    bus: EventBus, key: str, *, at_least: int = 1, at_most: int | None = None
) -> Callable[[], Awaitable[bool]]:
    """Return a predicate: stream ``key`` holds between the given entry counts."""

    async def check() -> bool:
        length = int(await bus.client.xlen(key))
        return length >= at_least and (at_most is None or length <= at_most)

    return check
