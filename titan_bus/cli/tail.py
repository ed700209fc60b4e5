"""``titan-bus tail``: follow the events of a topic as they arrive.

Tail reads with plain ``XREAD BLOCK``, not through a consumer group: it is a
read-only observer that acknowledges nothing and takes no work from
processors. It starts after the newest entry of every lane (or at the start
with ``--from-start``) and keeps the last id seen per lane, so nothing
published between two reads is missed.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import redis
import typer
from redis.typing import KeyT, StreamIdT
from rich.text import Text

from titan_bus.cli.common import as_text, load, print_json, stderr, stdout
from titan_bus.codec import decode_entry, raw_fields_text
from titan_bus.config import BusConfig
from titan_bus.connection import redis_errors, sync_client
from titan_bus.errors import MalformedEntryError
from titan_bus.events import Event
from titan_bus.keys import KeySpace
from titan_bus.topics import TopicRegistry

TAIL_BLOCK_MS = 1000
"""Longest single XREAD wait, in milliseconds; short so Ctrl-C feels instant."""
LANE_STYLES = {"high": "bold red", "normal": "green", "low": "dim"}

Entry = tuple[str, str, dict[bytes, bytes]]
"""One stream entry read: lane name, entry id, raw fields."""


def tail(
    ctx: typer.Context,
    topic: Annotated[str, typer.Argument(help="Versioned topic, e.g. chat.v1.")],
    lane: Annotated[
        str | None, typer.Option("--lane", "-l", help="Follow only this lane.")
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="Print existing entries first.")
    ] = False,
    count: Annotated[
        int | None,
        typer.Option("--count", "-n", min=1, help="Exit after this many entries."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each event as CloudEvents JSON.")
    ] = False,
) -> None:
    """Follow live events of TOPIC (all lanes), one line each; Ctrl-C to stop."""
    config = load(ctx)
    spec = TopicRegistry.from_config(config).get(topic)
    lanes = [spec.lane_for(lane)] if lane is not None else list(spec.lanes)
    keys = {KeySpace(config.key_prefix).lane(topic, name): name for name in lanes}
    client = sync_client(config.redis)

    try:
        follow(
            client,
            config,
            topic,
            keys,
            from_start=from_start,
            count=count,
            as_json=as_json,
        )
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


def follow(
    client: redis.Redis,
    config: BusConfig,
    topic: str,
    keys: dict[str, str],
    *,
    from_start: bool,
    count: int | None,
    as_json: bool,
) -> None:
    """Print entries of ``topic``'s lanes ``keys`` (key -> lane) until ``count``.

    Raises:
        BusConnectionError: Redis is unreachable or refused a read.
    """
    url = config.redis.url
    block_ms = min(TAIL_BLOCK_MS, int(config.redis.socket_timeout_s * 500))
    with redis_errors("find where the lanes end", url):
        last = _start_ids(client, list(keys), from_start=from_start)
    where = "the start" if from_start else "now on"
    stderr.print(
        f"following {topic} lanes {', '.join(keys.values())} from {where}; "
        "Ctrl-C to stop",
        markup=False,
        soft_wrap=True,
    )

    printed = 0
    while count is None or printed < count:
        with redis_errors("read the lanes", url):
            streams: dict[KeyT, StreamIdT] = {k: v for k, v in last.items()}
            reply = client.xread(streams, count=100, block=block_ms)
        for entry in _entries(reply, keys, last):
            show(entry, as_json=as_json)
            printed += 1
            if count is not None and printed >= count:
                break


def _start_ids(
    client: redis.Redis, keys: list[str], *, from_start: bool
) -> dict[str, str]:
    if from_start:
        return {key: "0-0" for key in keys}

    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.xrevrange(key, count=1)
    newest = pipe.execute()

    return {
        key: as_text(entries[0][0]) if entries else "0-0"
        for key, entries in zip(keys, newest, strict=True)
    }


def _entries(reply: Any, keys: dict[str, str], last: dict[str, str]) -> list[Entry]:
    """Return the entries of an XREAD reply in id order; advance ``last``."""
    found: list[tuple[tuple[int, int], Entry]] = []
    for key, items in reply or []:
        key_text = as_text(key)
        for entry_id, fields in items:
            eid = as_text(entry_id)
            last[key_text] = eid
            found.append((_order(eid), (keys[key_text], eid, fields or {})))
    found.sort(key=lambda pair: pair[0])

    return [entry for _, entry in found]


def _order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")

    return int(millis), int(seq or 0)


def show(entry: Entry, *, as_json: bool) -> None:
    """Print one entry: the event, or a note that the entry is malformed."""
    lane, entry_id, fields = entry
    try:
        event = decode_entry(fields)
    except MalformedEntryError as exc:
        _show_malformed(lane, entry_id, fields, exc, as_json=as_json)
        return

    if as_json:
        print_json(event.to_cloudevent())
    else:
        stdout.print(_event_line(lane, event), soft_wrap=True)


def _event_line(lane: str, event: Event) -> Text:
    stamp = event.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data = json.dumps(event.data, ensure_ascii=False, sort_keys=True)

    return Text.assemble(
        (stamp, "dim"),
        "  ",
        (f"{lane:<6}", LANE_STYLES.get(lane, "")),
        "  ",
        (event.id, "cyan"),
        "  ",
        (event.source, "magenta"),
        "  ",
        data,
    )


def _show_malformed(
    lane: str,
    entry_id: str,
    fields: dict[bytes, bytes],
    exc: MalformedEntryError,
    *,
    as_json: bool,
) -> None:
    raw = raw_fields_text(fields)
    if as_json:
        print_json(
            {
                "malformed": True,
                "lane": lane,
                "entry_id": entry_id,
                "error": str(exc),
                "fields": raw,
            }
        )
        return

    shown = json.dumps(raw, ensure_ascii=False, sort_keys=True)
    stdout.print(
        Text.assemble(
            (f"entry {entry_id}", "dim"),
            "  ",
            (f"{lane:<6}", LANE_STYLES.get(lane, "")),
            "  ",
            ("malformed", "bold yellow"),
            f": {exc}  {shown}",
        ),
        soft_wrap=True,
    )
