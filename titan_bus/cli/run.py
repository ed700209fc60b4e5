"""``titan-bus run``: load an app and run its handlers until told to stop.

Configuration. When ``--config`` is given, ``TITAN_CONFIG`` is set to that
file (as an absolute path) before the app is imported. An app that builds its
bus with :meth:`EventBus.from_config() <titan_bus.bus.EventBus.from_config>`,
the recommended way, therefore uses the file, as well as ``TITAN_REDIS_URL``
if set. An app that builds its own configuration keeps it: the CLI does not
rebuild a bus behind the app's back. It logs a warning instead, so nobody
wonders why ``--config`` had no effect.

Telemetry. Unless the app installed an observer of its own, the bus gets a
:class:`~titan_bus.telemetry.Telemetry` built from its configuration:
``/metrics``, ``/healthz`` and ``/readyz`` when ``metrics.port`` is set,
spans when ``tracing.exporter`` is, and in every case the event id, topic and
lane on the log records handlers write.

Shutdown. The first SIGTERM or SIGINT asks the processor to stop: it fetches
nothing more, in-flight handlers get ``shutdown_grace_s`` to finish, and the
command exits 0. A second signal stops at once; unfinished events stay
pending in Redis for another processor, and the exit status is 128 plus the
signal number, as shells report a death by signal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from titan_bus.bus import EventBus
from titan_bus.cli.common import EXIT_FAILURE, EXIT_OK, state
from titan_bus.cli.logs import LogFormat, LogLevel, configure_logging
from titan_bus.config import load_config
from titan_bus.connection import redacted
from titan_bus.errors import TitanBusError
from titan_bus.loader import load_app
from titan_bus.observe import Observer
from titan_bus.telemetry import Telemetry

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run(
    ctx: typer.Context,
    app: Annotated[
        str,
        typer.Option(
            "--app",
            "-a",
            help="The bus as module:attribute, e.g. examples.handlers:bus; the "
            "attribute may be an EventBus or a function returning one.",
        ),
    ],
    consumer: Annotated[
        str | None,
        typer.Option(help="Consumer name in the group; unique per process if unset."),
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="Lowest level logged.")
    ] = LogLevel.INFO,
    log_format: Annotated[
        LogFormat,
        typer.Option(case_sensitive=False, help="human, or json (one object a line)."),
    ] = LogFormat.HUMAN,
    app_dir: Annotated[
        Path, typer.Option(help="Directory put first on sys.path to import the app.")
    ] = Path("."),
) -> None:
    """Run the handlers of an app until SIGTERM or Ctrl-C, then exit 0.

    With --config, an app that builds its bus with EventBus.from_config() uses
    that file; an app that builds its own configuration keeps it (a warning
    says so).
    """
    configure_logging(level=log_level, fmt=log_format)
    config_path = state(ctx).config_path
    if config_path is not None:
        os.environ["TITAN_CONFIG"] = str(config_path.resolve())

    bus = load_app(app, app_dir=app_dir)
    _warn_if_config_ignored(bus, app)
    _log_start(bus, app)
    try:
        code = asyncio.run(serve(bus, consumer=consumer))
    except (TitanBusError, KeyboardInterrupt):
        raise
    except Exception:
        logger.exception("processor of %s failed", app)
        code = EXIT_FAILURE

    raise typer.Exit(code)


def _warn_if_config_ignored(bus: EventBus, app: str) -> None:
    asked = [n for n in ("TITAN_CONFIG", "TITAN_REDIS_URL") if os.environ.get(n)]
    if asked and bus.config != load_config():
        logger.warning(
            "app %s built its own configuration, so %s is not applied; build "
            "the bus with EventBus.from_config() to follow it",
            app,
            " and ".join(asked),
        )


def _log_start(bus: EventBus, app: str) -> None:
    topics = ", ".join(bus.subscriptions) or "no topics"
    logger.info(
        "loaded app %s: handlers for %s; group %s on %s (prefix %s)",
        app,
        topics,
        bus.config.processor.group,
        redacted(bus.config.redis.url),
        bus.config.key_prefix,
    )


async def serve(bus: EventBus, *, consumer: str | None = None) -> int:
    """Run ``bus`` until a stop signal, then shut it down; return the exit status.

    Raises:
        BusConnectionError: Redis does not answer at start.
        ConfigError: the telemetry asked for cannot be set up (a port in use).
    """
    telemetry = _telemetry_for(bus)
    loop = asyncio.get_running_loop()
    relay = SignalRelay(bus.config.processor.shutdown_grace_s)
    for signum in SIGNALS:
        loop.add_signal_handler(signum, relay.receive, signum)

    try:
        await _work(bus, consumer, relay.requested, telemetry)
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
        if telemetry is not None:
            await telemetry.aclose()
        await bus.aclose()

    logger.info("stopped cleanly")
    return EXIT_OK


def _telemetry_for(bus: EventBus) -> Telemetry | None:
    """Return telemetry to install on ``bus``, or None if the app chose its own.

    Even with metrics and tracing off it is installed: it is what puts the
    event id, topic and lane on the log records a handler writes.
    """
    if type(bus.observer) is not Observer:
        return None

    return Telemetry.from_config(bus.config)


async def _work(
    bus: EventBus,
    consumer: str | None,
    requested: asyncio.Event,
    telemetry: Telemetry | None,
) -> None:
    await bus.ping()
    if requested.is_set():
        return
    if telemetry is not None:
        await telemetry.start(bus)

    stopper = asyncio.create_task(_stop_when(requested, bus))
    try:
        await bus.run(consumer=consumer)
    finally:
        stopper.cancel()


async def _stop_when(requested: asyncio.Event, bus: EventBus) -> None:
    # A task of its own, so a signal that lands before bus.run() has created
    # the processor still reaches it once it exists.
    await requested.wait()
    bus.stop()


class SignalRelay:
    """Turns the first stop signal into a graceful stop, a second into an exit.

    The second signal ends the process on the spot with ``os._exit``: no task
    is awaited, so nothing that might hang (a handler, a Redis call) can hold
    it up. Nothing unfinished was acknowledged, so those events stay pending
    in Redis for another processor.

    Args:
        grace_s: how long in-flight handlers may take after the first signal,
            in seconds (named in the log line only).
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = asyncio.Event()

    def receive(self, signum: int) -> None:
        """Handle one SIGTERM or SIGINT (called by the event loop)."""
        name = signal.Signals(signum).name
        if not self.requested.is_set():
            logger.info(
                "received %s: finishing in-flight handlers (up to %.1f s); "
                "send it again to stop at once",
                name,
                self.grace_s,
            )
            self.requested.set()
            return

        logger.warning(
            "received %s again: exiting now; unfinished events stay pending "
            "for another processor",
            name,
        )
        _flush_output()
        os._exit(128 + signum)


def _flush_output() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
