"""Throughput of Titan Event Bus against the raw redis-py floor, in one run.

Starts a private redis-server (no persistence) on a free loopback port and
measures, on the same server and in the same process:

- publish, one event per call: raw ``XADD`` vs ``EventBus.publish``;
- publish, 100 events per round trip: raw pipelined ``XADD`` vs ``publish_many``;
- consume: raw ``XREADGROUP`` + pipelined ``XACK`` loop vs a processor running a
  no-op handler (decode, idempotency check, ack, handled mark included).

Ratios are what matter (machines here are noisy); run it with::

    .venv/bin/python bench/bench_throughput.py --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from rich.console import Console
from rich.table import Table

from titan_bus import Event, EventBus
from titan_bus.codec import encode_entry
from titan_bus.config import parse_config
from titan_bus.embedded import find_redis_server, free_port

PAYLOAD = {"conversation_id": "bench", "role": "user", "text": "x" * 200}
BATCH = 100


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="titan-bench-")
    proc = subprocess.Popen(
        [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return proc, f"redis://127.0.0.1:{port}/0"


async def wait_ready(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    for _ in range(100):
        try:
            await client.ping()
            break
        except Exception:
            await asyncio.sleep(0.05)
    await client.aclose()


async def timed(n: int, work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return n / (time.perf_counter() - started)


async def bench_publish(url: str, n: int) -> dict[str, float]:
    raw = aioredis.Redis.from_url(url)
    bus = EventBus(parse_config({"redis": {"url": url}, "key_prefix": "bp"}))
    fields = encode_entry(bus.event("chat.v1", PAYLOAD))
    key = "raw:single"
    single_n = max(100, n // 10)

    async def raw_single() -> None:
        for _ in range(single_n):
            await raw.xadd(key, fields)

    async def bus_single() -> None:
        for _ in range(single_n):
            await bus.publish("chat.v1", PAYLOAD)

    async def raw_batch() -> None:
        for _ in range(n // BATCH):
            pipe = raw.pipeline(transaction=False)
            for _ in range(BATCH):
                pipe.xadd("raw:batch", fields)
            await pipe.execute()

    async def bus_batch() -> None:
        for _ in range(n // BATCH):
            await bus.publish_many([("chat.v1", PAYLOAD)] * BATCH)

    out = {
        "publish single, raw": await timed(single_n, raw_single),
        "publish single, bus": await timed(single_n, bus_single),
        "publish x100, raw": await timed(n, raw_batch),
        "publish x100, bus": await timed(n, bus_batch),
    }
    await raw.aclose()
    await bus.aclose()

    return out


async def bench_consume(url: str, n: int) -> dict[str, float]:
    raw = aioredis.Redis.from_url(url)
    bus = EventBus(
        parse_config(
            {"redis": {"url": url}, "key_prefix": "bc",
             "processor": {"concurrency": BATCH, "block_ms": 50}}
        )  # fmt: skip
    )
    fields = encode_entry(bus.event("chat.v1", PAYLOAD))
    for _ in range(n // BATCH):
        pipe = raw.pipeline(transaction=False)
        for _ in range(BATCH):
            pipe.xadd("raw:consume", fields)
        await pipe.execute()
    await raw.xgroup_create("raw:consume", "g", id="0")

    async def raw_consume() -> None:
        done = 0
        while done < n:
            reply = await raw.xreadgroup("g", "c", {"raw:consume": ">"}, count=BATCH)
            ids = [entry_id for _, items in reply for entry_id, _ in items]
            await raw.xack("raw:consume", "g", *ids)
            done += len(ids)

    for _ in range(n // BATCH):
        await bus.publish_many([("chat.v1", PAYLOAD)] * BATCH)
    handled = 0
    finished = asyncio.Event()

    @bus.subscribe("chat.v1")
    async def noop(event: Event) -> None:
        nonlocal handled
        handled += 1
        if handled >= n:
            finished.set()

    async def bus_consume() -> None:
        runner = asyncio.create_task(bus.run())
        await finished.wait()
        bus.stop()
        await runner

    out = {
        "consume, raw": await timed(n, raw_consume),
        "consume, bus": await timed(n, bus_consume),
    }
    await raw.aclose()
    await bus.aclose()

    return out


def report(results: dict[str, float], n: int) -> None:
    table = Table(title=f"Titan Event Bus vs raw redis-py ({n} events, 200-byte text)")
    table.add_column("operation")
    table.add_column("raw redis-py (events/s)", justify="right")
    table.add_column("bus (events/s)", justify="right")
    table.add_column("bus / raw", justify="right")
    for op in ("publish single", "publish x100", "consume"):
        raw, bus = results[f"{op}, raw"], results[f"{op}, bus"]
        table.add_row(op, f"{raw:,.0f}", f"{bus:,.0f}", f"{bus / raw:.2f}")
    Console().print(table)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Console().print(f"peak RSS of the benchmark process: {rss_mib:.0f} MiB")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()

    proc, url = start_server()
    try:
        await wait_ready(url)
        results = await bench_publish(url, args.events)
        results |= await bench_consume(url, args.events)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results, args.events)


if __name__ == "__main__":
    asyncio.run(main())
