"""What retention and file upkeep write (coordinator/operations/retention.py decides when): finished sagas removed
(archived first when asked), forgotten orders and audit records, the freed pages handed back, checkpoints and the WAL's
bound. Each batch runs alone on the writer (run_alone), between saga commits."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import aiosqlite

from coordinator.journal.records import Checkpointed, FileStats
from coordinator.journal.schema import DEDUP_COLUMNS, OPERATOR_KINDS, SAGA_COLUMNS, saga_from_row
from coordinator.journal.writer import JournalWriter, in_thread
from coordinator.saga.errors import JournalUnavailable

T = TypeVar("T")


class JournalUpkeep(JournalWriter):
    async def retire(self, saga_ids: Sequence[str], finished_before_epoch_ms: int) -> int:
        """Removes these sagas with their events, each leaving a dedup record, in one short transaction of the writer;
        returns how many went. Their operators' actions stay (closed dead letters, ADMIN events moved to
        operator_events) until forget_audit removes them. Pair check: SQL removes only sagas still finished before
        the cutoff and with no open dead letter, whatever the caller chose."""
        if not saga_ids:
            return 0
        marks = ",".join("?" * len(saga_ids))

        def work(conn: sqlite3.Connection) -> int:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # The unary + keeps the planner on the primary key: offered the state or time terms, it walked every
                # finished saga's index entry for each batch (measured: O(N) per batch on 200,000 sagas).
                recs = [
                    saga_from_row(r)
                    for r in conn.execute(
                        f"SELECT {SAGA_COLUMNS} FROM sagas WHERE saga_id IN ({marks}) AND +state IN (3, 4, 6) "
                        "AND +updated_at_epoch_ms <= ? AND NOT EXISTS (SELECT 1 FROM dead_letters d "
                        "WHERE d.saga_id = sagas.saga_id AND d.closed_at_epoch_ms IS NULL)",
                        (*saga_ids, finished_before_epoch_ms),
                    ).fetchall()
                ]
                if recs:
                    ids = tuple(r.saga_id for r in recs)
                    gone = ",".join("?" * len(ids))
                    conn.executemany(
                        f"INSERT OR REPLACE INTO order_dedup ({DEDUP_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                        [
                            (
                                r.order_id,
                                r.payload_hash,
                                int(r.state),
                                r.message,
                                r.saga_id,
                                r.created_at_epoch_ms,
                                r.updated_at_epoch_ms,
                                r.definition_hash,
                            )
                            for r in recs
                        ],
                    )
                    # The operators' actions stay for the audit period (forget_audit): their events move to
                    # operator_events, and closed dead letters stay where they are.
                    conn.execute(
                        "INSERT INTO operator_events (saga_id, order_id, seq, at_epoch_ms, kind, state, detail) "
                        "SELECT e.saga_id, s.order_id, e.seq, e.at_epoch_ms, e.kind, e.state, e.detail "
                        f"FROM saga_events e JOIN sagas s ON s.saga_id = e.saga_id WHERE e.saga_id IN ({gone}) "
                        f"AND e.kind IN ({OPERATOR_KINDS}) ORDER BY e.saga_id, e.seq",
                        ids,
                    )
                    conn.execute(f"DELETE FROM saga_events WHERE saga_id IN ({gone})", ids)
                    removed = conn.execute(f"DELETE FROM sagas WHERE saga_id IN ({gone})", ids).rowcount
                    if removed != len(ids):
                        raise JournalUnavailable(f"retire removed {removed} of {len(ids)} sagas")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return len(recs)

        async def run(db: aiosqlite.Connection) -> int:
            return await in_thread(db, unsynced_commit(work))

        return await self.run_alone("retire", run)

    async def forget_orders(self, finished_before_epoch_ms: int, limit: int) -> int:
        """Removes up to `limit` dedup records of orders finished at or before the cutoff; returns how many."""

        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM order_dedup WHERE order_id IN (SELECT order_id FROM order_dedup "
                "WHERE finished_at_epoch_ms <= ? ORDER BY finished_at_epoch_ms LIMIT ?)",
                (finished_before_epoch_ms, limit),
            ).rowcount

        async def run(db: aiosqlite.Connection) -> int:
            return await in_thread(db, unsynced_commit(work))

        return await self.run_alone("forget_orders", run)

    async def forget_audit(self, before_epoch_ms: int, limit: int) -> int:
        """Removes up to `limit` operator events and up to `limit` closed dead letters dated at or before the cutoff
        (a dead letter only once its saga has left the journal); returns how many rows went."""

        def work(conn: sqlite3.Connection) -> int:
            events = conn.execute(
                "DELETE FROM operator_events WHERE id IN (SELECT id FROM operator_events WHERE at_epoch_ms <= ? "
                "LIMIT ?)",
                (before_epoch_ms, limit),
            ).rowcount
            letters = conn.execute(
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE closed_at_epoch_ms <= ? "
                "AND NOT EXISTS (SELECT 1 FROM sagas s WHERE s.saga_id = dead_letters.saga_id) LIMIT ?)",
                (before_epoch_ms, limit),
            ).rowcount
            return int(events + letters)

        async def run(db: aiosqlite.Connection) -> int:
            return await in_thread(db, unsynced_commit(work))

        return await self.run_alone("forget_audit", run)

    async def vacuum_step(self, pages: int) -> int:
        """Hands up to `pages` free pages back to the file system (journals created with auto_vacuum=INCREMENTAL;
        a no-op on older ones); returns how many."""

        def work(conn: sqlite3.Connection) -> int:
            before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            # executescript: through execute() the sqlite3 module steps the pragma once, and it frees one page a step.
            conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
            return before - int(conn.execute("PRAGMA freelist_count").fetchone()[0])

        async def run(db: aiosqlite.Connection) -> int:
            return await in_thread(db, unsynced_commit(work))

        return await self.run_alone("vacuum", run)

    async def checkpoint(self, mode: str, busy_ms: int) -> Checkpointed:
        """A WAL checkpoint from the writer's connection. RESTART and TRUNCATE wait for readers of older snapshots;
        `busy_ms` bounds that wait (the writer holds everything up meanwhile), after which the answer says busy."""
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"unknown checkpoint mode {mode!r}")

        async def run(db: aiosqlite.Connection) -> Checkpointed:
            await db.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
            try:
                async with db.execute(f"PRAGMA wal_checkpoint({mode})") as cur:
                    row = await cur.fetchone()
            finally:
                await db.execute("PRAGMA busy_timeout=5000")
            assert row is not None
            return Checkpointed(bool(row[0]), int(row[1]), int(row[2]))

        return await self.run_alone("checkpoint", run)

    async def passive_checkpoint(self) -> Checkpointed:
        """Copies committed WAL frames into the file from a connection of its own: the writer goes on committing
        meanwhile (frames appended after the checkpoint began wait for the next one). Once every frame is copied and no
        reader needs the old ones, the writer's next commit starts the WAL over from its beginning (and truncates it
        to journal_size_limit), so the file stays bounded under sustained load."""
        assert self._checkpoint_db is not None, "journal not open"
        started = time.perf_counter()
        async with self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)") as cur:
            row = await cur.fetchone()
        if self._metrics is not None:
            self._metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        assert row is not None
        return Checkpointed(bool(row[0]), int(row[1]), int(row[2]))

    def _fallback_pages(self, limit_bytes: int) -> int:
        """SQLite's own checkpoint, inside a commit, only as a safety net at the WAL's bound: the upkeep's checkpoints
        keep the WAL far below it while a shard runs, but a journal used without them (a tool, a benchmark's fill) must
        not grow its WAL without end. Off for a replicated journal: Litestream runs its checkpoints."""
        return 0 if self.replicated else max(1000, limit_bytes // 4096)

    async def set_wal_limit(self, limit_bytes: int) -> None:
        """The size the -wal file is truncated back to after a checkpoint that emptied it, and where SQLite's own
        checkpoint steps in if nothing else checkpoints."""

        async def run(db: aiosqlite.Connection) -> None:
            await db.execute(f"PRAGMA journal_size_limit={int(limit_bytes)}")
            await db.execute(f"PRAGMA wal_autocheckpoint={self._fallback_pages(limit_bytes)}")

        await self.run_alone("wal_limit", run)

    def file_stats(self) -> FileStats:
        """Sizes, rows per table and oldest row times, on a connection of its own: blocking (run it in a thread), and
        counting rows reads whole tables, which must not queue the hot path's reads behind it."""
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            rows = {
                t: int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                for t in ("sagas", "saga_events", "dead_letters", "order_dedup", "operator_events")
            }
            oldest: dict[str, int] = {}
            for table, sql in (
                ("sagas", "SELECT min(created_at_epoch_ms) FROM sagas"),
                ("dead_letters", "SELECT min(parked_at_epoch_ms) FROM dead_letters"),
                ("order_dedup", "SELECT min(finished_at_epoch_ms) FROM order_dedup"),
            ):
                value = db.execute(sql).fetchone()[0]
                if value is not None:
                    oldest[table] = int(value)
            if "sagas" in oldest:
                oldest["saga_events"] = oldest["sagas"]  # a saga's events are never older than the saga
            free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
        finally:
            db.close()
        return FileStats(_size(self.path), _size(self.path + "-wal"), free, page, rows, oldest)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def unsynced_commit(work: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """work, committed without an fsync of its own (synchronous=NORMAL for its duration): for retention's removals,
    which a power cut may undo (each batch is atomic, and the next pass redoes it) and which the next saga commit's
    fsync makes durable with everything before it in the WAL. It keeps the write lock's hold to the batch's own work:
    measured 1-8 ms a batch under load, where a batch with its own fsync took up to 80 ms."""

    def unsynced(conn: sqlite3.Connection) -> T:
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            return work(conn)
        finally:
            conn.execute("PRAGMA synchronous=FULL")

    return unsynced
