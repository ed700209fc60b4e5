"""``titan-bus dlq``: list, show, replay and purge a topic's dead letters.

Every command takes ``--json``. A dead letter in JSON carries the event's
envelope (``id``, ``topic``, ``data``, ...) next to ``error_type``,
``error_message``, ``attempts``, ``first_failed_at``, ``last_failed_at`` and
``consumer``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from titan_bus.bus import EventBus
from titan_bus.cli.common import load, print_json, stderr, stdout
from titan_bus.connection import async_redis_errors
from titan_bus.deadletters import DeadLetter
from titan_bus.dlq import DeadLetters
from titan_bus.errors import ValidationError

T = TypeVar("T")

dlq_app = typer.Typer(
    help="Inspect, replay and purge a topic's dead letters.", no_args_is_help=True
)

TopicArg = Annotated[str, typer.Argument(help="Versioned topic, e.g. chat.v1.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _with_letters(ctx: typer.Context, work: Callable[[DeadLetters], Awaitable[T]]) -> T:
    """Run ``work`` against the configured bus's dead letters, then close it."""
    config = load(ctx)

    async def go() -> T:
        bus = EventBus(config)
        try:
            async with async_redis_errors("read dead letters", config.redis.url):
                return await work(bus.dead_letters)
        finally:
            await bus.aclose()

    return asyncio.run(go())


@dlq_app.command("list")
def list_letters(
    ctx: typer.Context,
    topic: TopicArg,
    limit: Annotated[int, typer.Option(min=1, help="Most dead letters shown.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List a topic's dead letters, oldest first."""
    letters = _with_letters(ctx, lambda d: d.entries(topic, limit=limit))
    if as_json:
        print_json([letter.to_json() for letter in letters])
        return

    table = Table(title=f"dead letters of {topic}", box=box.SIMPLE_HEAD)
    for column in ("event id", "lane", "attempts", "error", "last failed", "consumer"):
        table.add_column(column)
    for letter in letters:
        failure = letter.failure
        table.add_row(
            letter.event.id if letter.event else f"(raw {letter.dlq_id})",
            str(failure.get("lane", "")),
            str(failure.get("attempts", "")),
            escape(f"{failure.get('error_type')}: {failure.get('error_message')}"[:80]),
            str(failure.get("last_failed_at", "")),
            str(failure.get("consumer", "")),
        )
    if letters:
        stdout.print(table)
    stderr.print(f"{len(letters)} dead letters of {topic} shown")


@dlq_app.command("show")
def show(
    ctx: typer.Context, topic: TopicArg, event_id: str, as_json: JsonOpt = False
) -> None:
    """Show one dead letter in full: envelope, error, traceback."""
    letter = _with_letters(ctx, lambda d: d.find(topic, event_id))
    if as_json:
        print_json(letter.to_json())
        return

    stdout.print(_describe(letter))


@dlq_app.command("replay")
def replay(
    ctx: typer.Context,
    topic: TopicArg,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="Event id to replay (repeatable).")
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Replay every one.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Put dead letters back into their lanes: same event id, attempts reset."""
    if bool(ids) == replay_all:
        raise ValidationError("give either --id ID (one or more) or --all")

    replayed = _with_letters(
        ctx, lambda d: d.replay(topic, None if replay_all else ids)
    )
    if as_json:
        print_json({"topic": topic, "replayed": replayed})
    else:
        stdout.print(f"replayed {len(replayed)} dead letters of {topic}")


@dlq_app.command("purge")
def purge(
    ctx: typer.Context,
    topic: TopicArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete every dead letter of a topic (asks first unless --yes)."""
    count = _with_letters(ctx, lambda d: d.count(topic))
    if count and not yes:
        typer.confirm(f"delete {count} dead letters of {topic}?", abort=True)

    purged = _with_letters(ctx, lambda d: d.purge(topic)) if count else 0
    if as_json:
        print_json({"topic": topic, "purged": purged})
    else:
        stdout.print(f"purged {purged} dead letters of {topic}")


def _describe(letter: DeadLetter) -> str:
    body: dict[str, Any] = letter.to_json()
    trace = body.pop("traceback", "") or ""
    lines = [f"[bold]{key}[/bold]: {escape(str(value))}" for key, value in body.items()]
    if trace:
        lines.append(f"[bold]traceback[/bold]:\n{escape(trace)}")

    return "\n".join(lines)
