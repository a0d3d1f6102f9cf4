"""Journal: the saga journal as one object, one SQLite file in WAL mode with synchronous=FULL. It is every part of
the package at once (writer, reads, upkeep, what it stores besides sagas) and owns their connections' life cycle."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from pathlib import Path

import aiosqlite
import backoff

from coordinator.config import GroupCommit
from coordinator.journal.reads import JournalReads
from coordinator.journal.records import JournalStats
from coordinator.journal.schema import DEFAULT_WAL_LIMIT_BYTES, migrate
from coordinator.journal.stored import JournalStore
from coordinator.journal.upkeep import JournalUpkeep
from coordinator.journal.window import CommitWindow
from coordinator.metrics import ShardMetrics


class Journal(JournalReads, JournalUpkeep, JournalStore):
    def __init__(
        self,
        path: str,
        max_batch: int = 4096,
        metrics: ShardMetrics | None = None,
        replicated: bool = False,
        window: GroupCommit | None = None,
    ) -> None:
        """replicated: Litestream replicates the file and runs its checkpoints; SQLite's automatic ones are off.
        window: how long a commit may wait for more writers (config [group_commit]; None: never waits)."""
        self.replicated = replicated
        self.path = path
        self._metrics = metrics
        self._max_batch = max_batch
        self.window = CommitWindow(window, metrics)
        self._lag_watch: asyncio.Task[None] | None = None
        self._writer_db: aiosqlite.Connection | None = None
        self._reader_db: aiosqlite.Connection | None = None
        self._checkpoint_db: aiosqlite.Connection | None = None
        self._loop_db: sqlite3.Connection | None = None
        self._pending = deque()
        self._wakeup = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = JournalStats()

    async def open(self) -> None:
        """Opens (creating or migrating) the file. If that fails, what was opened is closed again before the error
        goes up: a refused journal (newer schema, unreadable file) leaves no connection thread behind."""
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer_db = db = await aiosqlite.connect(self.path, isolation_level=None)
        async with db.execute("PRAGMA page_count") as cur:
            row = await cur.fetchone()
        if row is not None and row[0] == 0:
            # Only a new file can take it (an existing one would need a VACUUM): freed pages can then be handed back to
            # the file system in small steps (vacuum_step) after retention removes rows.
            await db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        await _enter_wal(db)
        await db.execute(f"PRAGMA journal_size_limit={DEFAULT_WAL_LIMIT_BYTES}")
        # FULL: a commit returns only once the WAL is fsynced, so an acknowledged state survives power loss.
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=5000")
        # No checkpoint inside a commit in the normal run of things: SQLite's automatic one (every 1,000 pages by
        # default) would copy pages while every saga waiting for that commit waits too. Checkpoints run from the upkeep
        # instead (coordinator/operations/retention.py): PASSIVE ones from a connection of their own, beside the writer;
        # TRUNCATE ones from the writer when it is quiet. SQLite's own stays only as a safety net at the WAL's bound. A
        # replicated journal leaves them all to Litestream.
        await db.execute(f"PRAGMA wal_autocheckpoint={self._fallback_pages(DEFAULT_WAL_LIMIT_BYTES)}")
        await migrate(db, self.path)
        self._reader_db = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        await self._reader_db.execute("PRAGMA busy_timeout=5000")
        self._checkpoint_db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._checkpoint_db.execute("PRAGMA busy_timeout=100")
        # Never waits (busy_timeout 0), never writes.
        self._loop_db = sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        self._loop_db.execute("PRAGMA busy_timeout=0")
        self._writer_task = asyncio.create_task(self._run(), name=f"journal-writer:{self.path}")
        if self.window.senses_lag:
            self._lag_watch = asyncio.create_task(self.window.watch_lag(), name=f"journal-lag:{self.path}")

    async def close(self) -> None:
        """Commits what is pending, then closes."""
        self._closing = True
        self._wakeup.set()
        self.window.release()
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            await asyncio.gather(self._lag_watch, return_exceptions=True)
        if self._writer_task is not None:
            await self._writer_task
        if self._loop_db is not None:
            self._loop_db.close()
            self._loop_db = None
        for db in (self._checkpoint_db, self._reader_db, self._writer_db):
            if db is not None:
                await db.close()
        self._checkpoint_db = self._reader_db = self._writer_db = None


WAL_SWITCH_BOUND_S = 30.0
"""How long opening a journal keeps trying to put a new file into WAL mode while another process does the same."""


def _switch_refused(e: Exception) -> bool:
    return not (isinstance(e, sqlite3.OperationalError) and "locked" in str(e))


@backoff.on_exception(
    backoff.expo, sqlite3.OperationalError, max_time=WAL_SWITCH_BOUND_S, giveup=_switch_refused, max_value=0.5
)
async def _enter_wal(db: aiosqlite.Connection) -> None:
    """Puts the file into WAL mode. Litestream, watching for the file to appear, switches a new one to WAL too: when
    both try at once, SQLite refuses one at once with SQLITE_BUSY, without waiting out busy_timeout (two connections
    each holding a shared lock and wanting an exclusive one would deadlock). The refused one tries again; by then the
    file is in WAL mode and the switch is a no-op."""
    async with db.execute("PRAGMA journal_mode=WAL") as cur:
        row = await cur.fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise sqlite3.OperationalError(f"{row[0] if row else 'no'} journal mode: this file system cannot hold a WAL")
