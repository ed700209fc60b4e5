"""What every command shares: the global options, exit codes, error output.

Commands read the global ``--config`` through :func:`load`, write results to
stdout and diagnostics to stderr, and raise :class:`~titan_bus.errors.TitanBusError`
subclasses for expected failures; :func:`exit_code_for` and :func:`fail` turn
those into one ``error: ...`` line and a non-zero exit status.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from titan_bus.config import BusConfig, load_config
from titan_bus.errors import TitanBusError, ValidationError

EXIT_OK = 0
EXIT_FAILURE = 1
"""Exit status of a failure at run time: Redis, configuration, loading the app."""
EXIT_INVALID = 2
"""Exit status when the input given on the command line was rejected."""

PIPED_WIDTH = 160
"""Width in columns of tables written to a pipe or file (a terminal uses its own)."""

stdout = Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)
"""Console for results (tables, events); never interprets markup in data."""
stderr = Console(stderr=True, highlight=False)
"""Console for banners and diagnostics."""


@dataclass(frozen=True)
class CliState:
    """Options given before the command name, shared by all commands.

    Attributes:
        config_path: the ``--config`` file, or None to use ``$TITAN_CONFIG``,
            then ``config/eventbus.yaml``, then built-in defaults.
    """

    config_path: Path | None = None


def state(ctx: typer.Context) -> CliState:
    """Return the global options stored on the root context."""
    found = ctx.find_root().obj

    return found if isinstance(found, CliState) else CliState()


def load(ctx: typer.Context) -> BusConfig:
    """Load the configuration the global options point at.

    Raises:
        ConfigError: the file is missing or invalid; the message names the key.
    """
    return load_config(state(ctx).config_path)


def exit_code_for(exc: TitanBusError) -> int:
    """Return the exit status for an expected error."""
    return EXIT_INVALID if isinstance(exc, ValidationError) else EXIT_FAILURE


def one_line(message: str) -> str:
    """Return ``message`` with runs of white space (newlines too) made one space."""
    return " ".join(message.split())


def fail(message: str, *, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: <message>`` on stderr as one line and exit with ``code``."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def print_json(value: Any) -> None:
    """Write ``value`` as one line of JSON on stdout and flush it."""
    sys.stdout.write(json.dumps(value, ensure_ascii=False, sort_keys=True) + "\n")
    sys.stdout.flush()


def as_text(value: bytes | str) -> str:
    """Return a Redis reply value as text; undecodable bytes become escapes."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")

    return value
