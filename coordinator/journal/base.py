"""The connections every part of the journal shares, named for what each is for; Journal opens and closes them."""

from __future__ import annotations

import sqlite3

import aiosqlite

from coordinator.journal.records import JournalStats
from coordinator.metrics import ShardMetrics


class JournalBase:
    """The journal's file and connections. Each part (writer, reads, upkeep, keys and ring) is a class of its own
    module over these; Journal (journal.py) is all of them, and opens and closes the connections."""

    path: str
    replicated: bool
    """Litestream replicates the file and runs its checkpoints; SQLite's automatic ones are off."""
    stats: JournalStats
    _metrics: ShardMetrics | None
    _writer_db: aiosqlite.Connection | None
    """The writer task's connection: every commit, and upkeep jobs run alone between commits (JournalWriter)."""
    _reader_db: aiosqlite.Connection | None
    """Read-only, on its own thread: committed data only (JournalReads)."""
    _checkpoint_db: aiosqlite.Connection | None
    """PASSIVE checkpoints beside the writer, never holding it (JournalUpkeep.passive_checkpoint)."""
    _loop_db: sqlite3.Connection | None
    """Read-only, on the event loop's own thread, never waiting: PlaceOrder's look-up of a new order (find_order)."""

    @property
    def _reader(self) -> aiosqlite.Connection:
        assert self._reader_db is not None, "journal not open"
        return self._reader_db
