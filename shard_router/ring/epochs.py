"""The epochs file: the numbered history of rings (common.ring.EpochHistory) as JSON, next to the shard list.

Routers only read it. It is written by `saga-router epochs commit` (which appends the config's ring as a new epoch)
and `saga-router epochs drop` (which forgets epochs no saga depends on), each with a version check: the command says
which epoch it expects to extend, and refuses if the file moved on meanwhile. In Kubernetes it is a key of the same
ConfigMap as the shard list, so both change together. Shards keep the histories routers show them (coordinator
ownership), so the history also survives the loss of this file and of every router at once.

The file is written atomically (temporary file, fsync, rename), so a crash never leaves half a history. A file that
exists but cannot be parsed is an error, never silently replaced.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from common.ring import EpochError, EpochHistory
from shard_router.config import RingSpec

T = TypeVar("T")


def read(path: Path) -> EpochHistory:
    """The history in path; an empty history if the file does not exist."""
    return read_history(path, "epochs", EpochHistory, EpochHistory.from_json, EpochError)


def read_history(path: Path, what: str, empty: Callable[[], T], parse: Callable[[Any], T], error: type[Exception]) -> T:
    """A history file (the epochs, the definitions) parsed; empty() if there is none; `error` naming the file if it
    cannot be read or parsed."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return empty()
    except OSError as e:
        raise error(f"cannot read {what} file {path}: {e}") from e
    try:
        return parse(json.loads(text))
    except (ValueError, error) as e:
        raise error(f"{what} file {path} is corrupt ({e}); restore it from version control or a backup") from e


def write(path: Path, history: EpochHistory, expect: int | None = None) -> None:
    """Replaces path atomically with history. expect: the current epoch number the caller read (0: no file yet); if
    the file holds another one now, nothing is written (EpochError), so two concurrent writers cannot both win."""

    def check() -> None:
        if expect is not None and (found := read(path).number) != expect:
            raise EpochError(
                f"epochs file {path} changed meanwhile (epoch {found}, expected {expect}): nothing written;"
                " run the command again"
            )

    try:
        replace_file(path, json.dumps(history.to_json(), indent=2) + "\n", check)
    except OSError as e:
        raise EpochError(f"cannot write epochs file {path}: {e}") from e


def replace_file(path: Path, body: str, check: Callable[[], None]) -> None:
    """Replaces path with body atomically (temporary file, fsync, rename, fsync of the directory), calling check()
    just before the rename under a lock on the directory: two commands racing on one file cannot both pass their
    check. Whatever check raises leaves the file as it was. OSError if the file cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        # The lock is on the directory: no lock file left behind.
        lock = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            check()
            os.replace(tmp, path)
        finally:
            os.close(lock)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself is durable only once the directory entry is.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def committed(history: EpochHistory, ring: RingSpec, now_epoch_ms: int) -> EpochHistory:
    """history with the config's ring as its current epoch (a new epoch if placement changed): what `epochs commit`
    writes."""
    addresses = ring.addresses
    return history.advance(ring.vnodes, [(sid, addresses[sid]) for sid in ring.ring_ids], now_epoch_ms)
