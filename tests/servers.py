"""Real extra processes for tests: private redis-servers and processor subprocesses.

Nothing here fakes anything. :class:`RedisServer` runs a ``redis-server`` of
its own (never the shared one on 6379) for tests that must kill, restart or
replicate a server; :class:`ProcessorProcess` runs a processor as a separate
process that a test can SIGTERM or ``kill -9``.

Processor subprocesses run the ``titan-bus run`` command by default; set
``TITAN_TEST_PROCESSOR=script`` to run them with ``tests/apps/run_processor.py``
instead, which needs nothing of the CLI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import port_for
import redis
import yaml
from mirakuru import TCPExecutor

from titan_bus.embedded import find_redis_server

APPS_DIR = Path(__file__).parent / "apps"
SHARED_REDIS_PORT = 6379
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a free loopback port, never the shared server's 6379."""
    return int(port_for.select_random(exclude_ports=[SHARED_REDIS_PORT]))


def wait_for(predicate: Callable[[], object], timeout_s: float, *, what: str) -> None:
    """Poll ``predicate`` every 20 ms until it is truthy.

    Raises:
        AssertionError: still falsy after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


class RedisServer:
    """A private ``redis-server`` on a free loopback port, files in ``data_dir``.

    Nothing is saved unless ``args`` ask for it (``--appendonly yes``...), so
    a server killed and started again comes back empty by default. The port
    and folder stay the same across restarts.

    Args:
        data_dir: working folder for the log and any AOF or RDB files.
        args: extra ``redis-server`` options, e.g. ``["--appendonly", "yes"]``.
    """

    def __init__(self, data_dir: Path, *, args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--dir", str(data_dir),
            "--logfile", str(data_dir / "redis.log"),
            "--save", "",
            "--appendonly", "no",
            *args,
        ]  # fmt: skip
        self._executor = TCPExecutor(
            command,
            host=LOOPBACK,
            port=self.port,
            timeout=30,
            stdout=subprocess.DEVNULL,
        )
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        """``redis://`` URL of this server, database 0."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        """Return a new blocking client for this server, closed by :meth:`stop`."""
        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=10)
        self._clients.append(client)

        return client

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (data loaded)."""
        self._executor.start()
        client = self.client()
        wait_for(lambda: _pings(client), 30, what=f"redis on {self.port}")

        return self

    def kill(self) -> None:
        """``kill -9`` the server and wait for it to be gone."""
        self._executor.kill(sig=signal.SIGKILL)

    def stop(self) -> None:
        """Close the clients handed out and stop the server (SIGTERM), if it runs."""
        for client in self._clients:
            client.close()
        with contextlib.suppress(Exception):
            self._executor.stop()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
        return False


QUICK_DEFAULTS: dict[str, Any] = {
    "retry_base_s": 0.05,
    "retry_max_s": 0.2,
    "claim_idle_s": 1.0,
}
QUICK_PROCESSOR: dict[str, Any] = {
    "block_ms": 100,
    "shutdown_grace_s": 5,
    "retention_interval_s": 0.5,
}


def quick_config(
    url: str,
    prefix: str,
    *,
    defaults: dict[str, Any] | None = None,
    processor: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """Return a raw config with short delays, for tests on a real server.

    ``defaults`` and ``processor`` are merged over the quick settings; other
    keyword arguments are top-level keys.
    """
    return {
        "redis": {"url": url},
        "key_prefix": prefix,
        "defaults": {**QUICK_DEFAULTS, **(defaults or {})},
        "processor": {**QUICK_PROCESSOR, **(processor or {})},
        **top,
    }


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """Write a YAML config file holding ``raw`` and return its path."""
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")

    return path


class ProcessorProcess:
    """One processor running as a separate OS process.

    Args:
        config: the YAML config file (redis URL, key prefix, tuning).
        consumer: the consumer name it reads as.
        log: file receiving its stdout and stderr.
        app: the bus application, ``module:factory`` in ``tests/apps``.
    """

    def __init__(
        self,
        config: Path,
        *,
        consumer: str,
        log: Path,
        app: str = "workers:app",
        launcher: str | None = None,
    ) -> None:
        self.consumer = consumer
        self.log = log
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("TITAN_REDIS_URL", "TITAN_CONFIG")
        }
        env["PYTHONUNBUFFERED"] = "1"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                _command(config, app, consumer, launcher or default_launcher()),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=config.parent,
            )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process if it still runs."""
        if self.alive():
            self.process.send_signal(signum)

    def kill(self) -> None:
        """``kill -9`` the process and reap it."""
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def wait(self, timeout_s: float) -> int:
        """Wait for the process to exit and return its status."""
        return self.process.wait(timeout=timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of its output, for failure messages."""
        text = self.log.read_text(encoding="utf-8", errors="replace")

        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, client: redis.Redis, lane: str, group: str) -> None:
        """Wait until it reads ``lane`` as a consumer of ``group``.

        Raises:
            AssertionError: it exited first, or did not start within 30 s.
        """

        def reading() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"processor {self.consumer} exited with "
                    f"{self.process.returncode}:\n{self.log_tail()}"
                )
            return self.consumer in consumers_of(client, lane, group)

        wait_for(reading, 30, what=f"processor {self.consumer} reading")


def default_launcher() -> str:
    """``cli`` (``titan-bus run``) unless ``TITAN_TEST_PROCESSOR=script``."""
    return os.environ.get("TITAN_TEST_PROCESSOR", "cli")


def _command(config: Path, app: str, consumer: str, launcher: str) -> list[str]:
    if launcher == "script":
        script = str(APPS_DIR / "run_processor.py")
        return [sys.executable, script, "--config", str(config), "--app", app,
                "--consumer", consumer]  # fmt: skip

    cli = str(Path(sys.executable).parent / "titan-bus")
    return [cli, "--config", str(config), "run", "--app", app,
            "--app-dir", str(APPS_DIR), "--consumer", consumer]  # fmt: skip


def consumers_of(client: redis.Redis, lane: str, group: str) -> list[str]:
    """Return the names of ``group``'s consumers on stream ``lane``."""
    try:
        found = client.xinfo_consumers(lane, group)
    except redis.ResponseError:
        return []

    return [_text(c["name"]) for c in found]


class ProcessorPool:
    """Starts processor subprocesses with fresh consumer names; kills leftovers.

    Args:
        config: the YAML config file they all use.
        logs: folder for their output files.
        launcher: ``cli`` or ``script``; see :func:`default_launcher` if None.
    """

    def __init__(self, config: Path, logs: Path, launcher: str | None = None) -> None:
        self.config = config
        self.logs = logs
        self.launcher = launcher
        self.started: list[ProcessorProcess] = []

    def start(self, name: str | None = None) -> ProcessorProcess:
        """Start one more processor, named ``p<n>`` unless ``name`` is given."""
        consumer = name or f"p{len(self.started) + 1}"
        log = self.logs / f"{consumer}.log"
        process = ProcessorProcess(
            self.config, consumer=consumer, log=log, launcher=self.launcher
        )
        self.started.append(process)

        return process

    def close(self) -> None:
        """``kill -9`` every process this pool started that still runs."""
        for process in self.started:
            if process.alive():
                process.kill()


@contextlib.contextmanager
def processor_pool(
    config: Path, logs: Path, launcher: str | None = None
) -> Iterator[ProcessorPool]:
    """A :class:`ProcessorPool` whose processes are killed on exit."""
    pool = ProcessorPool(config, logs, launcher)
    try:
        yield pool
    finally:
        pool.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
