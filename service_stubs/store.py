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
from typing import TYPE_CHECKING

from service_stubs.errors import StoreFailed
from service_stubs.keys import Answer, KeyRecord

if TYPE_CHECKING:
    from service_stubs.group_commit import GroupCommitter

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
)

# An upsert, not INSERT OR REPLACE: the row keeps its rowid, so loading by rowid gives first-seen order.
_UPSERT_KEY = """
    INSERT INTO idempotency_keys (key, method, order_id, request_digest, code, message, response, applied_count,
                                  tombstoned, effect_json, undone_by, updated_at_epoch_ms)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET
        method = excluded.method, order_id = excluded.order_id, request_digest = excluded.request_digest,
        code = excluded.code, message = excluded.message, response = excluded.response,
        applied_count = excluded.applied_count, tombstoned = excluded.tombstoned, effect_json = excluded.effect_json,
        undone_by = excluded.undone_by, updated_at_epoch_ms = excluded.updated_at_epoch_ms
"""
_UPSERT_STOCK = """
    INSERT INTO stock (item_id, quantity, updated_at_epoch_ms) VALUES (?, ?, ?)
    ON CONFLICT (item_id) DO UPDATE SET quantity = excluded.quantity, updated_at_epoch_ms = excluded.updated_at_epoch_ms
"""
_SELECT_KEYS = """
    SELECT key, method, order_id, request_digest, code, message, response, applied_count, tombstoned, effect_json,
           undone_by
    FROM idempotency_keys ORDER BY rowid
"""
_SELECT_STOCK = "SELECT item_id, quantity FROM stock"

KeyRow = tuple[str, str, str, str | None, str | None, str, bytes, int, int, str, str | None, int]
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


class Store:
    """One service's SQLite file. `open()` and `close()` block (run them off the event loop); rows reach `write()`
    through the process's GroupCommitter, which calls it from its writer thread."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._committer: GroupCommitter | None = None
        self.failure: str | None = None
        """Why the store stopped committing, or None while it is healthy. Set by the writer thread."""
        self.transactions = 0
        """Transactions committed: far fewer than calls under load, which is the point of group commit."""
        self.rows_written = 0

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

    def attach(self, committer: GroupCommitter) -> None:
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
        return self._committer.submit(self, key_rows, stock_rows)

    def write(self, key_rows: Sequence[KeyRow], stock_rows: Sequence[StockRow]) -> None:
        """One transaction (writer thread only)."""
        conn = self._conn
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
        self.transactions += 1
        self.rows_written += len(key_rows) + len(stock_rows)

    def close(self) -> None:
        """Closes the file; the committer must have drained first."""
        self._conn.close()
