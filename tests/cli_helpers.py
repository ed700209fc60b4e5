"""Helpers for the tests that run the ``titan-bus`` command as a subprocess.

Nothing is faked: the command is the installed console script, run against
the session's private Redis with the test's own key prefix, in the test's own
directory so that no ``config/eventbus.yaml`` of the project is picked up.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from titan_bus.codec import decode_entry
from titan_bus.events import Event
from titan_bus.keys import KeySpace

CHAT = {"conversation_id": "c1", "role": "user", "text": "hello"}
RUN_TIMEOUT_S = 15.0
"""Longest a single command may take before the test fails, in seconds."""

CliRun = Callable[..., subprocess.CompletedProcess[str]]
"""Runs ``titan-bus --config <config> ARGS``; keywords: stdin, config, env vars."""


def titan_bus_command() -> str:
    """Return the installed console script, next to this Python or on PATH."""
    beside = Path(sys.executable).parent / "titan-bus"
    found = str(beside) if beside.is_file() else shutil.which("titan-bus")
    assert found, "titan-bus is not installed; run: pip install -e ."
    return found


CLI = titan_bus_command()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for the command: ours without TITAN_* settings, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def make_cli(config_file: Path, cwd: Path) -> CliRun:
    """Return a runner of the command with ``--config config_file`` in ``cwd``."""

    def run(
        *args: str, stdin: str | None = None, config: Path | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CLI, "--config", str(config or config_file), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=cwd,
            env=clean_env(**env),
            timeout=RUN_TIMEOUT_S,
            check=False,
        )

    return run


def assert_one_error_line(result: subprocess.CompletedProcess[str], *parts: str) -> str:
    """Check stderr is a single ``error: ...`` line containing ``parts``."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def publish_chat(cli: CliRun, *options: str, **fields: Any) -> str:
    """Publish chat.v1 :data:`CHAT` with ``fields`` replaced; return the event id."""
    result = cli("publish", "chat.v1", json.dumps({**CHAT, **fields}), *options)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def lane_events(sync_redis: redis.Redis, keys: KeySpace, lane: str) -> list[Event]:
    """Return the events stored in chat.v1's ``lane``."""
    entries = sync_redis.xrange(keys.lane("chat.v1", lane))
    return [decode_entry(fields) for _, fields in entries]


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
