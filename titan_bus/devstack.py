"""``make up``: Redis, a processor and the file watcher, run and stopped together.

Usage::

    python -m titan_bus.devstack [--watch-dir DIR] [--redis auto|embedded]
        [--port N] [--config PATH] [--data-dir DIR] [--app MODULE:ATTR]
        [--watcher SCRIPT]

Which Redis is used, first match wins:

1. ``--redis embedded``: a private server (:class:`EmbeddedRedis`), always;
2. ``$TITAN_REDIS_URL``: that server;
3. a ``redis.url`` in the config file other than the default: that server;
4. a server answering at the default address, 127.0.0.1:6379: that one;
5. otherwise a private server with AOF persistence under ``data/redis/``.

While the stack runs, the chosen URL is in ``data/redis.url`` so that
``make test-publish`` and ``make check-streams`` reach the same server. On
SIGINT, SIGTERM or SIGHUP the watcher and the processor get SIGTERM and the
processor's ``shutdown_grace_s`` plus 5 s to exit; then a private Redis is
stopped. A second signal kills the children at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import FrameType

from titan_bus.config import DEFAULT_REDIS_URL, BusConfig, load_config
from titan_bus.connection import redacted
from titan_bus.embedded import EmbeddedRedis, redis_answers
from titan_bus.errors import BusConnectionError, TitanBusError

logger = logging.getLogger(__name__)

EXTRA_GRACE_S = 5.0
POLL_S = 0.2
READY_TIMEOUT_S = 30.0


@dataclass
class RedisChoice:
    """The Redis server the stack uses and why.

    Attributes:
        url: its URL.
        origin: where the URL came from, for the banner.
        server: the private server, if the stack started one.
    """

    url: str
    origin: str
    server: EmbeddedRedis | None = None


def choose_redis(
    config: BusConfig, *, mode: str, data_dir: Path, port: int | None = None
) -> RedisChoice:
    """Pick (and if needed start) the Redis server, by the order in the module doc.

    Args:
        config: the loaded configuration (``$TITAN_REDIS_URL`` applied).
        mode: ``"auto"``, or ``"embedded"`` to always start a private server.
        data_dir: the project's data folder; the private server uses
            ``data_dir/redis``.
        port: TCP port for a private server; 6380 or a free one if None.

    Raises:
        BusConnectionError: a configured server does not answer, or the
            private one could not be started.
    """
    env_url = os.environ.get("TITAN_REDIS_URL")
    if mode == "auto":
        if env_url:
            return _existing(env_url, "TITAN_REDIS_URL")
        if config.redis.url != DEFAULT_REDIS_URL:
            return _existing(config.redis.url, "the config file")
        if redis_answers(DEFAULT_REDIS_URL):
            return RedisChoice(DEFAULT_REDIS_URL, "the default address")

    server = EmbeddedRedis(data_dir / "redis", port=port)
    server.start()

    return RedisChoice(server.url, f"embedded, AOF in {server.data_dir}", server)


def _existing(url: str, origin: str) -> RedisChoice:
    if not redis_answers(url, timeout_s=3.0):
        raise BusConnectionError(f"Redis at {redacted(url)} (from {origin}) is down")

    return RedisChoice(url, origin)


class Supervisor:
    """Starts child processes, watches them, and stops them on a signal.

    Args:
        grace_s: how long children get to exit after SIGTERM, in seconds.
    """

    def __init__(self, *, grace_s: float) -> None:
        self.grace_s = grace_s
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.signals = 0
        self._wake = threading.Event()

    def install_signal_handlers(self) -> None:
        """Route SIGINT, SIGTERM and SIGHUP to :meth:`on_signal`."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.on_signal)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Count a stop request and wake the supervising loop."""
        self.signals += 1
        self._wake.set()

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> None:
        """Start a child in its own process group (a Ctrl-C reaches only us)."""
        logger.info("starting %s: %s", name, " ".join(argv))
        self.children[name] = subprocess.Popen(
            argv, env=dict(env), stdin=subprocess.DEVNULL, process_group=0
        )

    def supervise(self) -> int:
        """Wait for a signal or a child's exit; return the stack's exit code."""
        while not self.signals:
            for name, child in self.children.items():
                code = child.poll()
                if code is not None:
                    logger.error("%s exited with code %d; stopping", name, code)
                    return 1
            self._wake.wait(POLL_S)

        return 0

    def shutdown(self) -> None:
        """SIGTERM every child, wait up to ``grace_s``, kill what remains."""
        seen = self.signals
        for child in reversed(self.children.values()):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while any(c.poll() is None for c in self.children.values()):
            if time.monotonic() > deadline or self.signals > seen:
                logger.warning("killing the children that are still running")
                for child in self.children.values():
                    if child.poll() is None:
                        child.kill()
                        child.wait()
            time.sleep(0.05)
        for name, child in self.children.items():
            logger.info("%s exited with code %s", name, child.returncode)


def titan_bus_command() -> str:
    """Return the ``titan-bus`` executable of this environment.

    Raises:
        TitanBusError: it is not installed.
    """
    beside = Path(sys.executable).parent / "titan-bus"
    found = str(beside) if beside.is_file() else shutil.which("titan-bus")
    if not found:
        raise TitanBusError("titan-bus command not found; run: pip install -e .")

    return found


def child_env(url: str, config: Path | None) -> dict[str, str]:
    """Return the environment of the children: Redis URL, config, import path."""
    env = dict(os.environ, TITAN_REDIS_URL=url, PYTHONUNBUFFERED="1")
    if config is not None:
        env["TITAN_CONFIG"] = str(config.resolve())
    path = [str(Path.cwd()), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(path)

    return env


def banner(
    args: argparse.Namespace, choice: RedisChoice, stack: Supervisor, metrics: str
) -> str:
    """Return the text that tells the user where everything is."""
    pids = {name: child.pid for name, child in stack.children.items()}
    lines = [
        "",
        "Titan Event Bus is up",
        f"  redis      {redacted(choice.url)}  ({choice.origin})",
        f"  processor  titan-bus run --app {args.app}  (pid {pids['processor']})",
        f"  watcher    {args.watch_dir}  (pid {pids['watcher']})",
    ]
    if metrics:
        lines.append(f"  metrics    {metrics}/metrics  (health: /healthz, /readyz)")
    lines += [
        "  try        create a file in the watched folder; make test-publish;"
        " make check-streams",
        f"  cli        in another shell, first: export TITAN_REDIS_URL={choice.url}",
        "  stop       Ctrl-C",
        "",
    ]

    return "\n".join(lines)


def wait_until_ready(base_url: str, *, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """Poll ``base_url``/readyz until it answers 200; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=1) as reply:
                if reply.status == HTTPStatus.OK:
                    return True
        except OSError:
            pass
        time.sleep(0.2)

    return False


def run(args: argparse.Namespace) -> int:
    """Start the stack, supervise it, stop it; return the exit code."""
    args.watch_dir = args.watch_dir.expanduser().resolve()
    config = load_config(args.config)
    command = titan_bus_command()
    stack = Supervisor(grace_s=config.processor.shutdown_grace_s + EXTRA_GRACE_S)
    stack.install_signal_handlers()
    choice = choose_redis(
        config, mode=args.redis, data_dir=args.data_dir, port=args.port
    )
    url_file = args.data_dir / "redis.url"
    try:
        url_file.parent.mkdir(parents=True, exist_ok=True)
        url_file.write_text(choice.url + "\n", encoding="utf-8")
        env = child_env(choice.url, args.config)
        args.watch_dir.mkdir(parents=True, exist_ok=True)
        stack.spawn("processor", [command, "run", "--app", args.app], env)
        watcher = [sys.executable, str(args.watcher), str(args.watch_dir)]
        stack.spawn("watcher", watcher, env)
        metrics = _metrics_url(config)
        if metrics and not wait_until_ready(metrics):
            print(f"warning: the processor is not ready at {metrics}/readyz yet")
        print(banner(args, choice, stack, metrics), flush=True)
        code = stack.supervise()
    finally:
        stack.shutdown()
        url_file.unlink(missing_ok=True)
        if choice.server is not None:
            choice.server.stop()

    return code


def _metrics_url(config: BusConfig) -> str:
    port = config.metrics.port
    return f"http://{config.metrics.host}:{port}" if port else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the launcher's command line."""
    parser = argparse.ArgumentParser(
        prog="python -m titan_bus.devstack",
        description="Run Redis, a processor and the file watcher for development.",
    )
    add = parser.add_argument
    add("--watch-dir", type=Path, default=Path("watched"), help="folder to watch")
    add("--redis", choices=["auto", "embedded"], default="auto", help="which Redis")
    add("--port", type=int, help="port of a private Redis (default 6380 or free)")
    add("--config", type=Path, help="bus config file (default: as the bus finds it)")
    add("--data-dir", type=Path, default=Path("data"), help="project data folder")
    add("--app", default="examples.handlers:bus", help="module:attribute to run")
    add("--watcher", type=Path, default=Path("examples/file_watcher.py"))

    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m titan_bus.devstack``."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s devstack %(levelname)s %(message)s"
    )
    try:
        return run(parse_args(argv))
    except (TitanBusError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
