"""The exception tree of Titan Event Bus.

Every error the bus raises on purpose derives from :class:`TitanBusError`, so a
caller can catch the whole family in one clause. Redis client errors are
translated at the edge (see :mod:`titan_bus.connection`) and chained with
``raise ... from exc`` so the original cause stays visible.

Handler control signals (:class:`~titan_bus.signals.RetryLater`,
:class:`~titan_bus.signals.Reject`) are deliberately *not* part of this tree:
they express intent, not failure.
"""

from __future__ import annotations


class TitanBusError(Exception):
    """Root of every error raised by Titan Event Bus."""


class ConfigError(TitanBusError):
    """Raised when a configuration file or value is invalid or cannot be read."""


class BusConnectionError(TitanBusError):
    """Raised when Redis cannot be reached or a command fails on the wire."""


class ReplicationError(BusConnectionError):
    """Raised when fewer replicas than required confirmed a write in time."""


class ValidationError(TitanBusError):
    """Raised when an event or its payload does not satisfy its topic's schema."""


class UnknownTopicError(ValidationError):
    """Raised when a topic name is not registered with the bus."""


class PayloadTooLargeError(ValidationError):
    """Raised when an event's serialized data exceeds the allowed size in bytes."""


class MalformedEntryError(ValidationError):
    """Raised when a stream entry cannot be decoded into an event envelope."""


class PermissionDeniedError(TitanBusError):
    """Raised when a publisher or reader is not allowed to touch a topic."""


class RateLimitError(TitanBusError):
    """Raised when a rate limit or quota refuses an operation.

    Attributes:
        retry_after_s: seconds after which the operation may succeed.
    """

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BacklogFullError(TitanBusError):
    """Raised when a topic holds ``max_backlog`` unacknowledged events already."""


class AppLoadError(TitanBusError):
    """Raised when ``module:attribute`` does not name a loadable bus application."""
