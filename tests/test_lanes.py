"""Lane scheduling: weighted shares of handler slots, and priority in a processor."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from helpers import chat, running, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from titan_bus import Event, EventBus
from titan_bus.lanes import Lane, LaneScheduler

WEIGHTS = {"high": 5, "normal": 3, "low": 1}


def lanes(weights: dict[str, int] = WEIGHTS) -> list[Lane]:
    return [Lane("chat.v1", name, f"k:{name}", w) for name, w in weights.items()]


def serve(
    scheduler: LaneScheduler,
    *,
    free: int,
    rounds: int,
    has_work: set[str] | None = None,
) -> Counter[str]:
    """Run ``rounds`` plans; lanes in ``has_work`` (all if None) fill every read."""
    served: Counter[str] = Counter()
    for _ in range(rounds):
        for key, asked in scheduler.plan(free).items():
            got = asked if has_work is None or key in has_work else 0
            scheduler.record(key, asked, got)
            served[key] += got
    return served


def test_plan_with_no_free_slots_is_empty() -> None:
    assert LaneScheduler(lanes()).plan(0) == {}


@pytest.mark.parametrize("free", [1, 2, 3, 5, 9, 32])
def test_plan_never_exceeds_free_slots(free: int) -> None:
    scheduler = LaneScheduler(lanes())

    for _ in range(200):
        plan = scheduler.plan(free)
        assert sum(plan.values()) <= free
        assert all(count >= 1 for count in plan.values())
        for key, asked in plan.items():
            scheduler.record(key, asked, asked)


@settings(max_examples=200, deadline=None)
@given(
    weights=st.lists(
        st.integers(min_value=0, max_value=10), min_size=1, max_size=6
    ).filter(any),
    rounds=st.lists(
        st.tuples(st.integers(min_value=0, max_value=40), st.integers(0, 100)),
        min_size=1,
        max_size=30,
    ),
)
def test_plan_never_exceeds_free_whatever_the_reads_return(
    weights: list[int], rounds: list[tuple[int, int]]
) -> None:
    scheduler = LaneScheduler(lanes({f"l{i}": w for i, w in enumerate(weights)}))

    for free, fill_percent in rounds:
        plan = scheduler.plan(free)
        assert sum(plan.values()) <= free
        for key, asked in plan.items():
            scheduler.record(key, asked, asked * fill_percent // 100)


@pytest.mark.parametrize("free", [1, 3, 4, 9, 32])
def test_busy_lanes_share_slots_by_weight(free: int) -> None:
    served = serve(LaneScheduler(lanes()), free=free, rounds=900)

    total = sum(served.values())
    for name, weight in WEIGHTS.items():
        share = served[f"k:{name}"] / total
        assert share == pytest.approx(weight / 9, rel=0.10), name


def test_idle_lane_share_goes_to_the_others() -> None:
    scheduler = LaneScheduler(lanes())
    with_work = {"k:normal", "k:low"}
    serve(scheduler, free=8, rounds=1, has_work=with_work)

    served = serve(scheduler, free=8, rounds=500, has_work=with_work)

    assert served["k:high"] == 0
    assert served["k:normal"] + served["k:low"] == 8 * 500
    assert served["k:normal"] / (8 * 500) == pytest.approx(3 / 4, rel=0.10)


def test_every_lane_with_weight_gets_served() -> None:
    scheduler = LaneScheduler(lanes({"vip": 100, "normal": 1, "bulk": 1}))

    served = serve(scheduler, free=1, rounds=1000)

    assert served["k:normal"] > 0
    assert served["k:bulk"] > 0


def test_lane_with_weight_zero_is_never_planned() -> None:
    scheduler = LaneScheduler(lanes({"high": 1, "paused": 0}))

    served = serve(scheduler, free=4, rounds=100)

    assert served["k:paused"] == 0


def test_woken_lane_is_planned_again() -> None:
    scheduler = LaneScheduler(lanes())
    serve(scheduler, free=9, rounds=5, has_work={"k:normal", "k:low"})

    scheduler.wake("k:high")

    assert "k:high" in scheduler.plan(9)


def test_all_idle_lanes_are_probed_again() -> None:
    scheduler = LaneScheduler(lanes())
    serve(scheduler, free=9, rounds=3, has_work=set())

    assert set(scheduler.plan(9)) == {"k:high", "k:normal", "k:low"}


async def test_high_event_overtakes_a_normal_backlog(make_config: Any) -> None:
    order: list[str] = []
    async with EventBus(make_config(processor={"concurrency": 2})) as bus:

        @bus.subscribe("chat.v1")
        async def slowish(event: Event) -> None:
            await asyncio.sleep(0.01)
            order.append(event.data["text"])

        await bus.publish_many([("chat.v1", chat(f"n{i}")) for i in range(60)])
        async with running(bus):
            await wait_until(lambda: len(order) >= 5, what="backlog started")
            await bus.publish("chat.v1", chat("urgent"), priority="high")
            await wait_until(lambda: len(order) == 61, timeout_s=10, what="all")

    assert order.index("urgent") < 20
