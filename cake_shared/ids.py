"""Opaque, prefixed, time-sortable IDs (``job_01J...``).

The body is a ULID-like string: 48 bits of milliseconds then 80 random bits, in Crockford
base32, so IDs sort in creation order and can serve as list cursors.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PREFIXES = {"teacher": "tch", "job": "job", "dataset": "ds", "event": "evt", "api_key": "key"}


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(kind: str) -> str:
    millis = int(time.time() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{PREFIXES[kind]}_{_encode(millis, 10)}{_encode(rand, 16)}"
