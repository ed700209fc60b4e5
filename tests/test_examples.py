"""The examples as a user runs them: real processes, real files, real Redis.

The file watcher, the handler app (through ``titan-bus run``), the goal
scheduler and the ``make up`` launcher run as subprocesses against the
session's private Redis (or a private embedded one), never the shared server.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from watchfiles import Change

from titan_bus import Event, load_config
from titan_bus.codec import decode_entry
from titan_bus.embedded import free_port, redis_answers
from titan_bus.keys import KeySpace

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
WATCHER = ROOT / "examples" / "file_watcher.py"
SCHEDULER = ROOT / "examples" / "goal_scheduler.py"
CLI = Path(sys.executable).parent / "titan-bus"
HANDLED_WITHIN_S = 2.0
HANDLED_FS_LINE = r"fs\.v1 event \S+ lane=low change=\w+ path={path}"


def cli_available() -> bool:
    """True if the ``titan-bus`` command and its module are installed."""
    found = shutil.which("titan-bus", path=str(CLI.parent))
    return (
        found is not None and importlib.util.find_spec("titan_bus.cli.main") is not None
    )


class Output:
    """Collects a subprocess's output lines in a thread; waits for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, *, timeout_s: float = 10.0) -> str:
        """Return the first line matching ``pattern`` (a regex) within the timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    break
                self._changed.wait(min(left, 0.1))

        shown = "\n".join(self.lines[-30:])
        raise AssertionError(f"no line matching {pattern!r} in {timeout_s} s:\n{shown}")

    def close(self) -> None:
        """Wait for the reader to reach the end of the output, then close it."""
        self._thread.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without TITAN_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TITAN_")}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)

    return env


@pytest.fixture
def spawn() -> Iterator[Callable[..., Output]]:
    """Start subprocesses with merged output; terminate them after the test."""
    started: list[Output] = []

    def start(argv: list[str], **env: str) -> Output:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=clean_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(Output(proc))
        return started[-1]

    yield start
    for output in started:
        stop(output.proc)
        output.close()


def stop(proc: subprocess.Popen[str], signum: int = signal.SIGTERM) -> int:
    """Signal ``proc`` and wait for it; kill it after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    return proc.returncode


def lane_events(client: redis.Redis, key: str) -> list[Event]:
    """Every event stored in the lane stream ``key``, oldest first."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key))

    return [decode_entry(fields) for _, fields in entries]


def fs_events(client: redis.Redis, prefix: str) -> list[Event]:
    """Every fs.v1 event in any lane under ``prefix``, in publish order."""
    keys = KeySpace(prefix)
    events = [
        event
        for lane in ("high", "normal", "low")
        for event in lane_events(client, keys.lane("fs.v1", lane))
    ]

    return sorted(events, key=lambda e: e.id)


def wait_for_events(
    client: redis.Redis,
    prefix: str,
    path: Path,
    until: Callable[[list[Event]], bool],
    timeout_s: float = 10,
) -> list[Event]:
    """Return the fs.v1 events about ``path`` once ``until(events)`` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [e for e in fs_events(client, prefix) if e.data["path"] == str(path)]
        if until(found):
            return found
        assert time.monotonic() < deadline, f"events about {path} so far: {found}"
        time.sleep(0.05)


def prime_watcher(
    watcher: Output, folder: Path, seen: Callable[..., str], pattern: str
) -> None:
    """Touch a probe file until ``seen`` finds ``pattern`` (with its path) logged.

    The watcher registers its inotify watch just after it logs "watching", so
    a file made at that moment could be missed; the probe proves that the
    watcher (and whatever ``seen`` reads, e.g. the handler app) is live.
    """
    watcher.wait_for("watching", timeout_s=20)
    probe = folder / ".probe"
    for attempt in range(40):
        probe.write_text(str(attempt), encoding="utf-8")
        try:
            seen(pattern.format(path=re.escape(str(probe))), timeout_s=0.5)
            return
        except AssertionError:
            continue

    raise AssertionError("the probe file was never reported")


def start_watcher(spawn: Callable[..., Output], folder: Path, config: Path) -> Output:
    """Start the file watcher on ``folder`` and wait until it reports changes."""
    watcher = spawn(
        [sys.executable, str(WATCHER), str(folder), "--config", str(config)]
    )
    pattern = r"published fs\.v1 event \S+: \w+ {path}"
    prime_watcher(watcher, folder, watcher.wait_for, pattern)

    return watcher


def test_file_watcher_publishes_created_modified_deleted(
    spawn: Callable[..., Output],
    config_file: Path,
    sync_redis: redis.Redis,
    key_prefix: str,
    tmp_path: Path,
) -> None:
    """Creating, growing and deleting a real file gives the matching fs.v1 events."""
    folder = tmp_path / "watched"
    start_watcher(spawn, folder, config_file)
    target = folder.resolve() / "notes.txt"
    started = time.time()

    target.write_bytes(b"hello")
    seen = wait_for_events(sync_redis, key_prefix, target, until=bool)
    assert seen[0].data == {"change": "created", "path": str(target), "size": 5}

    with target.open("ab") as handle:
        handle.write(b" world")
    grown = {"change": "modified", "path": str(target), "size": 11}
    wait_for_events(
        sync_redis, key_prefix, target, until=lambda evs: evs[-1].data == grown
    )

    target.unlink()
    seen = wait_for_events(
        sync_redis,
        key_prefix,
        target,
        until=lambda evs: evs[-1].data["change"] == "deleted",
    )
    assert seen[-1].data == {"change": "deleted", "path": str(target)}
    assert [e.data["change"] for e in seen].count("deleted") == 1
    for event in seen:
        assert (event.topic, event.source) == ("fs.v1", "titan.fs-watcher")
        assert event.priority == "low"
        assert started - 1 <= event.time.timestamp() <= time.time()


def test_file_watcher_exits_cleanly_on_sigterm(
    spawn: Callable[..., Output], config_file: Path, tmp_path: Path
) -> None:
    """SIGTERM ends the watcher with exit code 0 and a closing log line."""
    watcher = spawn(
        [
            sys.executable,
            str(WATCHER),
            str(tmp_path / "w"),
            "--config",
            str(config_file),
        ]
    )
    watcher.wait_for("watching")

    assert stop(watcher.proc) == 0
    watcher.close()
    assert any("file watcher stopped" in line for line in watcher.lines)


def test_file_watcher_reports_a_bad_config_in_one_line(
    spawn: Callable[..., Output], tmp_path: Path
) -> None:
    """An invalid config file fails at start with one line naming the key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("processor:\n  concurrency: 0\n", encoding="utf-8")
    watcher = spawn([sys.executable, str(WATCHER), str(tmp_path), "--config", str(bad)])

    assert watcher.proc.wait(timeout=20) == 1
    watcher.close()
    assert len(watcher.lines) == 1
    assert watcher.lines[0].startswith("file_watcher: ")
    assert "processor.concurrency" in watcher.lines[0]


def test_payloads_order_changes_by_what_exists_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is a set: deletion goes first for a file that exists, last otherwise."""
    monkeypatch.syspath_prepend(str(ROOT))
    payloads = importlib.import_module("examples.file_watcher").payloads

    here = tmp_path / "here.txt"
    here.write_bytes(b"abc")
    gone = str(tmp_path / "gone.txt")

    result = payloads(
        {
            (Change.added, str(here)),
            (Change.deleted, str(here)),
            (Change.deleted, gone),
            (Change.added, gone),
        }
    )

    assert result == [
        {"change": "created", "path": gone},
        {"change": "deleted", "path": gone},
        {"change": "deleted", "path": str(here)},
        {"change": "created", "path": str(here), "size": 3},
    ]


def test_handlers_app_logs_a_new_file_within_two_seconds(
    spawn: Callable[..., Output],
    config_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file created in the watched folder is handled and logged within 2 s."""
    folder = tmp_path / "watched"
    if cli_available():
        processor = spawn(
            [str(CLI), "run", "--app", "examples.handlers:bus"],
            TITAN_CONFIG=str(config_file),
        )
        logged = processor.wait_for
    else:
        monkeypatch.syspath_prepend(str(ROOT))
        logged = in_process_handlers(config_file, caplog, request)
    watcher = spawn(
        [sys.executable, str(WATCHER), str(folder), "--config", str(config_file)]
    )
    prime_watcher(watcher, folder, logged, HANDLED_FS_LINE)
    target = folder.resolve() / "report.txt"

    started = time.monotonic()
    target.write_bytes(b"0123456789")
    line = logged(
        rf"fs\.v1 event \S+ lane=low change=created path={re.escape(str(target))} "
        r"size=(10|-|0)",
        timeout_s=HANDLED_WITHIN_S,
    )

    assert time.monotonic() - started <= HANDLED_WITHIN_S, line


def in_process_handlers(
    config_file: Path, caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest
) -> Callable[..., str]:
    """Run the handler app's bus in a thread (used when the CLI is missing).

    Returns a waiter over the handlers' log records; the bus is stopped and
    closed when the test ends.
    """
    caplog.set_level(logging.INFO, logger="examples.handlers")
    handlers = importlib.import_module("examples.handlers")
    app = handlers.build_bus(load_config(config_file))
    running: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        running.append(asyncio.get_running_loop())
        async with app:
            await app.run()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()

    def finish() -> None:
        if running:
            running[0].call_soon_threadsafe(app.stop)
        thread.join(timeout=15)

    request.addfinalizer(finish)

    def logged(pattern: str, *, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in caplog.records:
                if re.search(pattern, record.getMessage()):
                    return record.getMessage()
            time.sleep(0.02)
        raise AssertionError(f"handlers logged nothing matching {pattern!r}")

    return logged


def test_goal_scheduler_publishes_ticks(
    spawn: Callable[..., Output],
    config_file: Path,
    sync_redis: redis.Redis,
    key_prefix: str,
) -> None:
    """--count 3 publishes three numbered goal.tick events and exits 0."""
    scheduler = spawn(
        [
            *(sys.executable, str(SCHEDULER), "--interval", "0.05", "--count", "3"),
            *("--config", str(config_file)),
        ]
    )

    assert scheduler.proc.wait(timeout=30) == 0
    events = lane_events(sync_redis, KeySpace(key_prefix).lane("system.v1", "normal"))
    assert [e.data["name"] for e in events] == ["goal.tick"] * 3
    assert [e.data["details"]["seq"] for e in events] == [1, 2, 3]
    assert {e.source for e in events} == {"titan.goal-scheduler"}


def devstack_argv(
    *,
    port: int,
    data: Path,
    folder: Path,
    config: Path,
    app: str = "examples.handlers:bus",
) -> list[str]:
    """The launcher's command line with a private Redis on ``port``."""
    return [
        *(sys.executable, "-m", "titan_bus.devstack", "--redis", "embedded"),
        *("--port", str(port), "--data-dir", str(data), "--watch-dir", str(folder)),
        *("--config", str(config), "--app", app),
    ]


def test_devstack_runs_the_whole_stack_and_stops_it(
    spawn: Callable[..., Output], config_file: Path, tmp_path: Path
) -> None:
    """What `make up` runs: a private Redis, the processor and the watcher.

    A new file is handled and logged within 2 s; SIGINT (Ctrl-C) stops the
    processor cleanly, then the private Redis, and removes data/redis.url.
    """
    if not cli_available():
        pytest.skip("the titan-bus CLI is not installed")
    data, folder, port = tmp_path / "data", tmp_path / "watched", free_port()
    stack = spawn(
        devstack_argv(port=port, data=data, folder=folder, config=config_file)
    )
    stack.wait_for("Titan Event Bus is up", timeout_s=30)
    url = f"redis://127.0.0.1:{port}/0"
    assert (data / "redis.url").read_text(encoding="utf-8").strip() == url
    prime_watcher(stack, folder, stack.wait_for, HANDLED_FS_LINE)

    target = folder.resolve() / "hello.txt"
    started = time.monotonic()
    target.write_text("hi", encoding="utf-8")
    stack.wait_for(
        rf"fs\.v1 event \S+ lane=low change=created path={re.escape(str(target))}",
        timeout_s=HANDLED_WITHIN_S,
    )
    assert time.monotonic() - started <= HANDLED_WITHIN_S

    assert stop(stack.proc, signal.SIGINT) == 0
    stack.close()
    assert any("processor exited with code 0" in line for line in stack.lines)
    assert any("stopped (exit code 0)" in line for line in stack.lines)
    assert not redis_answers(url, timeout_s=0.5)
    assert not (data / "redis.url").exists()


def test_devstack_stops_everything_when_the_processor_dies(
    spawn: Callable[..., Output], config_file: Path, tmp_path: Path
) -> None:
    """An app that cannot load ends the stack with exit 1 and no Redis left over."""
    if not cli_available():
        pytest.skip("the titan-bus CLI is not installed")
    port = free_port()
    stack = spawn(
        devstack_argv(
            port=port,
            data=tmp_path / "data",
            folder=tmp_path / "w",
            config=config_file,
            app="examples.no_such_module:bus",
        )
    )

    assert stack.proc.wait(timeout=60) == 1
    stack.close()
    assert any("processor exited with code" in line for line in stack.lines)
    assert not redis_answers(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
