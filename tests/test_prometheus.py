"""A real Prometheus server scrapes a running processor and finds its metrics.

The test starts Debian's ``prometheus`` on a free loopback port with a config
that scrapes the processor's ``/metrics`` every second, lets the processor
handle events, then asks Prometheus's HTTP API for the handled count and the
latency histogram. Without ``prometheus`` installed it fails in CI and is
skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from telemetry_helpers import aget, free_port, require_tool, running, wait_until

from titan_bus import Event, EventBus
from titan_bus.telemetry import Telemetry

pytestmark = pytest.mark.timeout(120)

EVENTS = 12


@contextlib.contextmanager
def prometheus_server(tmp_path: Path, target: str) -> Iterator[str]:
    """Run Prometheus scraping ``target`` (host:port) every second; yield its URL."""
    binary = require_tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: titan-bus\n"
        f"    static_configs:\n      - targets: ['{target}']\n",
        encoding="utf-8",
    )
    log = (tmp_path / "prometheus.log").open("w", encoding="utf-8")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        log.close()


async def query(base: str, promql: str) -> list[dict[str, Any]]:
    """Return the result vector of an instant query (empty while not yet known)."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        code, body = await aget(url)
    except OSError:
        return []  # still starting
    if code != 200:
        return []
    reply = json.loads(body)
    assert reply["status"] == "success", reply
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


async def scalar(base: str, promql: str) -> float | None:
    result = await query(base, promql)
    return float(result[0]["value"][1]) if result else None


@contextlib.asynccontextmanager
async def observed_processor(make_config: Any) -> AsyncIterator[tuple[EventBus, str]]:
    config = make_config(metrics={"port": 0})
    telemetry = Telemetry.from_config(config, set_global=False)
    telemetry.gauge_interval_s = 0.5
    bus = EventBus(config, observer=telemetry)

    @bus.subscribe("chat.v1")
    async def handler(event: Event) -> None:
        await asyncio.sleep(0.005)

    async with bus:
        await telemetry.start(bus)
        assert telemetry.server is not None
        try:
            async with running(bus):
                yield bus, f"127.0.0.1:{telemetry.server.port}"
        finally:
            await telemetry.aclose()


async def test_prometheus_scrapes_handled_count_and_latency_histogram(
    make_config: Any, tmp_path: Path
) -> None:
    async with observed_processor(make_config) as (bus, target):
        with prometheus_server(tmp_path, target) as prometheus:
            await wait_until(
                lambda: _up(prometheus), timeout_s=30, what="Prometheus scraping"
            )
            await bus.publish_many(
                [
                    (
                        "chat.v1",
                        {"conversation_id": "c", "role": "user", "text": str(i)},
                    )
                    for i in range(EVENTS)
                ]
            )
            handled = (
                'sum(titan_bus_events_handled_total{topic="chat.v1",outcome="handled"})'
            )

            async def all_handled_seen() -> bool:
                return await scalar(prometheus, handled) == EVENTS

            await wait_until(all_handled_seen, timeout_s=30, what="handled count")

            latency = "titan_bus_end_to_end_latency_seconds"
            count = await scalar(prometheus, f'sum({latency}_count{{topic="chat.v1"}})')
            buckets = await query(prometheus, f'{latency}_bucket{{topic="chat.v1"}}')
            p99 = await scalar(
                prometheus,
                f"histogram_quantile(0.99, sum by (le) ({latency}_bucket))",
            )
            lengths = await query(prometheus, "titan_bus_stream_length")

    assert count == EVENTS
    bounds = {b["metric"]["le"]: float(b["value"][1]) for b in buckets}
    assert bounds["+Inf"] == EVENTS
    assert "0.005" in bounds and bounds["900.0"] == EVENTS
    assert p99 is not None and 0 < p99 <= 900
    lanes = {(s["metric"]["topic"], s["metric"]["lane"]) for s in lengths}
    assert ("chat.v1", "normal") in lanes


async def _up(prometheus: str) -> bool:
    return await scalar(prometheus, 'up{job="titan-bus"}') == 1.0
