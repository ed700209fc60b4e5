"""The HTTP endpoint: /healthz and /readyz across a processor's life, /metrics."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.error
from typing import Any

import pytest
from telemetry_helpers import aget, free_port, http_get, running, wait_until

from titan_bus import Event, EventBus
from titan_bus.errors import ConfigError
from titan_bus.telemetry import HealthServer, Telemetry

pytestmark = pytest.mark.timeout(60)


async def test_probes_follow_start_ready_stop(
    make_config: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="titan_bus.telemetry")
    config = make_config(metrics={"port": 0})
    telemetry = Telemetry.from_config(config, set_global=False)
    bus = EventBus(config, observer=telemetry)
    release = asyncio.Event()
    started = asyncio.Event()

    @bus.subscribe("system.v1")
    async def slow(event: Event) -> None:
        started.set()
        await release.wait()

    await telemetry.start(bus)
    assert telemetry.server is not None
    url = telemetry.server.url
    assert telemetry.server.port != 0
    assert f"{url}/metrics" in caplog.text

    assert await aget(f"{url}/healthz") == (200, "alive\n")
    assert await aget(f"{url}/readyz") == (503, "not ready: processor not started\n")

    task = asyncio.create_task(bus.run())
    await wait_until(
        lambda: http_get(f"{url}/readyz")[0] == 200, what="readyz answering 200"
    )
    await bus.publish("system.v1", {"name": "hold"})
    await asyncio.wait_for(started.wait(), timeout=10)

    bus.stop()
    code, body = await aget(f"{url}/readyz")
    assert (code, body) == (503, "not ready: processor is shutting down\n")
    assert (await aget(f"{url}/healthz"))[0] == 200

    release.set()
    await asyncio.wait_for(task, timeout=10)
    assert (await aget(f"{url}/readyz"))[0] == 503
    code, metrics = await aget(f"{url}/metrics")
    assert code == 200
    assert "titan_bus_events_handled_total" in metrics

    await telemetry.aclose()
    await bus.aclose()
    with pytest.raises(urllib.error.URLError):
        http_get(f"{url}/healthz", timeout_s=2)


async def test_healthz_fails_while_the_event_loop_is_stuck(make_config: Any) -> None:
    config = make_config(metrics={"port": 0})
    telemetry = Telemetry.from_config(config, set_global=False)
    telemetry.stall_s = 1.5
    bus = EventBus(config)
    await telemetry.start(bus)
    assert telemetry.server is not None
    url = f"{telemetry.server.url}/healthz"
    try:
        assert (await aget(url))[0] == 200
        time.sleep(2.0)  # blocks the loop on purpose: the heartbeat cannot run
        code, body = http_get(url)
        assert code == 503
        assert "event loop has not run for" in body
        await wait_until(lambda: http_get(url)[0] == 200, what="healthz back to 200")
    finally:
        await telemetry.aclose()
        await bus.aclose()


def test_unknown_path_is_404_and_metrics_are_served() -> None:
    from titan_bus.telemetry import BusMetrics

    metrics = BusMetrics()
    metrics.limited("chat.v1", "global")
    server = HealthServer(metrics.registry, port=0)
    server.start()
    try:
        assert http_get(f"{server.url}/nothing")[0] == 404
        code, body = http_get(f"{server.url}/metrics")
        assert code == 200
        assert (
            'titan_bus_rate_limited_total{scope="global",topic="chat.v1"} 1.0' in body
        )
        assert http_get(f"{server.url}/readyz") == (200, "ready\n")
    finally:
        server.stop()


def test_a_port_in_use_is_a_config_error() -> None:
    from titan_bus.telemetry import BusMetrics

    port = free_port()
    first = HealthServer(BusMetrics().registry, port=port)
    first.start()
    try:
        with pytest.raises(ConfigError, match=f"cannot serve on 127.0.0.1:{port}"):
            HealthServer(BusMetrics().registry, port=port).start()
    finally:
        first.stop()


def test_serve_without_a_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"metrics\.port is not set"):
        Telemetry().serve()


async def test_ready_gauge_follows_the_processor_and_telemetry_can_restart(
    make_config: Any,
) -> None:
    config = make_config(metrics={"port": 0})
    telemetry = Telemetry.from_config(config, set_global=False)
    assert telemetry.metrics is not None
    registry = telemetry.metrics.registry
    bus = EventBus(config, observer=telemetry)

    assert registry.get_sample_value("titan_bus_processor_ready") == 0
    async with bus:
        await telemetry.start(bus)
        async with running(bus):
            assert registry.get_sample_value("titan_bus_processor_ready") == 1
        assert registry.get_sample_value("titan_bus_processor_ready") == 0
        await telemetry.aclose()

        await telemetry.start(bus)
        assert telemetry.server is not None
        try:
            code, text = await aget(f"{telemetry.server.url}/metrics")
        finally:
            await telemetry.aclose()

    assert code == 200
    assert "titan_bus_processor_ready 0.0" in text
