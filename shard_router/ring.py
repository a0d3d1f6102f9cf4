"""Consistent hashing of order ids onto shard ids.

Each shard gets `vnodes` points on a 64-bit ring; a key belongs to the first point at or after its own hash. The hash
is the first 8 bytes of BLAKE2b, never Python's hash() (salted per process), so every router, every restart and every
Python version places a key on the same shard. Placement depends only on the shard ids and vnodes: adding a shard moves
only the keys the new shard takes (about 1/n of them), and no key moves between two shards that were already there.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable


def stable_hash(key: bytes) -> int:
    """A 64-bit hash that is the same on every machine and Python version."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


class HashRing:
    """An immutable ring; lookups are a bisect over the sorted points."""

    __slots__ = ("_owners", "_points", "shard_ids", "vnodes")

    def __init__(self, shard_ids: Iterable[str], vnodes: int) -> None:
        ids = tuple(sorted(set(shard_ids)))
        if not ids:
            raise ValueError("a ring needs at least one shard")
        if vnodes < 1:
            raise ValueError("vnodes must be >= 1")
        # Ties between equal points (astronomically rare) are broken by shard id, so the order is still total.
        points = sorted((stable_hash(f"{sid}#{i}".encode()), sid) for sid in ids for i in range(vnodes))
        self._points = [p for p, _ in points]
        self._owners = [sid for _, sid in points]
        self.shard_ids = ids
        self.vnodes = vnodes

    def owner(self, key: str) -> str:
        """The shard that owns key."""
        i = bisect.bisect_left(self._points, stable_hash(key.encode()))
        return self._owners[i if i < len(self._owners) else 0]

    def __repr__(self) -> str:
        return f"HashRing({list(self.shard_ids)}, vnodes={self.vnodes})"
