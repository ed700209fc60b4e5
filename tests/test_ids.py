"""Event ids: 26 characters of Crockford base32, unique and time-sortable."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from titan_bus import ids
from titan_bus.ids import id_time_ms, new_event_id

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
MAX_MS = (1 << 48) - 1


@contextlib.contextmanager
def fresh_id_clock() -> Iterator[None]:
    """Run with the generator's memory of the last id cleared, then restore it.

    The generator remembers the last millisecond it used so that ids never go
    backwards; tests that choose ``now_ms`` need a clean start to predict the
    time encoded in each id.
    """
    saved = ids._last_ms, ids._last_random
    ids._last_ms, ids._last_random = -1, 0
    try:
        yield
    finally:
        ids._last_ms, ids._last_random = saved


def test_id_is_26_crockford_base32_characters() -> None:
    event_id = new_event_id()

    assert len(event_id) == 26
    assert set(event_id) <= CROCKFORD


def test_id_encodes_the_wall_clock_time_in_ms() -> None:
    before = int(time.time() * 1000)
    event_id = new_event_id()
    after = int(time.time() * 1000)

    assert before <= id_time_ms(event_id) <= after


def test_ids_in_the_same_millisecond_are_strictly_increasing() -> None:
    with fresh_id_clock():
        made = [new_event_id(now_ms=1_700_000_000_000) for _ in range(5000)]

    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert {id_time_ms(i) for i in made} == {1_700_000_000_000}


def test_ids_keep_increasing_when_the_clock_steps_back() -> None:
    with fresh_id_clock():
        later = new_event_id(now_ms=2_000_000)
        earlier = new_event_id(now_ms=1_000_000)

    assert earlier > later
    assert id_time_ms(earlier) == 2_000_000


@pytest.mark.parametrize("now_ms", [0, 1, 1_700_000_000_123, MAX_MS])
def test_id_time_ms_round_trips(now_ms: int) -> None:
    with fresh_id_clock():
        event_id = new_event_id(now_ms=now_ms)

    assert id_time_ms(event_id) == now_ms


def test_id_time_ms_accepts_lowercase() -> None:
    event_id = new_event_id()

    assert id_time_ms(event_id.lower()) == id_time_ms(event_id)


@pytest.mark.parametrize(
    "bad",
    ["", "0" * 25, "0" * 27, "0" * 25 + "U", "0" * 25 + "!", "0" * 25 + " "],
    ids=["empty", "too-short", "too-long", "letter-U", "punctuation", "space"],
)
def test_bad_id_raises_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="event id"):
        id_time_ms(bad)


def test_id_with_more_than_128_bits_raises_value_error() -> None:
    with pytest.raises(ValueError):
        id_time_ms("8" + "0" * 25)


timestamps = st.integers(min_value=0, max_value=MAX_MS - 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(timestamps, min_size=1, max_size=50))
def test_ids_sort_like_time_then_creation_order(times: list[int]) -> None:
    ordered = sorted(times)
    with fresh_id_clock():
        made = [new_event_id(now_ms=ms) for ms in ordered]

    by_time_then_order = sorted(range(len(made)), key=lambda i: (ordered[i], i))
    assert sorted(made) == [made[i] for i in by_time_then_order]
    assert [id_time_ms(i) for i in made] == ordered


@settings(max_examples=200, deadline=None)
@given(st.lists(timestamps, min_size=1, max_size=50))
def test_ids_never_go_backwards_whatever_the_clock_does(times: list[int]) -> None:
    with fresh_id_clock():
        made = [new_event_id(now_ms=ms) for ms in times]

    assert made == sorted(made)
    assert len(set(made)) == len(made)
    running_max = [max(times[: i + 1]) for i in range(len(times))]
    assert [id_time_ms(i) for i in made] == running_max
