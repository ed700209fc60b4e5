"""Connections to Redis, and the edge where Redis errors become bus errors.

Today a connection is a URL (``redis://``, ``rediss://``, ``unix://``); Sentinel
and Cluster settings will be added to :class:`~titan_bus.config.RedisConfig` and
resolved here, so no other module builds a client itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from titan_bus.config import RedisConfig
from titan_bus.errors import BusConnectionError

logger = logging.getLogger(__name__)

_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)


def async_client(config: RedisConfig) -> aioredis.Redis:
    """Return an asyncio Redis client for ``config`` (connects lazily)."""
    return aioredis.Redis.from_url(
        config.url,
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.connect_timeout_s,
        health_check_interval=30,
    )


def sync_client(config: RedisConfig) -> redis.Redis:
    """Return a blocking Redis client for ``config`` (connects lazily)."""
    return redis.Redis.from_url(
        config.url,
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.connect_timeout_s,
    )


def redacted(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url

    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


@contextlib.contextmanager
def redis_errors(action: str, url: str | None = None) -> Iterator[None]:
    """Translate Redis client errors raised inside the block.

    Args:
        action: what was being done, e.g. ``"publish to chat.v1"``.
        url: the server, named in the message (password redacted).

    Raises:
        BusConnectionError: Redis could not be reached or refused the command.
    """
    where = f" at {redacted(url)}" if url else ""
    try:
        yield
    except _RETRYABLE as exc:
        raise BusConnectionError(f"{action}: Redis{where} unreachable: {exc}") from exc
    except RedisError as exc:
        raise BusConnectionError(f"{action}: Redis{where} error: {exc}") from exc


@contextlib.asynccontextmanager
async def async_redis_errors(
    action: str, url: str | None = None
) -> AsyncIterator[None]:
    """Async form of :func:`redis_errors`, for ``async with`` blocks."""
    with redis_errors(action, url):
        yield


def is_connection_problem(exc: BaseException) -> bool:
    """Return True if ``exc`` means the link to Redis is down, not a bad command."""
    if isinstance(exc, BusConnectionError):
        exc = exc.__cause__ or exc

    return isinstance(exc, _RETRYABLE)
