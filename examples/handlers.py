"""An app whose handlers log every event of the four built-in topics.

Run it with the processor::

    titan-bus run --app examples.handlers:bus

The bus is built from ``$TITAN_CONFIG`` or ``config/eventbus.yaml`` (with
``$TITAN_REDIS_URL`` on top) when this module is imported. Each handler logs
one INFO line naming the topic, the lane, the event id and the payload fields
that matter.
"""

from __future__ import annotations

import logging

from titan_bus import BusConfig, Event, EventBus

logger = logging.getLogger(__name__)

TEXT_SHOWN = 80


async def on_chat(event: Event) -> None:
    """Log a ``chat.v1`` message: conversation, role and the start of the text."""
    text = event.data["text"]
    shown = text if len(text) <= TEXT_SHOWN else text[:TEXT_SHOWN] + "..."
    logger.info(
        "chat.v1 event %s lane=%s conversation=%s role=%s text=%r",
        event.id,
        event.priority,
        event.data["conversation_id"],
        event.data["role"],
        shown,
    )


async def on_fs(event: Event) -> None:
    """Log an ``fs.v1`` change: kind, path, size and, for moves, the old path."""
    logger.info(
        "fs.v1 event %s lane=%s change=%s path=%s size=%s%s",
        event.id,
        event.priority,
        event.data["change"],
        event.data["path"],
        event.data.get("size", "-"),
        f" from={event.data['src_path']}" if "src_path" in event.data else "",
    )


async def on_system(event: Event) -> None:
    """Log a ``system.v1`` notice: its name and details."""
    logger.info(
        "system.v1 event %s lane=%s name=%s details=%s source=%s",
        event.id,
        event.priority,
        event.data["name"],
        event.data.get("details", {}),
        event.source,
    )


async def on_plugin(event: Event) -> None:
    """Log a ``plugin.v1`` event: the plugin, the event name and its data keys."""
    logger.info(
        "plugin.v1 event %s lane=%s plugin=%s name=%s data_keys=%s",
        event.id,
        event.priority,
        event.data["plugin"],
        event.data["name"],
        sorted(event.data.get("data", {})),
    )


HANDLERS = {
    "chat.v1": on_chat,
    "fs.v1": on_fs,
    "system.v1": on_system,
    "plugin.v1": on_plugin,
}


def build_bus(config: BusConfig | None = None) -> EventBus:
    """Return a bus with the logging handlers subscribed.

    Args:
        config: the configuration; loaded from the environment or
            ``config/eventbus.yaml`` when None.
    """
    app = EventBus(config) if config is not None else EventBus.from_config()
    for topic, handler in HANDLERS.items():
        app.subscribe(topic)(handler)

    return app


bus = build_bus()
