"""Earlier rings ("epochs"), kept so that no order runs twice across a re-shard (DESIGN contract 7).

Every time the placement changes (a shard joins, drains or leaves, or vnodes changes) the router appends a new epoch
to a small JSON state file next to the config (``shards.epochs.json``; ``--epochs`` moves it). Epochs are numbered
from 1; the last one is the current ring. A restarted router reads the file back, so it still knows where earlier
rings put every order. The rule that uses them lives in shard_router.routing.

An epoch may be dropped once no saga depends on it: every saga it placed on a shard that no later ring would pick is
terminal and older than the PlaceOrder retry window. ``saga-router epochs drop --through N`` checks exactly that
against the shards before it rewrites the file (shard_router.epochs_cli); a running router picks the change up like a
config edit.

The file is written atomically (temporary file, fsync, rename), so a crash never leaves half a history. A file that
exists but cannot be parsed is an error, never silently replaced: losing it would lose contract 7.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RingSpec

_FORMAT_VERSION = 1


class EpochError(ValueError):
    """The epochs file is unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class Epoch:
    """One ring as it was installed."""

    number: int
    """1, 2, ...; never reused."""
    vnodes: int
    """Points per shard on that ring."""
    shards: tuple[tuple[str, str], ...]
    """(shard id, address) of the shards that owned keys, sorted by id. The address is a fallback for shards that have
    since left the config file."""
    created_at_epoch_ms: int
    """When this router first installed it (wall clock)."""

    @property
    def shard_ids(self) -> tuple[str, ...]:
        return tuple(sid for sid, _ in self.shards)

    def same_placement(self, ring: RingSpec) -> bool:
        """True if ring places every key where this epoch did (same ids and vnodes; addresses do not matter)."""
        return self.vnodes == ring.vnodes and self.shard_ids == ring.ring_ids


@dataclass(frozen=True)
class EpochHistory:
    """Every retained epoch, oldest first; the last one is the current ring."""

    epochs: tuple[Epoch, ...] = ()

    @property
    def current(self) -> Epoch | None:
        return self.epochs[-1] if self.epochs else None

    @property
    def older(self) -> tuple[Epoch, ...]:
        """Earlier epochs, newest first (the likeliest holders of a moved order come first)."""
        return tuple(reversed(self.epochs[:-1]))

    def advance(self, ring: RingSpec, now_epoch_ms: int) -> EpochHistory:
        """The history with ring as its current epoch: a new epoch if placement changed, else the same epochs with the
        current one's addresses refreshed (a shard may move hosts without re-sharding)."""
        addresses = ring.addresses
        shards = tuple((sid, addresses[sid]) for sid in ring.ring_ids)
        last = self.current
        if last is not None and last.same_placement(ring):
            if last.shards == shards:
                return self
            return EpochHistory((*self.epochs[:-1], Epoch(last.number, last.vnodes, shards, last.created_at_epoch_ms)))
        number = last.number + 1 if last is not None else 1
        return EpochHistory((*self.epochs, Epoch(number, ring.vnodes, shards, now_epoch_ms)))

    def drop_through(self, number: int) -> EpochHistory:
        """Forgets epochs 1..number. The current epoch is never dropped."""
        last = self.current
        if last is None or number >= last.number:
            raise EpochError(
                f"cannot drop through epoch {number}: the current epoch is {last.number if last else None}"
            )
        return EpochHistory(tuple(e for e in self.epochs if e.number > number))


def read(path: Path) -> EpochHistory:
    """The history in path; an empty history if the file does not exist yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return EpochHistory()
    except OSError as e:
        raise EpochError(f"cannot read epochs file {path}: {e}") from e
    try:
        return _decode(json.loads(text))
    except (ValueError, KeyError, TypeError) as e:
        raise EpochError(f"epochs file {path} is corrupt ({e}); restore it from a backup or another router") from e


def write(path: Path, history: EpochHistory) -> None:
    """Replaces path atomically with history."""
    body = json.dumps(_encode(history), indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # The rename itself is durable only once the directory entry is.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        # Installing a ring we could not record would break contract 7 after a restart: refuse it instead.
        raise EpochError(f"cannot write epochs file {path}: {e}") from e


def _encode(history: EpochHistory) -> dict[str, Any]:
    return {
        "version": _FORMAT_VERSION,
        "epochs": [
            {
                "epoch": e.number,
                "vnodes": e.vnodes,
                "created_at_epoch_ms": e.created_at_epoch_ms,
                "shards": [{"id": sid, "address": addr} for sid, addr in e.shards],
            }
            for e in history.epochs
        ],
    }


def _decode(data: Any) -> EpochHistory:
    if not isinstance(data, dict) or data.get("version") != _FORMAT_VERSION:
        raise ValueError(f"expected an object with version {_FORMAT_VERSION}")
    epochs: list[Epoch] = []
    for raw in data["epochs"]:
        shards = tuple(sorted((str(s["id"]), str(s["address"])) for s in raw["shards"]))
        epoch = Epoch(int(raw["epoch"]), int(raw["vnodes"]), shards, int(raw["created_at_epoch_ms"]))
        if not shards or epoch.vnodes < 1:
            raise ValueError(f"epoch {epoch.number} has no shards or no vnodes")
        if epochs and epoch.number <= epochs[-1].number:
            raise ValueError("epoch numbers must increase")
        epochs.append(epoch)
    return EpochHistory(tuple(epochs))
