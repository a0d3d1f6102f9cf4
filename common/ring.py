"""Where orders live: consistent hashing, the numbered history of rings ("epochs"), and the fencing rule that lets a
shard refuse traffic an older ring sent it. Shared by the router (which routes by the rings) and the shards (which
hold the rings and enforce them); deploy/README.md, "Ring epochs and fencing", states the protocol and its invariant.

Hashing: each shard gets `vnodes` points on a 64-bit ring; a key belongs to the first point at or after its own hash.
The hash is the first 8 bytes of BLAKE2b, never Python's hash() (salted per process), so every router, every shard,
every restart and every Python version places a key on the same shard. Placement depends only on the shard ids and
vnodes: adding a shard moves only the keys the new shard takes (about 1/n of them).

Epochs: every placement ever used has a number, 1, 2, ...; a number names exactly one placement everywhere (the ring
command assigns numbers in one file, with a version check, and shards refuse a second placement under a number they
hold). The last epoch of a history is the current ring; earlier ones say where older orders may already be.
"""

from __future__ import annotations

import bisect
import enum
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from protos.ring.v1 import ring_pb2

FORMAT_VERSION = 1
"""Of the JSON form (EpochHistory.to_json): the epochs file and what a shard stores."""

EPOCH_KEY = "x-saga-ring-epoch"
"""Request metadata: the epoch the router routed the call by. Trailing metadata of a refusal: the shard's epoch."""
REFUSAL_KEY = "x-saga-ring-refusal"
"""Trailing metadata of a refusal: a Refusal value."""


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


class EpochError(ValueError):
    """A history is unreadable or inconsistent; the message says which and how."""


@dataclass(frozen=True)
class Epoch:
    """One ring as the ring command recorded it."""

    number: int
    """1, 2, ...; never reused for another placement."""
    vnodes: int
    """Points per shard on that ring."""
    shards: tuple[tuple[str, str], ...]
    """(shard id, address) of the shards that owned keys, sorted by id. The address is a fallback for shards that have
    since left the config file."""
    created_at_epoch_ms: int
    """When it was recorded (wall clock)."""

    @property
    def shard_ids(self) -> tuple[str, ...]:
        return tuple(sid for sid, _ in self.shards)

    @property
    def placement(self) -> tuple[int, tuple[str, ...]]:
        """What decides where keys go (addresses do not)."""
        return self.vnodes, self.shard_ids

    @functools.cached_property
    def ring(self) -> HashRing:
        """Built once per epoch object (thousands of points), then every lookup is a bisect."""
        return HashRing(self.shard_ids, self.vnodes)


@dataclass(frozen=True)
class EpochHistory:
    """Every retained epoch, oldest first; the last one is the current ring."""

    epochs: tuple[Epoch, ...] = ()

    @property
    def current(self) -> Epoch | None:
        return self.epochs[-1] if self.epochs else None

    @property
    def number(self) -> int:
        """The current epoch's number; 0 for an empty history."""
        return self.epochs[-1].number if self.epochs else 0

    @property
    def older(self) -> tuple[Epoch, ...]:
        """Earlier epochs, newest first (the likeliest holders of a moved order come first)."""
        return tuple(reversed(self.epochs[:-1]))

    def advance(self, vnodes: int, shards: Iterable[tuple[str, str]], now_epoch_ms: int) -> EpochHistory:
        """The history with this placement as its current epoch: a new epoch if placement changed, else the same
        epochs with the current one's addresses refreshed (a shard may move hosts without re-sharding)."""
        listed = tuple(sorted(shards))
        last = self.current
        if last is not None and last.placement == (vnodes, tuple(sid for sid, _ in listed)):
            if last.shards == listed:
                return self
            return EpochHistory((*self.epochs[:-1], Epoch(last.number, vnodes, listed, last.created_at_epoch_ms)))
        return EpochHistory((*self.epochs, Epoch(self.number + 1, vnodes, listed, now_epoch_ms)))

    def drop_through(self, number: int) -> EpochHistory:
        """Forgets epochs 1..number. The current epoch is never dropped."""
        if not self.epochs or number >= self.number:
            raise EpochError(f"cannot drop through epoch {number}: the current epoch is {self.number or None}")
        return EpochHistory(tuple(e for e in self.epochs if e.number > number))

    def conflict_with(self, other: EpochHistory) -> int | None:
        """The number of an epoch both histories hold with different placements (None if they agree): two rings under
        one number means someone wrote a history by hand or from a stale copy, and routing by either could run an
        order twice."""
        mine = {e.number: e.placement for e in self.epochs}
        for e in other.epochs:
            if e.number in mine and mine[e.number] != e.placement:
                return e.number
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "epochs": [
                {
                    "epoch": e.number,
                    "vnodes": e.vnodes,
                    "created_at_epoch_ms": e.created_at_epoch_ms,
                    "shards": [{"id": sid, "address": addr} for sid, addr in e.shards],
                }
                for e in self.epochs
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> EpochHistory:
        """Raises EpochError (what is wrong) for anything but a well-formed history."""
        try:
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise ValueError(f"expected an object with version {FORMAT_VERSION}")
            epochs: list[Epoch] = []
            for raw in data["epochs"]:
                shards = tuple(sorted((str(s["id"]), str(s["address"])) for s in raw["shards"]))
                epoch = Epoch(int(raw["epoch"]), int(raw["vnodes"]), shards, int(raw["created_at_epoch_ms"]))
                if not shards or epoch.vnodes < 1 or epoch.number < 1:
                    raise ValueError(f"epoch {epoch.number} has no shards, no vnodes or a number below 1")
                if epochs and epoch.number <= epochs[-1].number:
                    raise ValueError("epoch numbers must increase")
                epochs.append(epoch)
        except (ValueError, KeyError, TypeError) as e:
            raise EpochError(str(e)) from None
        return cls(tuple(epochs))


class Refusal(enum.StrEnum):
    """Why a shard refused a call routed by a ring epoch (FAILED_PRECONDITION, REFUSAL_KEY in the trailers)."""

    STALE = "stale"
    """The shard knows a newer epoch and does not hold the order: the router fetches the shard's history, retries."""
    UNKNOWN = "unknown"
    """The call names an epoch newer than any the shard holds: the router installs its history there, retries."""
    NOT_OWNER = "not-owner"
    """Same epoch, but it does not place this new order here: the router places the order again."""
    CONFLICT = "conflict"
    """The shard holds another placement under that number: an operator must fix the epochs file."""
    CATCHING_UP = "catching-up"
    """Sent with UNAVAILABLE, not FAILED_PRECONDITION: the shard's journal was restored from a replica and it has not
    yet learnt the newest history its peers hold, so it neither creates sagas nor answers NOT_FOUND to a routed call.
    The router relays it; the client retries."""


def fence(
    call_epoch: int | None, history: EpochHistory, shard_id: str, order_id: str, creating: bool
) -> Refusal | None:
    """The shard's rule for a call about an order it does not hold (a shard that holds the order always answers):

    - no epoch on the call (a client talking to the shard directly): not fenced;
    - an epoch older than the shard's: STALE, since the newer ring may place the order elsewhere, and the router that
      sent it has not asked that ring's earlier owners;
    - an epoch newer than the shard's: UNKNOWN, since the shard must know a ring before it can refuse the older ones;
    - the shard's own epoch: a NOT_FOUND may be answered; a new saga may start only if that ring places the order here.
    """
    if call_epoch is None:
        return None
    known = history.number
    if call_epoch < known:
        return Refusal.STALE
    if call_epoch > known:
        return Refusal.UNKNOWN
    if creating:
        current = history.current
        assert current is not None  # known >= call_epoch >= 1
        if current.ring.owner(order_id) != shard_id:
            return Refusal.NOT_OWNER
    return None


def history_message(history: EpochHistory) -> ring_pb2.RingHistory:
    """The wire form (ring.v1.RingHistory) of a history."""
    return ring_pb2.RingHistory(
        epochs=[
            ring_pb2.RingEpoch(
                epoch=e.number,
                vnodes=e.vnodes,
                created_at_epoch_ms=e.created_at_epoch_ms,
                shards=[ring_pb2.RingShard(id=sid, address=addr) for sid, addr in e.shards],
            )
            for e in history.epochs
        ]
    )


def history_from_message(message: ring_pb2.RingHistory) -> EpochHistory:
    """Raises EpochError for a malformed history."""
    return EpochHistory.from_json(
        {
            "version": FORMAT_VERSION,
            "epochs": [
                {
                    "epoch": e.epoch,
                    "vnodes": e.vnodes,
                    "created_at_epoch_ms": e.created_at_epoch_ms,
                    "shards": [{"id": s.id, "address": s.address} for s in e.shards],
                }
                for e in message.epochs
            ],
        }
    )
