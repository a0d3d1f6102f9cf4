"""Durable state of one service: one SQLite file (WAL, synchronous=FULL). Owns every SQL statement and the schema.

Reads never come here after start-up: the service keeps its records in memory and asks the store to make changes
durable. `commit()` resolves only once they are on disk (group_commit.py batches them), so a call is answered only
after its records are durable.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service_stubs.errors import StoreFailed
from service_stubs.keys import Answer, KeyRecord
from service_stubs.lro_rules import NEVER, Lro

# Numbered migrations, applied in order at start-up in one transaction; never edit one that has shipped, add the next.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE idempotency_keys (
        key                 TEXT PRIMARY KEY,
        method              TEXT NOT NULL,
        order_id            TEXT NOT NULL,
        request_digest      TEXT,
        code                TEXT,
        message             TEXT NOT NULL,
        response            BLOB NOT NULL,
        applied_count       INTEGER NOT NULL CHECK (applied_count IN (0, 1)),
        tombstoned          INTEGER NOT NULL CHECK (tombstoned IN (0, 1)),
        effect_json         TEXT NOT NULL,
        undone_by           TEXT,
        updated_at_epoch_ms INTEGER NOT NULL
    );
    CREATE TABLE stock (
        item_id             TEXT PRIMARY KEY,
        quantity            INTEGER NOT NULL CHECK (quantity >= 0),
        updated_at_epoch_ms INTEGER NOT NULL
    );
    """,
    # Long-running operations (keys.KeyRecord): lro_ms and undo_lro_ms hold an Lro, NULL for none and NEVER_MS for
    # never; the request is kept only while the operation is in progress.
    """
    ALTER TABLE idempotency_keys ADD COLUMN in_progress INTEGER NOT NULL DEFAULT 0 CHECK (in_progress IN (0, 1));
    ALTER TABLE idempotency_keys ADD COLUMN lro_ms INTEGER;
    ALTER TABLE idempotency_keys ADD COLUMN accepted_at_epoch_ms INTEGER;
    ALTER TABLE idempotency_keys ADD COLUMN request BLOB;
    ALTER TABLE idempotency_keys ADD COLUMN undo_lro_ms INTEGER;
    """,
    # Held effects (holds.py): the final step that made a forward call's effect final, and what a read returns of it.
    """
    ALTER TABLE idempotency_keys ADD COLUMN finalized_by TEXT;
    ALTER TABLE idempotency_keys ADD COLUMN details BLOB;
    """,
)

NEVER_MS = -1
"""An Lro that never finishes, in the lro_ms columns (NULL already means "not an operation")."""

# An upsert, not INSERT OR REPLACE: the row keeps its rowid, so loading by rowid gives first-seen order.
_UPSERT_KEY = """
    INSERT INTO idempotency_keys (key, method, order_id, request_digest, code, message, response, applied_count,
                                  tombstoned, effect_json, undone_by, updated_at_epoch_ms, in_progress, lro_ms,
                                  accepted_at_epoch_ms, request, undo_lro_ms, finalized_by, details)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET
        method = excluded.method, order_id = excluded.order_id, request_digest = excluded.request_digest,
        code = excluded.code, message = excluded.message, response = excluded.response,
        applied_count = excluded.applied_count, tombstoned = excluded.tombstoned, effect_json = excluded.effect_json,
        undone_by = excluded.undone_by, updated_at_epoch_ms = excluded.updated_at_epoch_ms,
        in_progress = excluded.in_progress, lro_ms = excluded.lro_ms,
        accepted_at_epoch_ms = excluded.accepted_at_epoch_ms, request = excluded.request,
        undo_lro_ms = excluded.undo_lro_ms, finalized_by = excluded.finalized_by, details = excluded.details
"""
_UPSERT_STOCK = """
    INSERT INTO stock (item_id, quantity, updated_at_epoch_ms) VALUES (?, ?, ?)
    ON CONFLICT (item_id) DO UPDATE SET quantity = excluded.quantity, updated_at_epoch_ms = excluded.updated_at_epoch_ms
"""
_SELECT_KEYS = """
    SELECT key, method, order_id, request_digest, code, message, response, applied_count, tombstoned, effect_json,
           undone_by, in_progress, lro_ms, accepted_at_epoch_ms, request, undo_lro_ms, finalized_by, details
    FROM idempotency_keys ORDER BY rowid
"""
_SELECT_STOCK = "SELECT item_id, quantity FROM stock"

KeyRow = tuple[
    str,
    str,
    str,
    str | None,
    str | None,
    str,
    bytes,
    int,
    int,
    str,
    str | None,
    int,
    int,
    int | None,
    int | None,
    bytes | None,
    int | None,
    str | None,
    bytes | None,
]
StockRow = tuple[str, int, int]


@dataclass(frozen=True)
class Loaded:
    """Everything a service needs to rebuild its memory at start-up."""

    records: list[KeyRecord]
    stock: dict[str, int]


# One encoder for every row: json.dumps(..., sort_keys=True) builds a new JSONEncoder on each call.
_effect_json = json.JSONEncoder(sort_keys=True).encode


def _epoch_ms() -> int:
    return time.time_ns() // 1_000_000


def _lro_ms(lro: Lro | None) -> int | None:
    if lro is None:
        return None
    return NEVER_MS if lro.duration_ms is None else lro.duration_ms


def _lro(value: int | None) -> Lro | None:
    if value is None:
        return None
    return NEVER if value == NEVER_MS else Lro(int(value))


def _key_row(record: KeyRecord, now_ms: int) -> KeyRow:
    answer = record.answer
    return (
        record.key,
        record.method,
        record.order_id,
        record.request_digest,
        None if answer is None else answer.code,
        "" if answer is None else answer.message,
        b"" if answer is None else answer.response,
        record.applied_count,
        int(record.tombstoned),
        _effect_json(dict(record.effect)) if record.effect else "{}",  # most records: cheap path
        record.undone_by,
        now_ms,
        int(record.in_progress),
        _lro_ms(record.lro),
        record.accepted_at_epoch_ms,
        record.request,
        _lro_ms(record.undo_lro),
        record.finalized_by,
        record.details,
    )


def _record_from_row(row: sqlite3.Row) -> KeyRecord:
    code: str | None = row["code"]
    return KeyRecord(
        key=row["key"],
        method=row["method"],
        order_id=row["order_id"],
        request_digest=row["request_digest"],
        answer=None if code is None else Answer(code, row["message"], bytes(row["response"])),
        applied_count=row["applied_count"],
        tombstoned=bool(row["tombstoned"]),
        effect={str(k): int(v) for k, v in json.loads(row["effect_json"]).items()},
        undone_by=row["undone_by"],
        in_progress=bool(row["in_progress"]),
        lro=_lro(row["lro_ms"]),
        accepted_at_epoch_ms=row["accepted_at_epoch_ms"],
        request=None if row["request"] is None else bytes(row["request"]),
        undo_lro=_lro(row["undo_lro_ms"]),
        finalized_by=row["finalized_by"],
        details=None if row["details"] is None else bytes(row["details"]),
    )


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = int(row[0] or 0)
        if version > len(MIGRATIONS):
            raise RuntimeError(f"schema version {version} is newer than this code ({len(MIGRATIONS)})")
        for number in range(version + 1, len(MIGRATIONS) + 1):
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class Committer(Protocol):
    """What makes a store's rows durable (group_commit.GroupCommitter): submit() returns a future resolved once they
    are on disk, in submission order."""

    def submit(self, store: Store, keys: Sequence[KeyRow], stock: Sequence[StockRow]) -> asyncio.Future[None]: ...


class Store:
    """One service's SQLite file. `open()` and `close()` block (run them off the event loop); rows reach `write()`
    through the process's GroupCommitter, which calls it from its writer thread."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._committer: Committer | None = None
        self.failure: str | None = None
        """Why the store stopped committing, or None while it is healthy. Set by the writer thread."""
        self.transactions = 0
        """Transactions committed: far fewer than calls under load, which is the point of group commit."""
        self.rows_written = 0
        self.commit_seconds = 0.0
        """Time spent in transactions, fsync included (the bench's c=1 budget: what a durable stub write costs)."""
        self._last_commit: asyncio.Future[None] | None = None

    @classmethod
    def open(cls, path: Path) -> tuple[Store, Loaded]:
        """Opens (creating and migrating if needed) the file and loads everything it holds."""
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread=False: loaded here, written by
        # the writer thread, never both at once.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{path}: could not enable WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            _migrate(conn)
            records = [_record_from_row(row) for row in conn.execute(_SELECT_KEYS)]
            stock = {str(row["item_id"]): int(row["quantity"]) for row in conn.execute(_SELECT_STOCK)}
        except BaseException:
            conn.close()
            raise
        return cls(path, conn), Loaded(records, stock)

    def attach(self, committer: Committer) -> None:
        assert self._committer is None, "store already attached"
        self._committer = committer

    def commit(self, records: Sequence[KeyRecord], stock: Sequence[tuple[str, int]] = ()) -> asyncio.Future[None]:
        """Makes the current state of `records` and the stock levels durable; await the result before answering.

        The rows are copied now, so later in-memory changes to a record go out with their own, later commit.
        Commits are applied in call order, so a later row for the same key always wins.
        """
        assert self._committer is not None, "store not attached to a committer"
        if self.failure is not None:
            raise StoreFailed(self.failure)
        now_ms = _epoch_ms()
        key_rows = [_key_row(record, now_ms) for record in records]
        stock_rows = [(item_id, quantity, now_ms) for item_id, quantity in stock]
        future = self._last_commit = self._committer.submit(self, key_rows, stock_rows)
        return future

    async def barrier(self) -> None:
        """Returns once everything committed so far is durable: what a read saw in memory is then on disk too.

        Commits resolve in the order they were made, so the last one resolved means all of them are. A cancelled
        future (its caller gave up) says nothing, so then an empty commit goes through the writer behind it; that
        includes one cancelled while this waits on it (asyncio.wait neither propagates nor causes its cancellation),
        which would otherwise cancel the read too, and leave its caller without an answer."""
        while True:
            if self.failure is not None:
                raise StoreFailed(self.failure)
            last = self._last_commit
            if last is None or (last.done() and not last.cancelled()):
                break
            if last.cancelled():
                assert self._committer is not None, "store not attached to a committer"
                last = self._last_commit = self._committer.submit(self, [], [])
            await asyncio.wait([last])
            if not last.cancelled():
                break
        if last is not None:
            last.result()  # a failed commit fails the read, as it failed its own call

    def write(self, key_rows: Sequence[KeyRow], stock_rows: Sequence[StockRow]) -> None:
        """One transaction (writer thread only)."""
        conn = self._conn
        started = time.perf_counter()
        conn.execute("BEGIN")
        try:
            if key_rows:
                conn.executemany(_UPSERT_KEY, key_rows)
            if stock_rows:
                conn.executemany(_UPSERT_STOCK, stock_rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.commit_seconds += time.perf_counter() - started
        self.transactions += 1
        self.rows_written += len(key_rows) + len(stock_rows)

    def close(self) -> None:
        """Closes the file; the committer must have drained first."""
        self._conn.close()
