"""Shared fixtures: a private redis-server per test session, never the shared one.

The server is started by pytest-redis on a free loopback port. Each test gets
its own key prefix, so tests never see each other's streams and nothing has to
be flushed. If no redis-server can be started the session fails loudly.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

from titan_bus import EventBus
from titan_bus.config import BusConfig, parse_config
from titan_bus.embedded import find_redis_server

redis_server = factories.redis_proc(executable=find_redis_server(), port=None)


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisExecutor) -> str:
    """URL of the session's private Redis server."""
    return f"redis://{redis_server.host}:{redis_server.port}/0"


@pytest.fixture
def key_prefix() -> str:
    """A key prefix unique to this test."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def make_config(redis_url: str, key_prefix: str) -> Any:
    """Build a :class:`BusConfig` on the private server with this test's prefix.

    Keyword arguments are merged over a test-friendly base (short block time).
    """

    def make(**raw: Any) -> BusConfig:
        base: dict[str, Any] = {
            "redis": {"url": redis_url},
            "key_prefix": key_prefix,
            "processor": {"block_ms": 100, "shutdown_grace_s": 2},
        }
        for key, value in raw.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return parse_config(base, origin="test")

    return make


@pytest.fixture
async def bus(make_config: Any) -> AsyncIterator[EventBus]:
    """An :class:`EventBus` on the private server, closed after the test."""
    async with EventBus(make_config()) as the_bus:
        yield the_bus


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A blocking client on the private server, for direct inspection."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def config_file(tmp_path: Path, redis_url: str, key_prefix: str) -> Path:
    """A YAML config file on the private server with this test's prefix."""
    path = tmp_path / "eventbus.yaml"
    path.write_text(
        f"redis:\n  url: {redis_url}\nkey_prefix: {key_prefix}\n"
        "processor:\n  block_ms: 100\n  shutdown_grace_s: 2\n",
        encoding="utf-8",
    )
    return path
