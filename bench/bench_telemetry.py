"""What telemetry costs: events/s with none, metrics only, and metrics plus tracing.

Starts a private redis-server (no persistence) on a free loopback port. For
each mode it publishes ``--events`` events in batches of 100, then runs a
processor with a no-op handler until all are handled, and reports both rates.
Modes, each on its own key prefix:

- ``none``: no observer (the bus's no-op base class);
- ``metrics``: :class:`~titan_bus.telemetry.Telemetry` with Prometheus metrics;
- ``metrics+tracing``: the same plus spans, exported synchronously to an
  in-memory exporter (the SDK's ``SimpleSpanProcessor``), so the cost of
  making, propagating and ending every producer and consumer span is counted.

The modes run ``--rounds`` times in rotating order; the median is shown. A
last line gives the CPU time the observer itself spends per event, measured
without Redis, which other load on the machine hardly moves. Machines here
are noisy: compare the ratios, not the absolute numbers::

    .venv/bin/python bench/bench_telemetry.py --events 5000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time

import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from rich.console import Console
from rich.table import Table

from titan_bus import Event, EventBus
from titan_bus.config import parse_config
from titan_bus.embedded import find_redis_server, free_port
from titan_bus.observe import Observer
from titan_bus.telemetry import BusMetrics, Telemetry

PAYLOAD = {"conversation_id": "bench", "role": "user", "text": "x" * 200}
BATCH = 100
MODES = ("none", "metrics", "metrics+tracing")


def observer_for(mode: str) -> tuple[Observer | None, InMemorySpanExporter | None]:
    if mode == "none":
        return None, None
    if mode == "metrics":
        return Telemetry(metrics=BusMetrics()), None

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    return Telemetry(metrics=BusMetrics(), tracer_provider=provider), exporter


async def one_round(url: str, mode: str, n: int, prefix: str) -> tuple[float, float]:
    """Return (published/s, handled/s) of ``n`` events with telemetry ``mode``."""
    observer, exporter = observer_for(mode)
    config = parse_config(
        {
            "redis": {"url": url},
            "key_prefix": prefix,
            "processor": {"concurrency": BATCH, "block_ms": 50},
        }
    )
    bus = EventBus(config, observer=observer)
    handled = 0
    finished = asyncio.Event()

    @bus.subscribe("chat.v1")
    async def noop(event: Event) -> None:
        nonlocal handled
        handled += 1
        if handled >= n:
            finished.set()

    started = time.perf_counter()
    for _ in range(n // BATCH):
        await bus.publish_many([("chat.v1", PAYLOAD)] * BATCH)
    published_s = time.perf_counter() - started

    started = time.perf_counter()
    runner = asyncio.create_task(bus.run())
    await finished.wait()
    handled_s = time.perf_counter() - started
    bus.stop()
    await runner
    await bus.aclose()
    if exporter is not None:
        assert len(exporter.get_finished_spans()) >= 2 * n, "spans went missing"

    return n / published_s, n / handled_s


def observer_cost_us(mode: str, n: int) -> float:
    """Return the CPU time, in microseconds, the observer spends on one event.

    Every hook one event passes through, publish to handled, without Redis:
    a figure that background load on the machine hardly moves.
    """
    observer, _ = observer_for(mode)
    observer = observer or Observer()
    template = Event(source="bench", type="t", data=PAYLOAD, topic="chat.v1")
    started = time.process_time()
    for _ in range(n):
        headers: dict[str, str] = {}
        observer.on_create("chat.v1", headers)
        event = template.model_copy(update={"headers": headers})
        observer.on_published([event], 0.001)
        with observer.handle_scope(event, "normal"):
            pass
        observer.on_outcome(event, "normal", "handled", 0.001)

    return (time.process_time() - started) / n * 1e6


async def run(url: str, n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    for number in range(rounds):
        order = MODES[number % 3 :] + MODES[: number % 3]
        for mode in order:
            prefix = f"bt{number}{MODES.index(mode)}"
            results[mode].append(await one_round(url, mode, n, prefix))

    return results


def report(results: dict[str, list[tuple[float, float]]], n: int) -> None:
    table = Table(title=f"Telemetry overhead ({n} events, batches of {BATCH})")
    table.add_column("telemetry")
    table.add_column("published/s", justify="right")
    table.add_column("vs none", justify="right")
    table.add_column("handled/s", justify="right")
    table.add_column("vs none", justify="right")
    base_pub = statistics.median(p for p, _ in results["none"])
    base_handled = statistics.median(h for _, h in results["none"])
    for mode in MODES:
        pub = statistics.median(p for p, _ in results[mode])
        handled = statistics.median(h for _, h in results[mode])
        table.add_row(
            mode,
            f"{pub:,.0f}",
            f"{pub / base_pub:.2f}",
            f"{handled:,.0f}",
            f"{handled / base_handled:.2f}",
        )
    Console().print(table)
    costs = ", ".join(f"{m}: {observer_cost_us(m, n):.1f} us" for m in MODES)
    Console().print(f"observer CPU time per event (all hooks, no Redis): {costs}")


async def wait_ready(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                await client.ping()
                return
            except Exception:
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", tempfile.mkdtemp()],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await wait_ready(url)
        results = await run(url, args.events, args.rounds)
    finally:
        server.terminate()
        server.wait(timeout=10)
    report(results, args.events)


if __name__ == "__main__":
    asyncio.run(main())
