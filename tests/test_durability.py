"""Durability: what a returned publish promises, on servers killed for real.

With ``appendfsync always`` every write is on disk before Redis answers, so
an event whose ``publish`` returned survives ``kill -9`` of the server. With
``min_replicas`` a publish returns only once that many replicas hold the
event (``WAIT``), and raises :class:`ReplicationError` when they do not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from servers import RedisServer, wait_for

from titan_bus import EventBus, SyncPublisher
from titan_bus.config import BusConfig
from titan_bus.errors import ReplicationError

TOPIC = "system.v1"


def stored_ids(client: redis.Redis, lane: str) -> list[str]:
    """Event ids stored in a lane, oldest first."""
    return [json.loads(fields[b"event"])["id"] for _, fields in client.xrange(lane)]


@pytest.mark.slow
async def test_every_returned_publish_survives_kill_9_with_appendfsync_always(
    tmp_path: Path, make_config: Any
) -> None:
    aof = ["--appendonly", "yes", "--appendfsync", "always"]
    with RedisServer(tmp_path / "aof", args=aof) as server:
        assert server.client().config_get("appendfsync") == {"appendfsync": "always"}
        config = make_config(redis={"url": server.url})
        async with EventBus(config) as bus:
            ids = [
                await bus.publish(TOPIC, {"name": "tick", "details": {"n": n}})
                for n in range(1000)
            ]
            lane = bus.keys.lane(TOPIC, "normal")

        server.kill()
        server.start()
        assert stored_ids(server.client(), lane) == ids


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and one replica in sync with it."""
    no_delay = ["--repl-diskless-sync-delay", "0"]
    with RedisServer(tmp_path / "primary", args=no_delay) as primary:
        follow = ["--replicaof", "127.0.0.1", str(primary.port)]
        with RedisServer(tmp_path / "replica", args=follow) as replica:
            client = replica.client()
            wait_for(
                lambda: client.info("replication")["master_link_status"] == "up",
                20,
                what="replica in sync",
            )
            yield primary, replica


def replica_config(make_config: Any, primary: RedisServer, **redis: Any) -> BusConfig:
    config: BusConfig = make_config(redis={"url": primary.url, **redis})
    return config


@pytest.mark.slow
async def test_publish_with_min_replicas_returns_once_a_replica_has_it(
    make_config: Any, replicated: tuple[RedisServer, RedisServer]
) -> None:
    primary, replica = replicated
    config = replica_config(make_config, primary, replica_timeout_ms=5000)
    async with EventBus(config) as bus:
        event_id = await bus.publish(TOPIC, {"name": "a"}, min_replicas=1)
        lane = bus.keys.lane(TOPIC, "normal")
        # No polling: WAIT returned, so the replica already holds it.
        assert stored_ids(replica.client(), lane) == [event_id]

    with SyncPublisher(replica_config(make_config, primary, min_replicas=1)) as pub:
        second = pub.publish(TOPIC, {"name": "b"})
    assert stored_ids(replica.client(), lane) == [event_id, second]


@pytest.mark.slow
async def test_publish_raises_replication_error_when_no_replica_confirms(
    make_config: Any, replicated: tuple[RedisServer, RedisServer]
) -> None:
    primary, replica = replicated
    replica.kill()
    config = replica_config(make_config, primary, replica_timeout_ms=200)

    async with EventBus(config) as bus:
        started = time.monotonic()
        with pytest.raises(ReplicationError, match="0 of 1 replicas"):
            await bus.publish(TOPIC, {"name": "lonely"}, min_replicas=1)
        assert 0.2 <= time.monotonic() - started < 5
        assert await bus.publish(TOPIC, {"name": "no wait asked"})
        lane = bus.keys.lane(TOPIC, "normal")

    sync_config = replica_config(make_config, primary, min_replicas=1)
    with SyncPublisher(sync_config) as pub, pytest.raises(ReplicationError):
        pub.publish(TOPIC, {"name": "lonely too"})

    # The primary holds every event even when replicas did not confirm.
    assert len(stored_ids(primary.client(), lane)) == 3
