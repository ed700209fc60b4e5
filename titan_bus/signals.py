"""Control signals a handler raises to steer delivery.

They are not errors: a handler that raises :class:`RetryLater` asks for another
attempt later, one that raises :class:`Reject` declares the event unprocessable.
Logs and metrics count them apart from real failures.
"""

from __future__ import annotations


class HandlerSignal(Exception):
    """Base of the control signals a handler may raise."""


class RetryLater(HandlerSignal):
    """Ask the bus to deliver this event again after ``after_s`` seconds.

    Args:
        after_s: delay before the next attempt, in seconds; ``None`` lets the
            topic's backoff policy choose.
        reason: free text kept with the event if it ends in the dead letters.
    """

    def __init__(self, after_s: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested by handler")
        self.after_s = after_s
        self.reason = reason


class Reject(HandlerSignal):
    """Send this event straight to the dead letters, without further attempts.

    Args:
        reason: why the event cannot be processed; stored with the dead letter.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason or "rejected by handler")
        self.reason = reason
