"""The HTTP endpoint of a process: ``/metrics``, ``/healthz`` and ``/readyz``.

It runs the standard library's WSGI server in a thread of its own, with
``prometheus_client``'s WSGI app for ``/metrics``, so a scrape never waits for
the event loop and the event loop never waits for a scrape. The two probes
call functions that answer ``None`` when all is well, or why it is not:

- ``/healthz`` (alive): 200 unless the liveness check names a problem, e.g.
  an event loop that stopped turning;
- ``/readyz`` (ready for work): 200 only while the readiness check passes,
  e.g. the processor is connected, its groups exist and it is not stopping;
  503 with the reason otherwise.

Port 0 picks a free port; :attr:`HealthServer.port` tells which.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

from titan_bus.errors import ConfigError

logger = logging.getLogger(__name__)

Check = Callable[[], str | None]
"""A probe: returns None when healthy, else a short reason."""

TEXT = ("Content-Type", "text/plain; charset=utf-8")
# Passed in a new list each time: wsgiref appends Content-Length to the list.


def always_ok() -> str | None:
    """A probe that always passes (a publisher-only process is ready when up)."""
    return None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


class HealthServer:
    """Serves metrics and the two probes on ``host``:``port`` from a thread.

    Args:
        registry: the metrics served on ``/metrics``.
        host: the address to bind, e.g. ``127.0.0.1`` or ``0.0.0.0``.
        port: the TCP port; 0 picks a free one.
        readiness: the ``/readyz`` check; always ready if None.
        liveness: the ``/healthz`` check; always alive if None.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        readiness: Check | None = None,
        liveness: Check | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._metrics = make_wsgi_app(registry)
        self._readiness = readiness or always_ok
        self._liveness = liveness or always_ok
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port bound (the chosen one when asked for 0)."""
        if self._server is None:
            return self._requested_port

        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:9464``."""
        host = f"[{self.host}]" if ":" in self.host else self.host

        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Bind the port and start answering in a background thread.

        Raises:
            ConfigError: the address cannot be bound (in use, not local).
        """
        server_class = _Server6 if ":" in self.host else _Server
        try:
            server = server_class(
                (self.host, self._requested_port), _QuietHandler, bind_and_activate=True
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics: cannot serve on {self.host}:{self._requested_port}: "
                f"{exc.strerror or exc}"
            ) from exc
        server.set_app(self._app)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="titan-health",
            daemon=True,
        )
        self._thread.start()
        logger.info(
            "serving metrics on %s/metrics, health on /healthz and /readyz", self.url
        )

    def stop(self) -> None:
        """Stop answering and release the port (blocks up to about 0.2 s)."""
        server, self._server = self._server, None
        if server is None:
            return

        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _app(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _probe(self._liveness, "alive", start_response)
        if path == "/readyz":
            return _probe(self._readiness, "ready", start_response)
        if path in ("/metrics", "/metrics/"):
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body

        start_response("404 Not Found", [TEXT])
        return [b"not found: try /metrics, /healthz or /readyz\n"]


def _probe(check: Check, good: str, start_response: StartResponse) -> list[bytes]:
    try:
        problem = check()
    except Exception as exc:
        logger.debug("a health probe raised", exc_info=True)
        problem = f"probe failed: {type(exc).__name__}: {exc}"
    if problem is None:
        start_response("200 OK", [TEXT])
        return [f"{good}\n".encode()]

    start_response("503 Service Unavailable", [TEXT])
    return [f"not {good}: {problem}\n".encode()]
