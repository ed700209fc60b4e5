"""Helpers of the telemetry tests: bounded waits, a running bus, HTTP, tools.

Nothing here fakes Redis, Prometheus or the bus; these only start, wait for
and read the real thing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import urllib.error
import urllib.request

import pytest
from helpers import Predicate, running
from helpers import wait_until as _wait_until

__all__ = ["aget", "free_port", "http_get", "require_tool", "running", "wait_until"]


async def wait_until(
    predicate: Predicate, timeout_s: float = 10.0, *, what: str = "condition"
) -> None:
    """:func:`helpers.wait_until` with the longer default these tests need."""
    await _wait_until(predicate, timeout_s, what=what)


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]

    return port


# Loopback servers only: never go through a proxy set in the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """GET ``url``; return the status code and body, for 2xx and error codes alike.

    Raises:
        urllib.error.URLError: nothing answers at ``url``.
    """
    try:
        with _DIRECT.open(url, timeout=timeout_s) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


async def aget(url: str) -> tuple[int, str]:
    """:func:`http_get` from a thread, so the event loop keeps running."""
    return await asyncio.to_thread(http_get, url)


def require_tool(name: str) -> str:
    """Return the path of program ``name``; fail in CI, skip locally, if missing."""
    path = shutil.which(name)
    if path is not None:
        return path

    message = f"{name} is not installed (Debian package prometheus)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)
