"""The saga journal: one SQLite file in WAL mode, synchronous=FULL, owned by this package alone (every SQL statement
and the schema live here; nothing else in the coordinator imports aiosqlite or sqlite3 for the journal).

Writes go through exactly one writer task: callers hand it records with submit(); it commits everything pending in one
transaction and only then resolves the callers' futures. Reads use other connections, so they only ever see committed
data: nothing is reported to a client before it is on disk.

    schema.py   migrations, column lists, rows into records
    records.py  what is submitted and what is read back, as plain values
    base.py     the connections, named for what each is for
    window.py   CommitWindow: the group commit's wait and the counts that decide it
    writer.py   JournalWriter: the writer task, group commits, jobs that write alone
    reads.py    JournalReads: committed sagas, events, dead letters
    upkeep.py   JournalUpkeep: retention's removals, audit records, checkpoints, vacuum, file figures
    stored.py   JournalStore: sealed blobs' bookkeeping, key fingerprints, the ring history and the restore mark,
                the saga definitions and their aliases
    journal.py  Journal: all of them, opened and closed as one

It may import the coordinator's model (model, saga, errors, config, metrics, crashpoints), never the engine, the shard
or the server.
"""

from coordinator.journal.journal import Journal
from coordinator.journal.records import (
    ArchivedSaga,
    Checkpointed,
    DeadLetterClose,
    DeadLetterOpen,
    DeadLetterRow,
    DedupRecord,
    FileStats,
    JournalStats,
    NewSaga,
    Record,
    StateChange,
    TransitionConflict,
)
from coordinator.journal.schema import DEFAULT_WAL_LIMIT_BYTES, MIGRATIONS, read_key_fingerprint
from coordinator.journal.stored import StoredDefinition
from coordinator.journal.window import CommitWindow

__all__ = [
    "DEFAULT_WAL_LIMIT_BYTES",
    "MIGRATIONS",
    "ArchivedSaga",
    "Checkpointed",
    "CommitWindow",
    "DeadLetterClose",
    "DeadLetterOpen",
    "DeadLetterRow",
    "DedupRecord",
    "FileStats",
    "Journal",
    "JournalStats",
    "NewSaga",
    "Record",
    "StateChange",
    "StoredDefinition",
    "TransitionConflict",
    "read_key_fingerprint",
]
