"""The shipped deploy/ files: valid for promtool, and naming real metrics.

The names a query may use are read from a processor's own ``/metrics``
endpoint after it handled, retried and dead-lettered events, so a renamed
metric breaks this test rather than a dashboard in production.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from telemetry_helpers import aget, require_tool, running, wait_until

from titan_bus import Event, EventBus, Reject
from titan_bus.telemetry import Telemetry

pytestmark = pytest.mark.timeout(60)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "titan-bus.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
METRIC = re.compile(r"\btitan_bus_[a-z_]+\b")
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool")
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_prometheus_config() -> None:
    result = promtool("check", "config", str(PROMETHEUS_YML))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", str(ALERTS_YML))

    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_cover_what_operators_must_hear_about() -> None:
    rules = yaml.safe_load(ALERTS_YML.read_text(encoding="utf-8"))
    names = {r["alert"] for group in rules["groups"] for r in group["rules"]}

    assert {
        "TitanProcessorDown",
        "TitanDeadLettersGrowing",
        "TitanConsumerLagHigh",
        "TitanEndToEndLatencyHigh",
        "TitanRedisUnreachable",
    } <= names


def dashboard_queries() -> list[tuple[str, str]]:
    """Return (panel title, expression) of every query of the dashboard."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        queries += [(panel["title"], t["expr"]) for t in panel["targets"]]

    return queries


def test_dashboard_is_valid_json_with_titled_panels_and_queries() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    assert board["uid"] == "titan-bus"
    titles = [p["title"] for p in board["panels"] if p["type"] != "row"]
    assert len(titles) == len(set(titles)) >= 10
    assert len(dashboard_queries()) >= len(titles)


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    sources = yaml.safe_load(
        (PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    providers = yaml.safe_load(
        (PROVISIONING / "dashboards" / "titan-bus.yml").read_text(encoding="utf-8")
    )

    [source] = sources["datasources"]
    assert source["type"] == "prometheus"
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/var/lib/grafana/dashboards")


async def exported_names(make_config: Any) -> set[str]:
    """Run a processor through handled, retried and dead-lettered events; return
    every sample name its /metrics endpoint declares."""
    retries = {"retry_limit": 1, "retry_base_s": 0.01, "retry_max_s": 0.02}
    config = make_config(metrics={"port": 0}, defaults=retries)
    telemetry = Telemetry.from_config(config, set_global=False)
    bus = EventBus(config, observer=telemetry)
    outcomes: list[str] = []

    @bus.subscribe("system.v1")
    async def handler(event: Event) -> None:
        outcomes.append(event.data["name"])
        if event.data["name"] == "fail":
            raise RuntimeError("fails every time")
        if event.data["name"] == "reject":
            raise Reject("no")

    async with bus:
        await telemetry.start(bus)
        assert telemetry.server is not None
        try:
            async with running(bus):
                for name in ("ok", "fail", "reject"):
                    await bus.publish("system.v1", {"name": name})
                await wait_until(lambda: len(outcomes) == 4, what="four deliveries")
                assert telemetry.gauges is not None
                await telemetry.gauges.refresh()
                code, text = await aget(f"{telemetry.server.url}/metrics")
        finally:
            await telemetry.aclose()

    assert code == 200
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}

    return names


async def test_every_dashboard_and_alert_query_names_an_exported_metric(
    make_config: Any,
) -> None:
    exported = await exported_names(make_config)
    rules = yaml.safe_load(ALERTS_YML.read_text(encoding="utf-8"))
    alerts = [(r["alert"], str(r["expr"])) for g in rules["groups"] for r in g["rules"]]

    for where, expr in dashboard_queries() + alerts:
        used = set(METRIC.findall(expr))
        assert used or 'up{job="titan-bus"}' in expr, f"{where}: names no metric"
        missing = used - exported
        assert not missing, f"{where}: {sorted(missing)} not exported"
    assert "titan_bus_end_to_end_latency_seconds_bucket" in exported
    assert "titan_bus_consumer_lag" in exported
