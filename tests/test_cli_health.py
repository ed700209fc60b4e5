"""``titan-bus health``, run as a real subprocess against a real probe server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import CliRun, assert_one_error_line, make_cli
from telemetry_helpers import free_port

from titan_bus.telemetry import BusMetrics, HealthServer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def cli(config_file: Path, tmp_path: Path) -> CliRun:
    """Run ``titan-bus --config <test config> ARGS`` in the test's directory."""
    return make_cli(config_file, tmp_path)


@pytest.fixture
def readiness() -> list[str | None]:
    """What the probe server's /readyz check answers: None (ready) or why not."""
    return [None]


@pytest.fixture
def server(readiness: list[str | None]) -> Iterator[HealthServer]:
    """A probe server on a free loopback port, answering as ``readiness`` says."""
    probe = HealthServer(BusMetrics().registry, port=0, readiness=lambda: readiness[0])
    probe.start()
    yield probe
    probe.stop()


def test_health_exits_0_when_ready(cli: CliRun, server: HealthServer) -> None:
    result = cli("health", "--url", f"{server.url}/readyz")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ready ({server.url}/readyz)\n"


def test_health_exits_1_with_the_reason_when_not_ready(
    cli: CliRun, server: HealthServer, readiness: list[str | None]
) -> None:
    readiness[0] = "processor is shutting down"

    result = cli("health", "--url", f"{server.url}/readyz")

    assert result.returncode == 1
    assert_one_error_line(result, "not ready: processor is shutting down", "503")


def test_health_exits_1_when_nothing_answers(cli: CliRun) -> None:
    url = f"http://127.0.0.1:{free_port()}/readyz"

    result = cli("health", "--url", url, "--timeout", "2")

    assert result.returncode == 1
    assert_one_error_line(result, f"no answer from {url}")


def test_health_finds_the_port_in_the_configuration(
    cli: CliRun, server: HealthServer, config_file: Path
) -> None:
    with_metrics = config_file.with_name("metrics.yaml")
    with_metrics.write_text(
        config_file.read_text(encoding="utf-8")
        + f"metrics:\n  host: 0.0.0.0\n  port: {server.port}\n",
        encoding="utf-8",
    )

    result = cli("health", config=with_metrics)

    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:{server.port}/readyz" in result.stdout


def test_health_without_a_port_or_url_is_one_error_line(cli: CliRun) -> None:
    result = cli("health")

    assert result.returncode == 1
    assert_one_error_line(result, "metrics.port is not set", "--url")
