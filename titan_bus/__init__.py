"""Titan Event Bus: typed, at-least-once events for Python on Redis Streams."""

from titan_bus.bus import EventBus
from titan_bus.config import BusConfig, load_config
from titan_bus.errors import (
    AppLoadError,
    BusConnectionError,
    ConfigError,
    MalformedEntryError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    TitanBusError,
    UnknownTopicError,
    ValidationError,
)
from titan_bus.events import Event
from titan_bus.signals import Reject, RetryLater
from titan_bus.sync import SyncPublisher

__all__ = [
    "AppLoadError",
    "BusConfig",
    "BusConnectionError",
    "ConfigError",
    "Event",
    "EventBus",
    "MalformedEntryError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "Reject",
    "RetryLater",
    "SyncPublisher",
    "TitanBusError",
    "UnknownTopicError",
    "ValidationError",
    "load_config",
]

__version__ = "0.1.0"
