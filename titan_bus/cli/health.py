"""``titan-bus health``: is a processor ready? Exit 0 if so, 1 if not.

It asks the processor's ``/readyz`` (see :mod:`titan_bus.telemetry.health`),
at ``--url`` or else at ``metrics.host``:``metrics.port`` of the
configuration (a wildcard host such as ``0.0.0.0`` is asked on loopback).
Fit for a container health check::

    HEALTHCHECK CMD titan-bus health --url http://127.0.0.1:9464/readyz
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from typing import Annotated

import typer

from titan_bus.cli.common import EXIT_FAILURE, EXIT_OK, fail, load, one_line
from titan_bus.config import MetricsConfig
from titan_bus.errors import ConfigError

WILDCARD_HOSTS = {"0.0.0.0", "::", ""}

# The processor is on this host or a known address: never ask through a proxy.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            help="The /readyz URL, e.g. http://127.0.0.1:9464/readyz; default: "
            "metrics.host and metrics.port of the configuration."
        ),
    ] = None,
    timeout_s: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds to wait for an answer.")
    ] = 3.0,
) -> None:
    """Check that a processor is ready (/readyz answers 200); exit 0 or 1."""
    target = url or readyz_url(load(ctx).metrics)
    ready, message = check_ready(target, timeout_s=timeout_s)
    if not ready:
        fail(message, code=EXIT_FAILURE)

    sys.stdout.write(message + "\n")
    raise typer.Exit(EXIT_OK)


def readyz_url(metrics: MetricsConfig) -> str:
    """Return the ``/readyz`` URL of a processor configured with ``metrics``.

    Raises:
        ConfigError: no fixed port is configured (unset, or 0 for any port).
    """
    if not metrics.port:
        raise ConfigError(
            "metrics.port is not set to a fixed port in the configuration, so "
            "the processor's /readyz cannot be found; pass --url"
        )

    host = "127.0.0.1" if metrics.host in WILDCARD_HOSTS else metrics.host
    if ":" in host:
        host = f"[{host}]"

    return f"http://{host}:{metrics.port}/readyz"


def check_ready(url: str, *, timeout_s: float = 3.0) -> tuple[bool, str]:
    """GET ``url``; return whether it answered 200, and one line saying so."""
    try:
        with _DIRECT.open(url, timeout=timeout_s) as reply:
            body = reply.read(200).decode("utf-8", "replace").strip()
            return True, f"{body or 'ready'} ({url})"
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode("utf-8", "replace").strip()
        return False, one_line(f"{body or 'not ready'} ({url} answered {exc.code})")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, one_line(f"no answer from {url}: {reason}")
