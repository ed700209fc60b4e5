"""``titan-bus publish``: validate one event and write it to its lane."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from titan_bus.cli.common import load, print_json, stderr
from titan_bus.errors import ValidationError
from titan_bus.events import DEFAULT_PRIORITY
from titan_bus.sync import SyncPublisher

CLI_SOURCE = "titan.cli"


def publish(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="Versioned topic, e.g. chat.v1.")],
    payload: Annotated[
        str,
        typer.Argument(
            help="The payload: a JSON object, @FILE to read one, or - for stdin."
        ),
    ],
    priority: Annotated[
        str, typer.Option("--priority", "-p", help="Lane: high, normal or low.")
    ] = DEFAULT_PRIORITY,
    source: Annotated[
        str, typer.Option("--source", help="Publisher identity on the event.")
    ] = CLI_SOURCE,
    subject: Annotated[
        str | None, typer.Option("--subject", help="Subject within the source.")
    ] = None,
    delay_s: Annotated[
        float | None,
        typer.Option("--delay", metavar="SECONDS", help="Deliver after this delay."),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at", metavar="TIME", help="Deliver at this ISO 8601 time with zone."
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Publishing again with the same key stores one event."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"id": ...} instead of the id.')
    ] = False,
) -> None:
    """Publish one event and print its id.

    The payload is checked against the topic's schema before anything is
    written; a rejected payload exits with status 2 and names the field.
    """
    data = read_payload(payload)
    options: dict[str, Any] = {"priority": priority, "subject": subject}
    if delay_s is not None or at is not None:
        options.update(delay_s=delay_s, at=parse_time(at) if at else None)
    if idempotency_key is not None:
        options["idempotency_key"] = idempotency_key
    config = load(ctx)

    with SyncPublisher(config, source=source) as publisher:
        event_id = publisher.publish(topic, data, **options)

    if as_json:
        print_json({"id": event_id, "topic": topic, "priority": priority})
    else:
        sys.stdout.write(event_id + "\n")


def parse_time(text: str) -> datetime:
    """Return the ISO 8601 time ``text`` (``Z`` or an offset names the zone).

    Raises:
        ValidationError: ``text`` is not an ISO 8601 time.
    """
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValidationError(
            f"--at {text!r} is not an ISO 8601 time such as 2030-01-31T09:00:00Z"
        ) from exc


def read_payload(argument: str) -> Any:
    """Return the JSON value given literally, as ``@file``, or as ``-`` (stdin).

    Raises:
        ValidationError: the file cannot be read or the text is not JSON; the
            message says where the text came from and where parsing stopped.
    """
    if argument == "-":
        if sys.stdin.isatty():
            stderr.print("reading the payload from stdin; end it with Ctrl-D")
        origin, text = "stdin", sys.stdin.read()
    elif argument.startswith("@"):
        origin, text = _read_file(Path(argument[1:]))
    else:
        origin, text = "the argument", argument

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"payload in {origin} is not valid JSON: {exc}") from exc


def _read_file(path: Path) -> tuple[str, str]:
    try:
        return str(path), path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(
            f"cannot read payload file {path}: {exc.strerror}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValidationError(f"payload file {path} is not UTF-8: {exc}") from exc
