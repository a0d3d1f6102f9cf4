"""The journal's schema: numbered migrations, the column lists the statements share, and how rows become records."""

from __future__ import annotations

import sqlite3
from typing import Any

import aiosqlite
from loguru import logger

from coordinator.journal.records import DedupRecord
from coordinator.saga.model import TERMINAL_STATES, SagaState
from coordinator.saga.record import Event, EventKind, SagaRecord

# Numbered migrations, applied in order at start-up in one transaction each; schema_version holds the last applied.
_MIGRATION_SQL: tuple[str, ...] = (
    """
    CREATE TABLE sagas (
        saga_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL,
        request BLOB NOT NULL,
        payment_sealed BLOB NOT NULL,
        payload_hash TEXT NOT NULL,
        state INTEGER NOT NULL CHECK (state BETWEEN 1 AND 6),
        created_at_epoch_ms INTEGER NOT NULL,
        updated_at_epoch_ms INTEGER NOT NULL,
        deadline_epoch_ms INTEGER NOT NULL,
        last_error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sagas_by_created ON sagas (created_at_epoch_ms, saga_id);
    CREATE INDEX sagas_by_state ON sagas (state, created_at_epoch_ms, saga_id);
    CREATE TABLE saga_events (
        saga_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at_epoch_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        step INTEGER NOT NULL,
        action INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        code TEXT NOT NULL,
        detail TEXT NOT NULL,
        state INTEGER NOT NULL,
        PRIMARY KEY (saga_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        saga_id TEXT NOT NULL REFERENCES sagas (saga_id),
        order_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        parked_at_epoch_ms INTEGER NOT NULL,
        closed_at_epoch_ms INTEGER,
        closed_note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX dead_letters_by_parked ON dead_letters (parked_at_epoch_ms, id);
    CREATE UNIQUE INDEX dead_letters_one_open ON dead_letters (saga_id) WHERE closed_at_epoch_ms IS NULL;
    """,
    # v2: the dead-letter note apart from the failure's cause (it was appended to last_error as
    # "<cause>; compensation of <step> failed after ...; parked for an operator"), and the retry schedule on events.
    """
    ALTER TABLE sagas ADD COLUMN parked_note TEXT NOT NULL DEFAULT '';
    ALTER TABLE saga_events ADD COLUMN wait_ms INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE saga_events ADD COLUMN spent_ms INTEGER NOT NULL DEFAULT 0;
    UPDATE sagas SET
        parked_note = substr(last_error, instr(last_error, 'compensation of ')),
        last_error = CASE WHEN instr(last_error, '; compensation of ') > 0
                          THEN substr(last_error, 1, instr(last_error, '; compensation of ') - 1)
                          ELSE '' END
    WHERE last_error LIKE '%; parked for an operator' AND instr(last_error, 'compensation of ') > 0
    """,
    # v3: a fingerprint of the key that hashes payloads (coordinator/security/sealing.py), so a start with another key
    # file than the one the journal was written with is refused instead of answering every retried PlaceOrder "different
    # payload".
    """
    CREATE TABLE key_fingerprints (
        purpose TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL
    )
    """,
    # v4: retention (coordinator/operations/retention.py). A finished saga's rows leave after a while; what PlaceOrder
    # needs to answer a retry (and the router to find the order after a re-shard) stays longer in order_dedup. The
    # partial index finds retention's candidates without touching running sagas' rows (only terminal rows are in it);
    # dead_letters_by_saga serves the foreign key check and the removal of a saga's closed dead letters (else a scan).
    """
    CREATE TABLE order_dedup (
        order_id TEXT PRIMARY KEY,
        payload_hash TEXT NOT NULL,
        state INTEGER NOT NULL CHECK (state IN (3, 4, 6)),
        message TEXT NOT NULL,
        saga_id TEXT NOT NULL,
        created_at_epoch_ms INTEGER NOT NULL,
        finished_at_epoch_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX order_dedup_by_finished ON order_dedup (finished_at_epoch_ms);
    CREATE INDEX sagas_by_finished ON sagas (updated_at_epoch_ms) WHERE state IN (3, 4, 6);
    CREATE INDEX dead_letters_by_saga ON dead_letters (saga_id)
    """,
    # v5: the ring history routers showed this shard (coordinator/ring/ownership.py): fencing state, so a restarted
    # shard still refuses calls routed by rings older than one it has acknowledged.
    """
    CREATE TABLE ring_history (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch INTEGER NOT NULL,
        history TEXT NOT NULL
    )
    """,
    # v6: the trace context a saga's spans hang under (common.tracing.carrier: the propagators' headers), so spans
    # after a restart or a long wait join the trace of the request that started the saga. '' when tracing was off.
    """
    ALTER TABLE sagas ADD COLUMN trace_context TEXT NOT NULL DEFAULT ''
    """,
    # v7: operators' actions are the audit trail of a system that moves money, so they outlive their saga's retention
    # (retention.audit_after_s, far longer than finished_after_s). A closed dead letter (who retried or resolved it,
    # and why) stays in dead_letters after its saga's rows go: the table is rebuilt without its foreign key to sagas
    # (SQLite cannot drop one in place). The ADMIN_RETRY / ADMIN_RESOLVE events of a removed saga move to
    # operator_events: kept in saga_events, they would collide with the events of a saga re-created under the same
    # (derived) saga id once its order id is forgotten.
    """
    CREATE TABLE dead_letters_v7 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        saga_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        parked_at_epoch_ms INTEGER NOT NULL,
        closed_at_epoch_ms INTEGER,
        closed_note TEXT NOT NULL DEFAULT ''
    );
    INSERT INTO dead_letters_v7 SELECT id, saga_id, order_id, step, last_error, attempts, parked_at_epoch_ms,
        closed_at_epoch_ms, closed_note FROM dead_letters;
    DROP TABLE dead_letters;
    ALTER TABLE dead_letters_v7 RENAME TO dead_letters;
    CREATE INDEX dead_letters_by_parked ON dead_letters (parked_at_epoch_ms, id);
    CREATE UNIQUE INDEX dead_letters_one_open ON dead_letters (saga_id) WHERE closed_at_epoch_ms IS NULL;
    CREATE INDEX dead_letters_by_saga ON dead_letters (saga_id);
    CREATE INDEX dead_letters_by_closed ON dead_letters (closed_at_epoch_ms) WHERE closed_at_epoch_ms IS NOT NULL;
    CREATE TABLE operator_events (
        id INTEGER PRIMARY KEY,
        saga_id TEXT NOT NULL,
        order_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at_epoch_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        state INTEGER NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX operator_events_by_order ON operator_events (order_id, id);
    CREATE INDEX operator_events_by_time ON operator_events (at_epoch_ms)
    """,
    # v8: a journal rebuilt from its replica (coordinator/operations/restore.py) may hold an older ring history than the
    # shard had acknowledged before the loss; this row says so, and the shard creates no saga until it has caught up
    # with its peers (coordinator/ring/ownership.py). It goes in the same commit as the caught-up history.
    """
    CREATE TABLE ring_catch_up (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        restored_at_epoch_ms INTEGER NOT NULL
    )
    """,
    # v9: saga definitions as data (common/definitions). Each saga names the definition it runs by hash, fixed at its
    # creation; the journal keeps every definition it accepted (so a restored journal still holds the versions its
    # sagas need) and the aliases that decide what new sagas get. Rows from before are the order flow's first
    # version: the shard fills their '' in at start (Journal.adopt_unnamed). A step's response is journaled with its
    # success only when a later request reads it (output: NULL otherwise).
    """
    ALTER TABLE sagas ADD COLUMN definition_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE saga_events ADD COLUMN output BLOB;
    ALTER TABLE order_dedup ADD COLUMN definition_hash TEXT NOT NULL DEFAULT '';
    CREATE TABLE definitions (
        hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        document TEXT NOT NULL,
        accepted_at_epoch_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE definition_aliases (
        name TEXT PRIMARY KEY,
        hash TEXT NOT NULL REFERENCES definitions (hash),
        history_version INTEGER NOT NULL,
        set_at_epoch_ms INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
)


# Statements are separated by a semicolon at the end of a line (the v2 UPDATE has semicolons inside its strings).
MIGRATIONS: tuple[tuple[str, ...], ...] = tuple(
    tuple(stmt for stmt in sql.split(";\n") if stmt.strip()) for sql in _MIGRATION_SQL
)

SAGA_COLUMNS = (
    "saga_id, order_id, user_id, request, payment_sealed, payload_hash, state, created_at_epoch_ms, "
    "updated_at_epoch_ms, deadline_epoch_ms, last_error, parked_note, trace_context, definition_hash"
)
_SAGA_FIELDS = SAGA_COLUMNS.split(", ")
EVENT_COLUMNS = "saga_id, seq, at_epoch_ms, kind, step, action, attempt, code, detail, state, wait_ms, spent_ms, output"
DEDUP_COLUMNS = (
    "order_id, payload_hash, state, message, saga_id, created_at_epoch_ms, finished_at_epoch_ms, definition_hash"
)
# The states retention may remove, spelled as in the partial index sagas_by_finished (the planner needs the same term).
FINISHED = "state IN (3, 4, 6)"
OPERATOR_KINDS = f"'{EventKind.ADMIN_RETRY}', '{EventKind.ADMIN_RESOLVE}'"
assert {3, 4, 6} == {int(s) for s in TERMINAL_STATES}
# WAL size SQLite truncates the -wal file back to after a checkpoint that emptied it (bounded again by upkeep).
DEFAULT_WAL_LIMIT_BYTES = 64 * 1024 * 1024


async def migrate(db: aiosqlite.Connection, path: str) -> None:
    """Applies the migrations `db` has not had yet, each in one transaction; refuses a schema newer than this build."""
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    async with db.execute("SELECT max(version) FROM schema_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row and row[0] is not None else 0
    if current > len(MIGRATIONS):
        raise RuntimeError(f"journal {path} has schema v{current}, newer than this build (v{len(MIGRATIONS)})")
    for version in range(current + 1, len(MIGRATIONS) + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[version - 1]:
                await db.execute(stmt)
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        logger.info("journal {} migrated to schema v{}", path, version)


def read_key_fingerprint(path: str, purpose: str) -> str | None:
    """The fingerprint a journal file holds for `purpose` (None: none, or a journal older than schema v3), read
    without opening it as a Journal: for a check before a shard starts on it (coordinator/operations/restore.py)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'key_fingerprints'").fetchone():
            return None
        row = db.execute("SELECT fingerprint FROM key_fingerprints WHERE purpose = ?", (purpose,)).fetchone()
    finally:
        db.close()
    return None if row is None else str(row[0])


def saga_from_row(r: sqlite3.Row | tuple[object, ...]) -> SagaRecord:
    return SagaRecord(
        saga_id=str(r[0]),
        order_id=str(r[1]),
        user_id=str(r[2]),
        request=bytes(r[3]),  # type: ignore[arg-type]
        payment_sealed=bytes(r[4]),  # type: ignore[arg-type]
        payload_hash=str(r[5]),
        state=SagaState(int(r[6])),  # type: ignore[arg-type]
        created_at_epoch_ms=int(r[7]),  # type: ignore[arg-type]
        updated_at_epoch_ms=int(r[8]),  # type: ignore[arg-type]
        deadline_epoch_ms=int(r[9]),  # type: ignore[arg-type]
        last_error=str(r[10]),
        parked_note=str(r[11]),
        trace_context=str(r[12]),
        definition_hash=str(r[13]),
    )


def event_from_row(r: sqlite3.Row | tuple[object, ...]) -> Event:
    return Event(
        saga_id=str(r[0]),
        seq=int(r[1]),  # type: ignore[arg-type]
        at_epoch_ms=int(r[2]),  # type: ignore[arg-type]
        kind=EventKind(str(r[3])),
        step=int(r[4]),  # type: ignore[arg-type]
        action=int(r[5]),  # type: ignore[arg-type]
        attempt=int(r[6]),  # type: ignore[arg-type]
        code=str(r[7]),
        detail=str(r[8]),
        state=SagaState(int(r[9])),  # type: ignore[arg-type]
        wait_ms=int(r[10]),  # type: ignore[arg-type]
        spent_ms=int(r[11]),  # type: ignore[arg-type]
        output=bytes(r[12]) if r[12] is not None else b"",  # type: ignore[arg-type]
    )


def order_query(order_id: str, kept: bool) -> tuple[str, tuple[str, ...]]:
    """The read of an order's saga row, or (kept) of what retention kept of it when the row is gone. Its last column
    says which table answered (0: sagas, 1: order_dedup): order_row() reads it."""
    if not kept:
        return f"SELECT {SAGA_COLUMNS}, 0 FROM sagas WHERE order_id = ?", (order_id,)
    sql = (
        f"SELECT {SAGA_COLUMNS}, 0 FROM sagas WHERE order_id = ? UNION ALL SELECT saga_id, order_id, NULL, NULL, "
        "NULL, payload_hash, state, created_at_epoch_ms, finished_at_epoch_ms, finished_at_epoch_ms, message, "
        "'', '', definition_hash, 1 FROM order_dedup WHERE order_id = ? LIMIT 1"
    )
    return sql, (order_id, order_id)


def order_row(row: Any) -> tuple[SagaRecord, bool]:
    """A row of order_query: the saga, and whether it is what retention kept of it (no steps, no request)."""
    if row[len(_SAGA_FIELDS)]:
        return kept_from_row(row), True
    return saga_from_row(row), False


def kept_from_row(row: Any) -> SagaRecord:
    """An order_dedup row of order_query(kept=True) as a saga without steps."""
    return DedupRecord(
        str(row[1]),
        str(row[5]),
        SagaState(int(row[6])),
        str(row[10]),
        str(row[0]),
        int(row[7]),
        int(row[8]),
        str(row[13]),
    ).as_saga()
