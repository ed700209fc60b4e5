"""The ``titan-bus`` command: the root Typer app and the process entry point.

Each command lives in a module of its own under :mod:`titan_bus.cli`; this
module only wires them together, reads the global options and turns expected
errors into one ``error: ...`` line on stderr with a non-zero exit status:
2 when the input given was rejected (a payload, a topic name), 1 for anything
else (Redis unreachable, an invalid configuration, an app that cannot load).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from titan_bus import __version__
from titan_bus.cli.common import CliState, exit_code_for, fail
from titan_bus.cli.config_check import config_app
from titan_bus.cli.dlq import dlq_app
from titan_bus.cli.health import health
from titan_bus.cli.publish import publish
from titan_bus.cli.run import run
from titan_bus.cli.streams import streams
from titan_bus.cli.tail import tail
from titan_bus.errors import TitanBusError

app = typer.Typer(
    name="titan-bus",
    help="Titan Event Bus: typed, at-least-once events on Redis Streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(run)
app.command()(publish)
app.command()(streams)
app.command()(tail)
app.command()(health)
app.add_typer(config_app, name="config")
app.add_typer(dlq_app, name="dlq")


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"titan-bus {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config file; default: $TITAN_CONFIG, then "
            "config/eventbus.yaml, then built-in defaults. TITAN_REDIS_URL "
            "overrides the Redis URL either way.",
            dir_okay=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print version."
        ),
    ] = False,
) -> None:
    """Titan Event Bus: typed, at-least-once events on Redis Streams."""
    ctx.obj = CliState(config_path=config)


def main() -> None:
    """Entry point of the ``titan-bus`` console script."""
    try:
        app()
    except TitanBusError as exc:
        fail(str(exc), code=exit_code_for(exc))
    except BrokenPipeError:
        # The reader went away (``titan-bus tail | head``); say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
