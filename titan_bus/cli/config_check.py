"""``titan-bus config check``: validate a configuration file and summarise it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from titan_bus.cli.common import state, stdout
from titan_bus.config import DEFAULT_CONFIG_PATH, load_config
from titan_bus.connection import redacted
from titan_bus.topics import Topic, TopicRegistry

config_app = typer.Typer(help="Inspect the bus configuration.", no_args_is_help=True)


@config_app.command("check")
def check(
    ctx: typer.Context,
    path: Annotated[
        Path | None,
        typer.Argument(
            help="The YAML file; default: --config, $TITAN_CONFIG, "
            f"then {DEFAULT_CONFIG_PATH}."
        ),
    ] = None,
) -> None:
    """Validate a configuration file and print its topics.

    Exits 1 with one line naming the key and what was expected if the file is
    invalid. Environment overrides (TITAN_REDIS_URL) are applied as at run time.
    """
    chosen = path if path is not None else state(ctx).config_path
    config = load_config(chosen)
    registry = TopicRegistry.from_config(config)

    origin = _origin(chosen)
    stdout.print(
        f"ok: {origin}; redis {redacted(config.redis.url)}, "
        f"key prefix {config.key_prefix!r}, group {config.processor.group!r}",
        markup=False,
        soft_wrap=True,
    )
    stdout.print(topics_table(list(registry)))


def _origin(chosen: Path | None) -> str:
    """Name the file :func:`load_config` read, in the same order it looks."""
    if chosen is not None:
        return str(chosen)
    if os.environ.get("TITAN_CONFIG"):
        return os.environ["TITAN_CONFIG"]

    return (
        str(DEFAULT_CONFIG_PATH)
        if DEFAULT_CONFIG_PATH.is_file()
        else "built-in defaults"
    )


def topics_table(topics: list[Topic]) -> Table:
    """Return a table of the topics' resolved settings."""
    table = Table(
        title="topics", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False
    )
    table.add_column("topic", no_wrap=True)
    table.add_column("lanes:weight", no_wrap=True)
    for name in ("maxlen", "rate/s", "retries", "max bytes"):
        table.add_column(name, justify="right", no_wrap=True)

    for topic in topics:
        table.add_row(
            topic.name,
            " ".join(f"{lane}:{weight}" for lane, weight in topic.lanes.items()),
            "unbounded" if topic.maxlen is None else str(topic.maxlen),
            "-" if topic.rate_limit is None else f"{topic.rate_limit:g}",
            str(topic.retry_limit),
            str(topic.max_payload_bytes),
        )

    return table
