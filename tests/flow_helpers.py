"""Shared parts of the flow-control tests: real processes, Redis-time records.

The processor subprocesses (``tests/apps/flow_processor.py``) record every
handler start in Redis with the time taken from Redis itself, so the tests
can measure rates, shares and delays across processes on one clock. Nothing
here fakes Redis or the bus.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import yaml
from servers import wait_for, write_config

from titan_bus import SyncPublisher
from titan_bus.config import parse_config
from titan_bus.keys import KeySpace

APPS_DIR = Path(__file__).parent / "apps"
PROCESSOR_APP = APPS_DIR / "flow_processor.py"
PUBLISHER_APP = APPS_DIR / "flow_publisher.py"
STOP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FlowKeys:
    """Where the flow apps record what they did, under ``<prefix>:flow:``.

    These keys sit outside every topic's keys, so the bus never touches them.
    """

    prefix: str

    @property
    def log(self) -> str:
        """List of handler starts, in order: ``id topic lane time_us consumer``."""
        return f"{self.prefix}:flow:log"

    @property
    def counts(self) -> str:
        """Hash of event id to how many times a handler started for it."""
        return f"{self.prefix}:flow:counts"

    @property
    def ready(self) -> str:
        """Set of consumer names whose processor is reading."""
        return f"{self.prefix}:flow:ready"

    @property
    def go(self) -> str:
        """Key whose existence tells waiting publisher apps to start."""
        return f"{self.prefix}:flow:go"

    def running(self, consumer: str) -> str:
        """Counter of handlers running now in ``consumer``."""
        return f"{self.prefix}:flow:running:{consumer}"

    def peak(self, consumer: str) -> str:
        """The most handlers ever seen running at once in ``consumer``."""
        return f"{self.prefix}:flow:peak:{consumer}"


@dataclass(frozen=True)
class HandleRecord:
    """One handler start as recorded by the processor app.

    Attributes:
        event_id: the event's id.
        topic: its topic.
        lane: the lane it was read from.
        time_us: Redis time at the start of the handler, in microseconds.
        consumer: the processor that ran it.
    """

    event_id: str
    topic: str
    lane: str
    time_us: int
    consumer: str


def read_log(client: redis.Redis, keys: FlowKeys) -> list[HandleRecord]:
    """Return every recorded handler start, in the order they happened."""
    records = []
    for raw in client.lrange(keys.log, 0, -1):
        event_id, topic, lane, time_us, consumer = raw.decode().split(" ")
        records.append(HandleRecord(event_id, topic, lane, int(time_us), consumer))

    return records


def redis_time_us(client: redis.Redis) -> int:
    """Return the Redis server's clock, in Unix microseconds."""
    seconds, micros = client.time()

    return int(seconds) * 1_000_000 + int(micros)


def max_in_window(times_us: Sequence[int], window_us: int) -> int:
    """Return the most timestamps inside any half-open window of ``window_us``.

    The busiest window can always be slid to start at one of the timestamps,
    so trying each of them as a start covers every window.
    """
    ordered = sorted(times_us)
    best = 0
    for i, start in enumerate(ordered):
        end = bisect_left(ordered, start + window_us, lo=i)
        best = max(best, end - i)

    return best


def flow_config(url: str, prefix: str, **top: Any) -> dict[str, Any]:
    """Return a raw config for the flow tests: short block time, quick shutdown.

    ``processor`` given in ``top`` is merged over the quick processor settings.
    """
    processor = {"block_ms": 100, "shutdown_grace_s": 2, **top.pop("processor", {})}

    return {
        "redis": {"url": url},
        "key_prefix": prefix,
        "processor": processor,
        **top,
    }


class FlowProcess:
    """One app subprocess, its output in a log file; :meth:`stop` ends it.

    Args:
        command: the command line.
        log: file receiving its stdout and stderr.
        name: what it is, for messages.
        stdout: a pipe for stdout instead of the log, if True.
    """

    def __init__(
        self, command: list[str], *, log: Path, name: str, stdout: bool = False
    ) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout else out,
                stderr=out,
                env=_child_env(),
                cwd=APPS_DIR,
            )

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit on its own; return its status."""
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> int:
        """SIGTERM the process, ``kill -9`` it if it lingers; return its status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its output, for failure messages."""
        text = self.log.read_text(encoding="utf-8", errors="replace")

        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise with its log if the process has exited."""
        if not self.alive():
            raise AssertionError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )


def read_json_line(process: FlowProcess, timeout_s: float) -> dict[str, Any]:
    """Return the next line the process prints on stdout, parsed as JSON.

    Raises:
        AssertionError: no full line within ``timeout_s`` seconds.
    """
    stream = process.process.stdout
    assert stream is not None, f"{process.name} was not started with stdout=True"
    ready, _, _ = select.select([stream], [], [], timeout_s)
    line = stream.readline() if ready else b""
    if not line.endswith(b"\n"):
        raise AssertionError(
            f"{process.name} printed no line within {timeout_s} s:\n"
            f"{process.log_tail()}"
        )
    parsed: dict[str, Any] = json.loads(line)

    return parsed


def start_publisher(
    config: Path,
    *,
    source: str,
    duration_s: float,
    tag: str,
    prefix_command: Sequence[str] = (),
) -> FlowProcess:
    """Start ``tests/apps/flow_publisher.py``, run by ``prefix_command`` if given."""
    app = [sys.executable, str(PUBLISHER_APP), "--config", str(config)]
    options = ["--source", source, "--duration-s", str(duration_s), "--tag", tag]
    command = [*prefix_command, *app, *options]
    log = config.parent / f"publisher-{tag}.log"

    return FlowProcess(command, log=log, name=f"publisher {tag}", stdout=True)


def start_processor(
    config: Path,
    *,
    consumer: str,
    topics: Sequence[str] = ("system.v1",),
    sleep_s: float = 0.0,
) -> FlowProcess:
    """Start ``tests/apps/flow_processor.py`` as ``consumer`` (not yet ready)."""
    app = [sys.executable, str(PROCESSOR_APP), "--config", str(config)]
    command = [*app, "--consumer", consumer, "--sleep-s", str(sleep_s)]
    for topic in topics:
        command += ["--topic", topic]
    log = config.parent / f"{consumer}.log"

    return FlowProcess(command, log=log, name=f"processor {consumer}")


def wait_ready(
    client: redis.Redis, keys: FlowKeys, processes: Sequence[FlowProcess]
) -> None:
    """Wait until every processor in ``processes`` reports that it reads."""

    def all_ready() -> bool:
        for process in processes:
            process.check_alive()
        ready = {raw.decode() for raw in client.smembers(keys.ready)}
        return all(p.name.removeprefix("processor ") in ready for p in processes)

    wait_for(all_ready, READY_TIMEOUT_S, what="processors ready")


@contextlib.contextmanager
def processors(
    client: redis.Redis,
    config: Path,
    *,
    count: int,
    topics: Sequence[str] = ("system.v1",),
    sleep_s: float = 0.0,
    names: Sequence[str] | None = None,
    one_by_one: bool = False,
) -> Iterator[list[FlowProcess]]:
    """Run ``count`` processor subprocesses, ready on entry, stopped on exit.

    With ``one_by_one``, each starts only once the previous one reads, so no
    process starting up (about a second of CPU for its imports) slows the
    handlers of those already running.
    """
    started: list[FlowProcess] = []
    keys = FlowKeys(_prefix_of(config))
    try:
        for n in range(count):
            consumer = names[n] if names else f"p{n + 1}"
            started.append(
                start_processor(
                    config, consumer=consumer, topics=topics, sleep_s=sleep_s
                )
            )
            if one_by_one:
                wait_ready(client, keys, started)
        wait_ready(client, keys, started)
        yield started
    finally:
        for process in started:
            process.stop()


def _prefix_of(config: Path) -> str:
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))

    return str(raw["key_prefix"])


def faketime_command() -> list[str] | None:
    """Return the ``faketime`` command prefix for a clock 10 s ahead, or None."""
    binary = shutil.which("faketime")

    return None if binary is None else [binary, "-f", "+10s"]


class FlowRun:
    """One test's bus: config file, blocking publisher, key names.

    Args:
        tmp_path: the test's folder; the config file is written there.
        raw: the raw configuration (see :func:`flow_config`).
    """

    def __init__(self, tmp_path: Path, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.config_path = write_config(tmp_path / "bus.yaml", raw)
        self.config = parse_config(raw, origin="test")
        self.keys = KeySpace(self.config.key_prefix)
        self.flow = FlowKeys(self.config.key_prefix)
        self.publisher = SyncPublisher(self.config)

    def close(self) -> None:
        """Close the publisher."""
        self.publisher.close()

    def publish_backlog(
        self,
        topic: str,
        lane: str,
        count: int,
        *,
        batch: int = 500,
        payload: Callable[[str, int], dict[str, Any]] | None = None,
    ) -> list[str]:
        """Publish ``count`` events to ``lane`` of ``topic``; return their ids.

        ``payload(lane, n)`` makes each payload; :func:`event_data` if None.
        """
        make = payload or event_data
        ids: list[str] = []
        for start in range(0, count, batch):
            events = [
                self.publisher.event(topic, make(lane, start + n), priority=lane)
                for n in range(min(batch, count - start))
            ]
            ids += self.publisher.publish_many(events)

        return ids


def event_data(lane: str, n: int) -> dict[str, Any]:
    """Return a valid ``system.v1`` payload numbered ``n``."""
    return {"name": f"flow.{lane}", "details": {"n": n}}


@contextlib.contextmanager
def flow_run(tmp_path: Path, raw: dict[str, Any]) -> Iterator[FlowRun]:
    """A :class:`FlowRun` whose publisher is closed on exit."""
    run = FlowRun(tmp_path, raw)
    try:
        yield run
    finally:
        run.close()


def _child_env() -> dict[str, str]:
    """The environment of app subprocesses: no config leaks in from outside."""
    hidden = ("TITAN_REDIS_URL", "TITAN_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in hidden}

    return {**env, "PYTHONUNBUFFERED": "1"}
