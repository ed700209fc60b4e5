"""Processors as real processes, killed with SIGKILL or stopped with SIGTERM.

These are the proof of at-least-once delivery across crashes: nothing the
tests publish may be lost, left pending, or wrongly dead-lettered, whatever
moment a processor dies at. Handlers (``tests/apps/workers.py``) record each
start and finish in Redis, so deliveries can be counted across processes.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from apps.workers import Records
from servers import (
    ProcessorPool,
    ProcessorProcess,
    consumers_of,
    processor_pool,
    quick_config,
    wait_for,
    write_config,
)

from titan_bus import SyncPublisher
from titan_bus.config import parse_config
from titan_bus.keys import KeySpace

TOPIC = "system.v1"
GROUP = "titan"
LANES = ("high", "normal", "low")


class Run:
    """One test's bus: config file, publisher, key names and record keys."""

    def __init__(self, tmp_path: Path, raw: dict[str, Any]) -> None:
        self.config_path = write_config(tmp_path / "bus.yaml", raw)
        self.publisher = SyncPublisher(parse_config(raw))
        self.keys = KeySpace(raw["key_prefix"])
        self.records = Records(raw["key_prefix"])
        self.lane = self.keys.lane(TOPIC, "normal")

    def publish_work(self, count: int, *, sleep_s: float, start: int = 0) -> list[str]:
        """Publish ``count`` events whose handler sleeps ``sleep_s``."""
        return self.publisher.publish_many(
            (TOPIC, work(start + n, sleep_s)) for n in range(count)
        )

    def pending(self, client: redis.Redis, consumer: str | None = None) -> int:
        """Entries pending in the group on every lane (of ``consumer`` if given)."""
        total = 0
        for lane in LANES:
            key = self.keys.lane(TOPIC, lane)
            if consumer is None:
                total += int(client.xpending(key, GROUP)["pending"])
            else:
                total += len(
                    client.xpending_range(key, GROUP, "-", "+", 10_000, consumer)
                )

        return total

    def pending_events(self, client: redis.Redis, consumer: str) -> set[str]:
        """Ids of the events pending on ``consumer`` in the normal lane."""
        pending = client.xpending_range(self.lane, GROUP, "-", "+", 10_000, consumer)
        ids = set()
        for item in pending:
            entry_id = item["message_id"]
            for _, fields in client.xrange(self.lane, entry_id, entry_id):
                ids.add(json.loads(fields[b"event"])["id"])

        return ids

    def dead_letters(self, client: redis.Redis) -> int:
        return int(client.xlen(self.keys.dead_letters(TOPIC)))

    def close(self) -> None:
        self.publisher.close()


def work(n: int, sleep_s: float) -> dict[str, Any]:
    """A ``system.v1`` payload that the test app handles by sleeping."""
    return {"name": "work", "details": {"n": n, "sleep_s": sleep_s}}


def members(client: redis.Redis, key: str) -> set[str]:
    return {m.decode() for m in client.smembers(key)}


def counts(client: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}


def start_ready(pool: ProcessorPool, client: redis.Redis, run: Run) -> ProcessorProcess:
    process = pool.start()
    process.wait_ready(client, run.lane, GROUP)

    return process


@pytest.fixture
def run_factory(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> Iterator[Callable[..., Run]]:
    """Make this test's :class:`Run` from config options; close it afterwards."""
    made: list[Run] = []

    def make(**options: Any) -> Run:
        made.append(Run(tmp_path, quick_config(redis_url, key_prefix, **options)))
        return made[-1]

    yield make
    for run in made:
        run.close()


KILLS = 5
EVENTS = 3000
MOST_EVENTS = 4500


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_at_random_moments_loses_nothing(
    run_factory: Any, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    """3,000+ events, a steady processor, and a second one killed -9 five times.

    Events flow at a steady rate; each kill lands at a random moment when
    the victim holds work (entries pending on it), and a new victim starts
    at once under a new consumer name.
    """
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    run = run_factory(processor={"concurrency": 16})
    ids: list[str] = []
    killed: list[str] = []

    with processor_pool(run.config_path, tmp_path) as pool:
        start_ready(pool, sync_redis, run)
        victim = start_ready(pool, sync_redis, run)
        next_kill = time.monotonic() + rng.uniform(0.3, 1.0)
        while len(ids) < EVENTS or len(killed) < KILLS:
            assert len(ids) < MOST_EVENTS, f"only {len(killed)} kills (seed {seed})"
            ids += run.publish_work(20, sleep_s=0.05, start=len(ids))
            time.sleep(0.05)
            due = len(killed) < KILLS and time.monotonic() >= next_kill
            if due and run.pending(sync_redis, victim.consumer) > 0:
                victim.kill()
                killed.append(victim.consumer)
                victim = pool.start()
                next_kill = time.monotonic() + rng.uniform(0.3, 1.0)

        wait_for(
            lambda: sync_redis.scard(run.records.handled) == len(ids),
            60,
            what=f"all {len(ids)} events handled (seed {seed})",
        )
        wait_for(lambda: run.pending(sync_redis) == 0, 30, what="nothing pending")
        wait_for(
            lambda: not set(killed) & set(consumers_of(sync_redis, run.lane, GROUP)),
            15,
            what="killed consumers removed from the group",
        )

    assert members(sync_redis, run.records.handled) == set(ids)
    assert run.dead_letters(sync_redis) == 0
    runs = counts(sync_redis, run.records.runs)
    assert any(n > 1 for n in runs.values()), "no kill interrupted a handler"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["cli", "script"])
def test_sigterm_lets_in_flight_handlers_finish_and_exits_0(
    run_factory: Any, sync_redis: redis.Redis, tmp_path: Path, launcher: str
) -> None:
    run = run_factory(processor={"concurrency": 8, "shutdown_grace_s": 10})
    ids = run.publish_work(40, sleep_s=0.5)

    with processor_pool(run.config_path, tmp_path, launcher) as pool:
        first = start_ready(pool, sync_redis, run)
        started_key = run.records.started_by(first.pid)
        wait_for(lambda: sync_redis.scard(started_key) >= 8, 10, what="8 in flight")
        first.signal(signal.SIGTERM)
        assert first.wait(15) == 0, first.log_tail()

        # Whatever started finished and was acked; entries read but never
        # started may stay pending for another processor.
        started = members(sync_redis, started_key)
        assert started <= members(sync_redis, run.records.handled_by(first.pid))
        assert not started & run.pending_events(sync_redis, first.consumer)

        start_ready(pool, sync_redis, run)
        wait_for(
            lambda: sync_redis.scard(run.records.handled) == len(ids),
            30,
            what="the rest handled by a second processor",
        )
        wait_for(lambda: run.pending(sync_redis) == 0, 10, what="all acked")

    assert members(sync_redis, run.records.handled) == set(ids)
    assert set(counts(sync_redis, run.records.finishes).values()) == {1}


@pytest.mark.slow
def test_second_sigterm_stops_at_once_and_leaves_the_rest_pending(
    run_factory: Any, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    run = run_factory(processor={"concurrency": 3, "shutdown_grace_s": 30})
    ids = run.publish_work(3, sleep_s=1.0)

    with processor_pool(run.config_path, tmp_path) as pool:
        first = start_ready(pool, sync_redis, run)
        started_key = run.records.started_by(first.pid)
        wait_for(lambda: sync_redis.scard(started_key) == 3, 10, what="3 in flight")
        first.signal(signal.SIGTERM)
        time.sleep(0.2)
        first.signal(signal.SIGTERM)
        assert first.wait(5) == 128 + signal.SIGTERM, first.log_tail()
        assert sync_redis.scard(run.records.handled) == 0
        assert run.pending(sync_redis, first.consumer) == 3

        start_ready(pool, sync_redis, run)
        wait_for(
            lambda: sync_redis.scard(run.records.handled) == len(ids),
            30,
            what="all 3 handled after the abort",
        )
        wait_for(lambda: run.pending(sync_redis) == 0, 10, what="all acked")

    assert run.dead_letters(sync_redis) == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_poison_event_reaches_dead_letters_and_spares_its_neighbours(
    run_factory: Any, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    """An event whose handler calls os._exit(1): 3 runs for retry_limit 2."""
    run = run_factory(defaults={"retry_limit": 2}, processor={"concurrency": 8})
    neighbours = run.publish_work(7, sleep_s=0.3)
    [poison] = run.publisher.publish_many(
        [(TOPIC, {"name": "poison", "details": {"sleep_s": 0.1}})]
    )
    neighbours += run.publish_work(13, sleep_s=0.3, start=7)
    deaths: list[ProcessorProcess] = []

    with processor_pool(run.config_path, tmp_path) as pool:
        process = pool.start()
        deadline = time.monotonic() + 60
        while run.dead_letters(sync_redis) == 0:
            assert time.monotonic() < deadline, "poison never dead-lettered"
            if not process.alive():
                deaths.append(process)
                assert len(deaths) <= 5, "the poison event kept killing processors"
                process = pool.start()
                neighbours += run.publish_work(3, sleep_s=0.3, start=100 * len(deaths))
            time.sleep(0.05)
        wait_for(
            lambda: members(sync_redis, run.records.handled) >= set(neighbours),
            30,
            what="every neighbour handled",
        )
        wait_for(lambda: run.pending(sync_redis) == 0, 15, what="nothing pending")

    [(_, letter)] = sync_redis.xrange(run.keys.dead_letters(TOPIC))
    assert json.loads(letter[b"event"])["id"] == poison
    assert json.loads(letter[b"failure"])["attempts"] == 3
    assert counts(sync_redis, run.records.runs)[poison] == 3
    assert len(deaths) == 3
    first = deaths[0].pid
    cut_short = members(sync_redis, run.records.started_by(first)) - members(
        sync_redis, run.records.handled_by(first)
    )
    assert cut_short & set(neighbours), "no neighbour was in flight at the crash"
    assert poison not in members(sync_redis, run.records.handled)
