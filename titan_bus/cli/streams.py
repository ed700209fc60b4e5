"""``titan-bus streams``: length, consumer groups, dead letters, delayed events.

Everything is read in two pipelined round trips: ``XLEN`` and ``XINFO GROUPS``
per lane, ``XLEN`` of each topic's dead-letter stream and ``ZCARD`` of its
delayed set; then ``ZCARD`` of each group's own retry set, so "delayed"
counts delayed publishes and retries alike. A lane that does not exist yet
shows length 0 and no groups.

Lag is what Redis reports in ``XINFO GROUPS``: the entries not yet delivered
to the group. Redis answers nil when it cannot tell (after entries were
deleted from the middle of a stream, for one); that is shown as ``?`` and as
JSON ``null``, never as a reassuring 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Any

import redis
import typer
from redis.exceptions import ResponseError
from rich import box
from rich.table import Table

from titan_bus.cli.common import as_text, load, print_json, stdout
from titan_bus.config import BusConfig
from titan_bus.connection import redacted, redis_errors, sync_client
from titan_bus.errors import BusConnectionError
from titan_bus.keys import KeySpace
from titan_bus.topics import TopicRegistry


@dataclass(frozen=True)
class GroupInfo:
    """One consumer group on one lane, as ``XINFO GROUPS`` reports it."""

    name: str
    consumers: int
    pending: int
    lag: int | None
    last_delivered_id: str


@dataclass(frozen=True)
class LaneInfo:
    """One lane stream: its key, weight, length in entries and consumer groups."""

    lane: str
    key: str
    length: int
    groups: list[GroupInfo]
    weight: int = 0


@dataclass(frozen=True)
class TopicInfo:
    """One topic: its lanes, dead letters, delayed events and rate limit.

    ``delayed`` counts delayed publishes and every group's retries not yet due.

    ``rate_limit`` is the configured limit in events handled per second across
    all processors (None: unlimited); ``strict_priority`` says whether higher
    lanes always go first instead of sharing by weight.
    """

    topic: str
    dead_letters: int
    delayed: int
    lanes: list[LaneInfo]
    rate_limit: float | None = None
    strict_priority: bool = False


def streams(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list for scripts.")
    ] = False,
) -> None:
    """Show per topic and lane: length, groups, pending, lag, dead letters, delayed."""
    config = load(ctx)
    client = sync_client(config.redis)
    try:
        topics = collect(client, config)
    finally:
        client.close()

    if as_json:
        print_json([asdict(topic) for topic in topics])
    else:
        stdout.print(render(topics, config))


def collect(client: redis.Redis, config: BusConfig) -> list[TopicInfo]:
    """Read the state of every topic's streams in two round trips.

    Raises:
        BusConnectionError: Redis is unreachable or refused a command.
    """
    registry = TopicRegistry.from_config(config)
    keys = KeySpace(config.key_prefix)
    pipe = client.pipeline(transaction=False)
    for topic in registry:
        for lane in topic.lanes:
            pipe.xlen(keys.lane(topic.name, lane))
            pipe.xinfo_groups(keys.lane(topic.name, lane))
        pipe.xlen(keys.dead_letters(topic.name))
        pipe.zcard(keys.delayed(topic.name))
    with redis_errors("read stream info", config.redis.url):
        replies = iter(pipe.execute(raise_on_error=False))

    found = _assemble(registry, keys, replies)
    return _with_retries(client, config, keys, found)


def _with_retries(
    client: redis.Redis, config: BusConfig, keys: KeySpace, found: list[TopicInfo]
) -> list[TopicInfo]:
    """Add each group's retries waiting in its own delayed set to ``delayed``."""
    groups = [
        (info, sorted({g.name for lane in info.lanes for g in lane.groups}))
        for info in found
    ]
    pipe = client.pipeline(transaction=False)
    for info, names in groups:
        for name in names:
            pipe.zcard(keys.retry_delayed(info.topic, name))
    with redis_errors("read retry counts", config.redis.url):
        counts = iter(pipe.execute())

    return [
        replace(info, delayed=info.delayed + sum(next(counts) for _ in names))
        for info, names in groups
    ]


def _assemble(
    registry: TopicRegistry, keys: KeySpace, replies: Iterator[Any]
) -> list[TopicInfo]:
    found = []
    for topic in registry:
        lanes = []
        for lane in topic.lanes:
            key = keys.lane(topic.name, lane)
            length = _checked(next(replies), key)
            groups = _groups(next(replies), key)
            weight = topic.lanes[lane]
            lanes.append(LaneInfo(lane, key, length, groups, weight))
        dead = _checked(next(replies), keys.dead_letters(topic.name))
        delayed = _checked(next(replies), keys.delayed(topic.name))
        found.append(
            TopicInfo(
                topic.name,
                dead,
                delayed,
                lanes,
                rate_limit=topic.rate_limit,
                strict_priority=topic.strict_priority,
            )
        )

    return found


def _checked(reply: Any, key: str) -> Any:
    if isinstance(reply, Exception):
        raise BusConnectionError(f"reading {key}: Redis error: {reply}") from reply

    return reply


def _groups(reply: Any, key: str) -> list[GroupInfo]:
    if isinstance(reply, ResponseError) and "no such key" in str(reply).lower():
        return []

    return [
        GroupInfo(
            name=as_text(group["name"]),
            consumers=int(group["consumers"]),
            pending=int(group["pending"]),
            lag=None if group.get("lag") is None else int(group["lag"]),
            last_delivered_id=as_text(group["last-delivered-id"]),
        )
        for group in _checked(reply, key)
    ]


def render(topics: list[TopicInfo], config: BusConfig) -> Table:
    """Return a table with one row per lane and consumer group."""
    table = Table(
        title=f"streams under {config.key_prefix!r} at {redacted(config.redis.url)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("topic", no_wrap=True)
    table.add_column("lane", no_wrap=True)
    table.add_column("length", justify="right")
    table.add_column("group", no_wrap=True)
    for name in ("consumers", "pending", "lag", "dead letters", "delayed"):
        table.add_column(name, justify="right")
    table.add_column("rate limit", justify="right")

    for topic in topics:
        first = True
        for lane in topic.lanes:
            for row in _lane_rows(lane, strict=topic.strict_priority):
                shared = (
                    (str(topic.dead_letters), str(topic.delayed), _rate(topic))
                    if first
                    else ("", "", "")
                )
                name = topic.topic if first else ""
                table.add_row(name, *row, *shared)
                first = False
        table.add_section()

    return table


def _rate(topic: TopicInfo) -> str:
    return "-" if topic.rate_limit is None else f"{topic.rate_limit:g}/s"


def _lane_rows(lane: LaneInfo, *, strict: bool) -> list[tuple[str, ...]]:
    label = f"{lane.lane} ({'strict' if strict else f'w{lane.weight}'})"
    if not lane.groups:
        return [(label, str(lane.length), "-", "", "", "")]

    rows: list[tuple[str, ...]] = []
    for index, group in enumerate(lane.groups):
        head = (label, str(lane.length)) if index == 0 else ("", "")
        lag = "?" if group.lag is None else str(group.lag)
        rows.append((*head, group.name, str(group.consumers), str(group.pending), lag))

    return rows
