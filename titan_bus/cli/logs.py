"""Log output of the CLI: a human format by default, one JSON object a line.

The library only creates named loggers; attaching handlers is the CLI's job,
done once by :func:`configure_logging`. Context that a log call passes through
``extra=`` (``topic``, ``lane``, ``event_id`` ...) becomes fields of the JSON
object, so log pipelines can filter on them without parsing messages; while a
handler runs, :mod:`titan_bus.telemetry.logcontext` fills in the event id,
topic, lane and trace id of the delivery by itself.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from titan_bus.telemetry.logcontext import install_log_context

CONTEXT_FIELDS = (
    "topic",
    "lane",
    "event_id",
    "group",
    "consumer",
    "attempt",
    "trace_id",
    "span_id",
)
"""Record attributes (set with ``extra=``) copied into JSON log lines."""

HUMAN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class LogLevel(StrEnum):
    """Levels accepted by ``--log-level``."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(StrEnum):
    """Formats accepted by ``--log-format``."""

    HUMAN = "human"
    JSON = "json"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, message, context.

    ``time`` is UTC in ISO 8601 with milliseconds. A traceback, if any, is in
    ``exc_info`` as one string.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a single line of JSON."""
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        body: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                body[name] = value
        if record.exc_info:
            body["exc_info"] = self.formatException(record.exc_info)

        return json.dumps(body, ensure_ascii=False, default=str)


def configure_logging(
    *, level: LogLevel = LogLevel.INFO, fmt: LogFormat = LogFormat.HUMAN
) -> None:
    """Send all log records at ``level`` and above to stderr in format ``fmt``.

    Replaces handlers a previous call installed on the root logger.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(HUMAN_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    install_log_context(root)
