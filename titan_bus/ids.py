"""Unique, time-sortable event ids.

An id is 26 characters of Crockford base32: 48 bits of Unix time in
milliseconds followed by 80 random bits (the ULID layout). Ids made by one
process in the same millisecond are strictly increasing, so sorting ids as
strings sorts events by creation time.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1
ID_LENGTH = 26

_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def _encode(value: int) -> str:
    chars = []
    for _ in range(ID_LENGTH):
        chars.append(_ALPHABET[value & 0x1F])
        value >>= 5

    return "".join(reversed(chars))


def new_event_id(now_ms: int | None = None) -> str:
    """Return a new id, larger than every id this process made before.

    Args:
        now_ms: the creation time in Unix milliseconds; the wall clock if omitted.
    """
    global _last_ms, _last_random

    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _lock:
        if ms <= _last_ms:
            # Same millisecond (or a clock step back): keep order by counting up.
            ms = _last_ms
            rand = _last_random + 1
            if rand > _RANDOM_MAX:
                ms, rand = ms + 1, secrets.randbits(_RANDOM_BITS - 1)
        else:
            rand = secrets.randbits(_RANDOM_BITS - 1)
        _last_ms, _last_random = ms, rand

    return _encode((ms << _RANDOM_BITS) | rand)


def id_time_ms(event_id: str) -> int:
    """Return the creation time, in Unix milliseconds, encoded in ``event_id``.

    Raises:
        ValueError: if ``event_id`` is not a 26-character Crockford base32 id.
    """
    if len(event_id) != ID_LENGTH:
        raise ValueError(f"event id must be {ID_LENGTH} characters: {event_id!r}")

    value = 0
    for char in event_id.upper():
        digit = _ALPHABET.find(char)
        if digit < 0:
            raise ValueError(f"event id has a character outside base32: {event_id!r}")
        value = (value << 5) | digit

    if value >> 128:
        raise ValueError(
            f"event id is over 128 bits (first character > '7'): {event_id!r}"
        )

    return value >> _RANDOM_BITS
