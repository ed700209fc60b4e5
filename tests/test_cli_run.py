"""``titan-bus run``: a real app module in a real subprocess, stopped by signals.

The app's handler writes ``start <id>`` and ``done <id>`` lines to a journal
file, sleeping in between for as many seconds as the event's text says, so a
test can tell handled, in-flight and cut-short events apart.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import textwrap
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_helpers import (
    CLI,
    CliRun,
    assert_one_error_line,
    clean_env,
    make_cli,
    publish_chat,
    wait_until,
)

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def cli(config_file: Path, tmp_path: Path) -> CliRun:
    """Run ``titan-bus --config <test config> ARGS`` in the test's directory."""
    return make_cli(config_file, tmp_path)


APP = """
import asyncio
import logging
from pathlib import Path

from titan_bus import EventBus

JOURNAL = Path({journal!r})


def note(line):
    with JOURNAL.open("a", encoding="utf-8") as out:
        out.write(line + "\\n")


async def on_chat(event):
    logging.getLogger("cli_test_app").info("handling")
    note(f"start {{event.id}}")
    await asyncio.sleep(float(event.data["text"]))
    note(f"done {{event.id}}")


{make_bus}
"""
FROM_CONFIG = """
bus = EventBus.from_config()
bus.subscribe("chat.v1")(on_chat)
"""


class Running:
    """A ``titan-bus run`` subprocess whose stderr lines are collected."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [CLI, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=clean_env(),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def logged(self, text: str) -> bool:
        """True once a stderr line contains ``text``."""
        return any(text in line for line in list(self.lines))

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process."""
        self.proc.send_signal(signum)

    def wait(self, timeout_s: float = 10.0) -> int:
        """Wait for the exit status; fail if the process is still running."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running; stderr: {self.lines}") from None
        self._reader.join(timeout=2)
        return code

    def stop(self) -> None:
        """Kill the process if a failed test left it running; close its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=2)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def start_app(config_file: Path, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Write an app module, start ``titan-bus run`` on it; stop it afterwards."""
    started: list[Running] = []

    def start(
        *,
        make_bus: str = FROM_CONFIG,
        attribute: str = "bus",
        config: Path | None = None,
    ) -> Running:
        source = APP.format(journal=str(tmp_path / "journal.txt"), make_bus=make_bus)
        (tmp_path / "cli_test_app.py").write_text(source, "utf-8")
        running = Running(
            ["--config", str(config or config_file), "run",
             "--app", f"cli_test_app:{attribute}", "--log-format", "json"],
            cwd=tmp_path,
        )  # fmt: skip
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def journal(tmp_path: Path) -> list[str]:
    """Return the lines the test app's handler wrote so far."""
    path = tmp_path / "journal.txt"
    return path.read_text("utf-8").splitlines() if path.exists() else []


def group_pending(cli: CliRun, group: str = "titan") -> int:
    """Return the pending count of ``group`` on chat.v1's normal lane."""
    chat = next(t for t in json.loads(cli("streams", "--json").stdout)
                if t["topic"] == "chat.v1")  # fmt: skip
    normal = next(lane for lane in chat["lanes"] if lane["lane"] == "normal")
    return int(next(g["pending"] for g in normal["groups"] if g["name"] == group))


def test_run_handles_events_and_exits_0_on_sigterm(
    start_app: Callable[..., Running], cli: CliRun, tmp_path: Path
) -> None:
    app = start_app()
    event_id = publish_chat(cli, text="0")

    wait_until(lambda: f"done {event_id}" in journal(tmp_path), 10, "the handler")
    app.signal(signal.SIGTERM)

    assert app.wait() == 0
    records = [json.loads(line) for line in app.lines]
    messages = [r["message"] for r in records]
    assert any(m.startswith("loaded app cli_test_app:bus") for m in messages)
    assert messages[-1] == "stopped cleanly"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    [handling] = [r for r in records if r["logger"] == "cli_test_app"]
    assert (handling["event_id"], handling["topic"], handling["lane"]) == (
        event_id,
        "chat.v1",
        "normal",
    )
    assert group_pending(cli) == 0


def test_run_serves_health_probes_when_a_metrics_port_is_set(
    start_app: Callable[..., Running], config_file: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with_metrics = config_file.with_name("metrics.yaml")
    with_metrics.write_text(config_file.read_text() + f"metrics:\n  port: {port}\n")
    app = start_app(config=with_metrics)

    wait_until(lambda: http_status(port, "/readyz") == 200, 10, "/readyz")
    assert http_status(port, "/healthz") == 200
    app.signal(signal.SIGTERM)

    assert app.wait() == 0


def http_status(port: int, path: str) -> int | None:
    """Return the HTTP status of GET ``path`` on the local ``port``, or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_run_lets_an_in_flight_handler_finish_on_sigterm(
    start_app: Callable[..., Running], cli: CliRun, tmp_path: Path
) -> None:
    app = start_app()
    event_id = publish_chat(cli, text="1.0")
    wait_until(lambda: f"start {event_id}" in journal(tmp_path), 10, "the handler")

    app.signal(signal.SIGTERM)

    assert app.wait() == 0
    assert journal(tmp_path) == [f"start {event_id}", f"done {event_id}"]
    assert group_pending(cli) == 0


def test_run_second_signal_stops_at_once_leaving_the_event_pending(
    start_app: Callable[..., Running], cli: CliRun, config_file: Path, tmp_path: Path
) -> None:
    patient = config_file.with_name("patient.yaml")
    patient.write_text(
        config_file.read_text().replace("shutdown_grace_s: 2", "shutdown_grace_s: 60")
    )
    app = start_app(config=patient)
    event_id = publish_chat(cli, text="60")
    wait_until(lambda: f"start {event_id}" in journal(tmp_path), 10, "the handler")

    app.signal(signal.SIGTERM)
    wait_until(lambda: app.logged("received SIGTERM"), 5, "the first signal logged")
    app.signal(signal.SIGTERM)

    assert app.wait(timeout_s=5) == 128 + signal.SIGTERM
    assert journal(tmp_path) == [f"start {event_id}"]
    assert group_pending(cli) == 1


def test_run_factory_with_its_own_config_is_used_and_warned_about(
    start_app: Callable[..., Running],
    cli: CliRun,
    redis_url: str,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    own = textwrap.dedent(
        f"""
        from titan_bus.config import parse_config


        def make():
            config = parse_config({{
                "redis": {{"url": {redis_url!r}}},
                "key_prefix": {key_prefix!r},
                "processor": {{"group": "own"}},
            }})
            made = EventBus(config)
            made.subscribe("chat.v1")(on_chat)
            return made
        """
    )
    app = start_app(make_bus=own, attribute="make")
    event_id = publish_chat(cli, text="0")

    wait_until(lambda: f"done {event_id}" in journal(tmp_path), 10, "the handler")
    app.signal(signal.SIGTERM)

    assert app.wait() == 0
    assert app.logged("built its own configuration")
    assert group_pending(cli, group="own") == 0


def test_run_with_an_unloadable_app_is_one_error_line(cli: CliRun) -> None:
    result = cli("run", "--app", "no_such_app_module:bus")

    assert result.returncode == 1
    assert_one_error_line(result, "cannot import app module 'no_such_app_module'")
