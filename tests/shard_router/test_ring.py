"""Consistent hashing: even shares, minimal movement when a shard joins, and a hash that never changes."""

from __future__ import annotations

import collections
import subprocess
import sys

from shard_router import HashRing, stable_hash

KEYS = [f"order-{i}" for i in range(100_000)]
THREE = ["shard-1", "shard-2", "shard-3"]


def test_three_shards_share_keys_evenly() -> None:
    ring = HashRing(THREE, vnodes=1024)
    counts = collections.Counter(ring.owner(k) for k in KEYS)
    for sid in THREE:
        share = counts[sid] / len(KEYS)
        assert abs(share - 1 / 3) <= 0.1 / 3, (sid, share)


def test_adding_a_fourth_moves_a_quarter_only_to_the_new_shard() -> None:
    before = HashRing(THREE, vnodes=1024)
    after = HashRing([*THREE, "shard-4"], vnodes=1024)
    moved = [k for k in KEYS if before.owner(k) != after.owner(k)]
    assert 0.20 <= len(moved) / len(KEYS) <= 0.30, len(moved) / len(KEYS)
    # Consistent hashing: a key only ever moves to the new shard, never between two shards that were there before.
    assert all(after.owner(k) == "shard-4" for k in moved)
    assert all(before.owner(k) == after.owner(k) for k in KEYS if after.owner(k) != "shard-4")


def test_placement_ignores_listing_order_and_duplicates() -> None:
    a = HashRing(["shard-3", "shard-1", "shard-2"], vnodes=64)
    b = HashRing(["shard-1", "shard-2", "shard-3", "shard-2"], vnodes=64)
    assert all(a.owner(k) == b.owner(k) for k in KEYS[:2000])


def test_hash_is_pinned() -> None:
    """These values are part of the on-disk contract (epochs, where every saga lives): they must never change."""
    assert stable_hash(b"") == 0xE4A6A0577479B2B4
    assert stable_hash(b"order-1") == 0x2599000E8C1B023D
    ring = HashRing(THREE, vnodes=1024)
    pinned = {k: ring.owner(k) for k in ("order-1", "order-2", "A", "x" * 128)}
    assert pinned == PINNED_OWNERS


def test_placement_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from shard_router import HashRing;"
        "r = HashRing(['shard-1','shard-2','shard-3'], 1024);"
        "print(','.join(r.owner(f'order-{i}') for i in range(200)))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True
        ).stdout
        for seed in ("1", "2")
    }
    ring = HashRing(THREE, 1024)
    assert outputs == {",".join(ring.owner(f"order-{i}") for i in range(200)) + "\n"}


PINNED_OWNERS = {"order-1": "shard-1", "order-2": "shard-3", "A": "shard-1", "x" * 128: "shard-2"}
