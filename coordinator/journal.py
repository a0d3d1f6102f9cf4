"""The saga journal: one SQLite file in WAL mode, synchronous=FULL, owned by this module alone (every SQL statement and
the schema live here).

Writes go through exactly one writer task. Callers hand it records with submit(); it commits everything pending in one
transaction (group commit: the batch is whatever piled up while the previous commit ran, not a timer) and only then
resolves the callers' futures. Reads use a second connection, so they only ever see committed data: nothing is reported
to a client before it is on disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from loguru import logger

from . import crashpoints
from .config import GroupCommit
from .errors import JournalUnavailable
from .metrics import ShardMetrics
from .model import TERMINAL_STATES, SagaState, check_transition
from .saga import Event, EventKind, SagaRecord, fold_steps

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
    # v3: a fingerprint of the key that hashes payloads (coordinator/sealing.py), so a start with another key file than
    # the one the journal was written with is refused instead of answering every retried PlaceOrder "different payload".
    """
    CREATE TABLE key_fingerprints (
        purpose TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL
    )
    """,
    # v4: retention (coordinator/retention.py). A finished saga's rows leave after a while; what PlaceOrder needs to
    # answer a retry (and the router to find the order after a re-shard) stays longer in order_dedup. The partial index
    # finds retention's candidates without touching running sagas' rows (only terminal rows are in it);
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
    # v5: the ring history routers showed this shard (coordinator/ownership.py): fencing state, so a restarted shard
    # still refuses calls routed by rings older than one it has acknowledged.
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
    # v8: a journal rebuilt from its replica (coordinator/restore.py) may hold an older ring history than the shard had
    # acknowledged before the loss; this row says so, and the shard creates no saga until it has caught up with its
    # peers (coordinator/ownership.py). It goes in the same commit as the caught-up history.
    """
    CREATE TABLE ring_catch_up (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        restored_at_epoch_ms INTEGER NOT NULL
    )
    """,
)
# Statements are separated by a semicolon at the end of a line (the v2 UPDATE has semicolons inside its strings).
MIGRATIONS: tuple[tuple[str, ...], ...] = tuple(
    tuple(stmt for stmt in sql.split(";\n") if stmt.strip()) for sql in _MIGRATION_SQL
)

_SAGA_COLUMNS = (
    "saga_id, order_id, user_id, request, payment_sealed, payload_hash, state, created_at_epoch_ms, "
    "updated_at_epoch_ms, deadline_epoch_ms, last_error, parked_note, trace_context"
)
_EVENT_COLUMNS = "saga_id, seq, at_epoch_ms, kind, step, action, attempt, code, detail, state, wait_ms, spent_ms"
_DEDUP_COLUMNS = "order_id, payload_hash, state, message, saga_id, created_at_epoch_ms, finished_at_epoch_ms"
# The states retention may remove, spelled as in the partial index sagas_by_finished (the planner needs the same term).
_FINISHED = "state IN (3, 4, 6)"
_OPERATOR_KINDS = f"'{EventKind.ADMIN_RETRY}', '{EventKind.ADMIN_RESOLVE}'"
assert {3, 4, 6} == {int(s) for s in TERMINAL_STATES}
# WAL size SQLite truncates the -wal file back to after a checkpoint that emptied it (bounded again by upkeep).
DEFAULT_WAL_LIMIT_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NewSaga:
    saga: SagaRecord


@dataclass(frozen=True, slots=True)
class StateChange:
    """A guarded row update: applies only if the saga is in `expected` (built by transitions.records_for)."""

    saga_id: str
    expected: SagaState
    new: SagaState
    last_error: str
    parked_note: str
    at_epoch_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetterOpen:
    saga_id: str
    order_id: str
    step: int
    last_error: str
    attempts: int
    at_epoch_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetterClose:
    saga_id: str
    note: str
    at_epoch_ms: int


Record = NewSaga | Event | StateChange | DeadLetterOpen | DeadLetterClose


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    id: int
    saga_id: str
    order_id: str
    step: int
    last_error: str
    attempts: int
    parked_at_epoch_ms: int
    closed_at_epoch_ms: int | None
    closed_note: str


@dataclass(frozen=True, slots=True)
class DedupRecord:
    """What stays of a removed saga: enough to answer a PlaceOrder retry and to say the order exists."""

    order_id: str
    payload_hash: str
    state: SagaState
    message: str
    saga_id: str
    created_at_epoch_ms: int
    finished_at_epoch_ms: int

    def as_saga(self) -> SagaRecord:
        """The minimal saga view: outcome, saga id and message; no request, steps or events (they were removed)."""
        return SagaRecord(
            saga_id=self.saga_id,
            order_id=self.order_id,
            user_id="",
            request=b"",
            payment_sealed=b"",
            payload_hash=self.payload_hash,
            state=self.state,
            created_at_epoch_ms=self.created_at_epoch_ms,
            updated_at_epoch_ms=self.finished_at_epoch_ms,
            deadline_epoch_ms=self.finished_at_epoch_ms,
            last_error=self.message,
            steps={},
        )


@dataclass(frozen=True, slots=True)
class ArchivedSaga:
    """A finished saga as retention reads it before removing it (the sealed payment blob is left out)."""

    saga: SagaRecord
    events: list[Event]
    dead_letters: list[DeadLetterRow]


@dataclass(frozen=True, slots=True)
class Checkpointed:
    """PRAGMA wal_checkpoint's answer: busy (a reader kept it from finishing), WAL frames, frames copied back."""

    busy: bool
    wal_frames: int
    checkpointed_frames: int


@dataclass(frozen=True, slots=True)
class FileStats:
    file_bytes: int
    wal_bytes: int
    free_pages: int
    page_size: int
    rows: dict[str, int]
    oldest_epoch_ms: dict[str, int]
    """Per table, the time of its oldest row (created, parked, finished); absent when the table is empty."""


@dataclass(slots=True)
class JournalStats:
    commits: int = 0
    records: int = 0
    failed_commits: int = 0
    upkeep_jobs: int = 0
    last_upkeep_s: float = 0.0
    longest_upkeep_s: float = 0.0
    """The longest the writer spent on one upkeep job (a retention batch, a checkpoint, a vacuum step): the longest
    any saga commit waited behind upkeep."""


@dataclass(slots=True)
class _Upkeep:
    """A job the writer runs alone, between two group commits."""

    name: str
    run: Callable[[aiosqlite.Connection], Awaitable[Any]]
    fut: asyncio.Future[Any]


class TransitionConflict(JournalUnavailable):
    """A guarded state change found the saga in another state than expected: a bug, surfaced loudly."""


class Journal:
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
        self._window = window or GroupCommit(window_ms=0)
        self.writers: Callable[[], int] = lambda: 0
        """How many tasks write to the journal now (the shard: its sagas in flight); sizes the commit window's wait."""
        self._gathering: asyncio.Future[None] | None = None
        self._rounds_pending = 0
        """Pending submissions that end a writer's round (submit's ends_round): what the commit window counts."""
        self._lag_s = 0.0
        """How late the event loop runs (EWMA of a timer's lateness, _watch_lag): the commit window opens only when
        the process has more work than CPU."""
        self._lag_watch: asyncio.Task[None] | None = None
        self._w: aiosqlite.Connection | None = None
        self._r: aiosqlite.Connection | None = None
        self._c: aiosqlite.Connection | None = None
        self._q: sqlite3.Connection | None = None
        """The checkpointer's connection: PASSIVE checkpoints beside the writer, never holding it."""
        self._pending: deque[tuple[Sequence[Record], asyncio.Future[None], bool] | _Upkeep] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = JournalStats()

    # ---- life cycle ---------------------------------------------------------------------------------------------

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
        self._w = await aiosqlite.connect(self.path, isolation_level=None)
        async with self._w.execute("PRAGMA page_count") as cur:
            row = await cur.fetchone()
        if row is not None and row[0] == 0:
            # Only a new file can take it (an existing one would need a VACUUM): freed pages can then be handed back to
            # the file system in small steps (vacuum_step) after retention removes rows.
            await self._w.execute("PRAGMA auto_vacuum=INCREMENTAL")
        await self._w.execute("PRAGMA journal_mode=WAL")
        await self._w.execute(f"PRAGMA journal_size_limit={DEFAULT_WAL_LIMIT_BYTES}")
        # FULL: a commit returns only once the WAL is fsynced, so an acknowledged state survives power loss.
        await self._w.execute("PRAGMA synchronous=FULL")
        await self._w.execute("PRAGMA foreign_keys=ON")
        await self._w.execute("PRAGMA busy_timeout=5000")
        # No checkpoint inside a commit in the normal run of things: SQLite's automatic one (every 1,000 pages by
        # default) would copy pages while every saga waiting for that commit waits too. Checkpoints run from the
        # upkeep instead (coordinator/retention.py): PASSIVE ones from a connection of their own, beside the writer;
        # TRUNCATE ones from the writer when it is quiet. SQLite's own stays only as a safety net at the WAL's bound.
        # A replicated journal leaves them all to Litestream.
        await self._w.execute(f"PRAGMA wal_autocheckpoint={self._fallback_pages(DEFAULT_WAL_LIMIT_BYTES)}")
        await self._migrate(self._w)
        self._r = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
        await self._r.execute("PRAGMA busy_timeout=5000")
        self._c = await aiosqlite.connect(self.path, isolation_level=None)
        await self._c.execute("PRAGMA busy_timeout=100")
        # The loop thread's own read connection (find_order): never waits (busy_timeout 0), never writes.
        self._q = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        self._q.execute("PRAGMA busy_timeout=0")
        self._writer = asyncio.create_task(self._run(), name=f"journal-writer:{self.path}")
        if self._window.window_ms > 0 and self._window.busy_lag_ms > 0:
            self._lag_watch = asyncio.create_task(self._watch_lag(), name=f"journal-lag:{self.path}")

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with db.execute("SELECT max(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > len(MIGRATIONS):
            raise RuntimeError(f"journal {self.path} has schema v{current}, newer than this build (v{len(MIGRATIONS)})")
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
            logger.info("journal {} migrated to schema v{}", self.path, version)

    async def close(self) -> None:
        """Commits what is pending, then closes."""
        self._closing = True
        self._wakeup.set()
        if self._gathering is not None:
            _ok(self._gathering)
        if self._lag_watch is not None:
            self._lag_watch.cancel()
            await asyncio.gather(self._lag_watch, return_exceptions=True)
        if self._writer is not None:
            await self._writer
        if self._q is not None:
            self._q.close()
            self._q = None
        for db in (self._c, self._r, self._w):
            if db is not None:
                await db.close()
        self._c = self._r = self._w = None

    # ---- writes -----------------------------------------------------------------------------------------------

    def submit(self, records: Sequence[Record], ends_round: bool = True) -> asyncio.Future[None]:
        """Queues records for the next commit; the future resolves once they are durable (or fails with
        JournalUnavailable). Order is kept: records submitted earlier commit in the same or an earlier transaction.

        ends_round: the writer waits for this commit before it goes on (a saga's next intent, its terminal state).
        False for records a writer submits without waiting, just before a submission that does end its round (a
        step's outcome before the next intent, a new saga's row before its first intent): the commit window waits
        until as many writers have ended their round as are running, so it must not count a writer twice."""
        for r in records:
            if isinstance(r, StateChange):
                check_transition(r.expected, r.new)  # a bug in the caller: raise at it, not at the whole batch
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closing:
            fut.set_exception(JournalUnavailable("journal is closing"))
            return fut
        self._pending.append((records, fut, ends_round))
        if ends_round:
            self._rounds_pending += 1
        self._wakeup.set()
        if ends_round:
            self.recheck()
        return fut

    def recheck(self) -> None:
        """Ends the commit window's wait once every writer has ended its round. Called on each submission that ends one,
        and by the shard whenever its count of writers falls (a saga task ended, or went to rest in a backoff): the
        count is read now, not when the window opened, so a saga that stopped writing is not waited for."""
        if self._gathering is not None and self._rounds_pending >= self.writers():
            _ok(self._gathering)

    async def write(self, records: Sequence[Record]) -> None:
        await self.submit(records)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            # One turn of the loop before taking a batch: every task already runnable (a saga just created, replies
            # that just arrived) submits first and shares this commit. Sized by what is pending, not by a timer.
            await asyncio.sleep(0)
            self._wakeup.clear()
            while self._pending:
                head = self._pending[0]
                if isinstance(head, _Upkeep):
                    self._pending.popleft()
                    await self._run_upkeep(head)
                    continue
                await self._gather()
                batch: list[tuple[Sequence[Record], asyncio.Future[None]]] = []
                size = 0
                while self._pending:
                    item = self._pending[0]
                    if isinstance(item, _Upkeep) or (batch and size + len(item[0]) > self._max_batch):
                        break
                    records, fut, ends_round = item
                    batch.append((records, fut))
                    size += len(records)
                    self._rounds_pending -= ends_round
                    self._pending.popleft()
                await self._commit_batch(batch)
            if self._closing and not self._pending:
                return

    async def _gather(self) -> None:
        """The commit window (PostgreSQL's commit_delay, config [group_commit]): while the process has more work than
        CPU (the loop runs at least `busy_lag_ms` late) and at least `siblings` sagas are running, wait up to
        `window_ms` until as many sagas have ended their round (submitted what they wait for) as are running, so that
        one fsync serves them all.
        Sagas that share a commit then make their calls together and come back together: commits become rounds.
        Waiting then costs no latency (the sagas would have waited for CPU); an idle or lightly loaded shard, or one
        whose sagas wait on slow services, never waits, and neither does a lone saga."""
        window = self._window
        if (
            window.window_ms <= 0
            or self._closing
            or (window.busy_lag_ms > 0 and self._lag_s * 1000 < window.busy_lag_ms)
        ):
            return
        writers = self.writers()
        if writers < window.siblings or self._rounds_pending >= writers:
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(window.window_ms / 1000, _ok, fut)
        self._gathering = fut
        started = loop.time()
        try:
            await fut
        finally:
            timer.cancel()
            self._gathering = None
            if self._metrics is not None:
                self._metrics.commit_window_seconds.observe(loop.time() - started)

    async def _watch_lag(self, interval_s: float = 0.02) -> None:
        """How late a 20 ms sleep wakes (perf_counter, an exponentially weighted mean): about 0.2 ms on an idle loop
        (libuv's timers are millisecond-grained), more when the process waits for CPU: its own ready work, or other
        processes on the cores. Only runs with the window on: 50 wake-ups a second."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval_s)
            late = max(0.0, time.perf_counter() - started - interval_s)
            self._lag_s += 0.2 * (late - self._lag_s)

    @property
    def queued(self) -> int:
        """Submissions waiting for the writer (how busy it is: upkeep that can wait runs when this is low)."""
        return len(self._pending)

    async def _upkeep(self, name: str, run: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Runs `run` on the writer's connection, alone, after what is already queued: upkeep interleaves with saga
        commits instead of racing them for the write lock."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._closing:
            raise JournalUnavailable("journal is closing")
        self._pending.append(_Upkeep(name, run, fut))
        self._wakeup.set()
        return await fut

    async def _run_upkeep(self, job: _Upkeep) -> None:
        assert self._w is not None, "journal not open"
        started = time.perf_counter()
        try:
            result = await job.run(self._w)
        except Exception as e:
            logger.error("journal upkeep {} failed: {}", job.name, e)
            _fail(job.fut, e if isinstance(e, JournalUnavailable) else JournalUnavailable(f"{job.name} failed: {e}"))
            return
        finally:
            took = time.perf_counter() - started
            self.stats.upkeep_jobs += 1
            self.stats.last_upkeep_s = took
            self.stats.longest_upkeep_s = max(self.stats.longest_upkeep_s, took)
            if self._metrics is not None:
                self._metrics.upkeep_seconds.labels(job.name).observe(took)
        if not job.fut.done():
            job.fut.set_result(result)

    async def _commit_batch(self, batch: list[tuple[Sequence[Record], asyncio.Future[None]]]) -> None:
        records = [r for recs, _ in batch for r in recs]
        started = time.perf_counter()
        try:
            await self._commit(records)
        except TransitionConflict:
            # Find the offending submissions one by one; commit the innocent ones.
            for recs, fut in batch:
                try:
                    await self._commit(list(recs))
                except Exception as e:
                    _fail(fut, e)
                else:
                    _ok(fut)
            return
        except Exception as e:
            self.stats.failed_commits += 1
            logger.error("journal commit of {} records failed: {}", len(records), e)
            err = e if isinstance(e, JournalUnavailable) else JournalUnavailable(f"journal write failed: {e}")
            for _, fut in batch:
                _fail(fut, err)
            return
        self.stats.commits += 1
        self.stats.records += len(records)
        if self._metrics is not None:
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
            self._metrics.batch_records.observe(len(records))
            self._metrics.commits.inc()
        for _, fut in batch:
            _ok(fut)

    async def _commit(self, records: list[Record]) -> None:
        db = self._w
        assert db is not None, "journal not open"
        sagas, events, changes, dl_open, dl_close = [], [], [], [], []
        for record in records:
            if isinstance(record, Event):
                ev = record
                events.append(
                    (
                        ev.saga_id,
                        ev.seq,
                        ev.at_epoch_ms,
                        str(ev.kind),
                        ev.step,
                        ev.action,
                        ev.attempt,
                        ev.code,
                        ev.detail,
                        ev.state,
                        ev.wait_ms,
                        ev.spent_ms,
                    )
                )
            elif isinstance(record, StateChange):
                ch = record
                changes.append((ch.new, ch.last_error, ch.parked_note, ch.at_epoch_ms, ch.saga_id, ch.expected))
            elif isinstance(record, NewSaga):
                saga = record.saga
                sagas.append(
                    (
                        saga.saga_id,
                        saga.order_id,
                        saga.user_id,
                        saga.request,
                        saga.payment_sealed,
                        saga.payload_hash,
                        int(saga.state),
                        saga.created_at_epoch_ms,
                        saga.updated_at_epoch_ms,
                        saga.deadline_epoch_ms,
                        saga.last_error,
                        saga.parked_note,
                        saga.trace_context,
                    )
                )
            elif isinstance(record, DeadLetterOpen):
                dl = record
                dl_open.append((dl.saga_id, dl.order_id, dl.step, dl.last_error, dl.attempts, dl.at_epoch_ms))
            else:
                dl_close.append((record.at_epoch_ms, record.note, record.saga_id))
        await _in_thread(db, lambda conn: _write(conn, sagas, events, changes, dl_close, dl_open))

    # ---- reads (committed data only) ----------------------------------------------------------------------------

    async def find_order(self, order_id: str) -> SagaRecord | None:
        """get_by_order(order_id, with_events=False, kept=True), asked on the event loop's own thread: PlaceOrder asks
        it for every new order, and a point read of two indexes in a WAL file (committed data, never waiting for the
        writer) costs far less than the hand-off to a reader thread and back (about 0.2 ms of a saga at c=1). Should
        SQLite answer busy (a WAL being recovered), the reader thread asks instead, with its patience."""
        assert self._q is not None, "journal not open"
        sql, args = _order_query(order_id, kept=True)
        try:
            row = self._q.execute(sql, args).fetchone()
        except sqlite3.OperationalError:
            return await self.get_by_order(order_id, with_events=False, kept=True)
        if row is None:
            return None
        return _kept_from_row(row) if row[2] is None else _saga_from_row(row)

    @property
    def _reader(self) -> aiosqlite.Connection:
        assert self._r is not None, "journal not open"
        return self._r

    async def get_by_order(self, order_id: str, with_events: bool = True, kept: bool = False) -> SagaRecord | None:
        """The order's saga. kept: else what retention kept of it (DedupRecord.as_saga(): no steps), in the same
        read, so PlaceOrder's lookup of a new order costs one query either way."""
        sql, args = _order_query(order_id, kept)
        async with self._reader.execute(sql, args) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        if row[2] is None:  # user_id is NOT NULL in sagas: this row is order_dedup's
            return _kept_from_row(row)
        rec = _saga_from_row(row)
        if with_events:
            events = await self.events(rec.saga_id)
            rec.steps = fold_steps(events)
            rec.next_seq = (events[-1].seq + 1) if events else 1
        return rec

    async def events(self, saga_id: str) -> list[Event]:
        async with self._reader.execute(
            f"SELECT {_EVENT_COLUMNS} FROM saga_events WHERE saga_id = ? ORDER BY seq", (saga_id,)
        ) as cur:
            return [_event_from_row(r) for r in await cur.fetchall()]

    async def events_for(self, saga_ids: Sequence[str]) -> dict[str, list[Event]]:
        out: dict[str, list[Event]] = {sid: [] for sid in saga_ids}
        if not saga_ids:
            return out
        marks = ",".join("?" * len(saga_ids))
        async with self._reader.execute(
            f"SELECT {_EVENT_COLUMNS} FROM saga_events WHERE saga_id IN ({marks}) ORDER BY saga_id, seq",
            tuple(saga_ids),
        ) as cur:
            for r in await cur.fetchall():
                out[r[0]].append(_event_from_row(r))
        return out

    async def unfinished(self) -> list[SagaRecord]:
        """Every saga that still has work to do (RUNNING or COMPENSATING), with its steps folded from its log."""
        states = (int(SagaState.RUNNING), int(SagaState.COMPENSATING))
        async with self._reader.execute(
            f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE state IN (?, ?) ORDER BY created_at_epoch_ms", states
        ) as cur:
            recs = [_saga_from_row(r) for r in await cur.fetchall()]
        for i in range(0, len(recs), 500):
            chunk = recs[i : i + 500]
            events = await self.events_for([r.saga_id for r in chunk])
            for rec in chunk:
                evs = events[rec.saga_id]
                rec.steps = fold_steps(evs)
                rec.next_seq = (evs[-1].seq + 1) if evs else 1
        return recs

    async def list_sagas(self, state: SagaState | None, limit: int, before: tuple[int, str] | None) -> list[SagaRecord]:
        """Newest first; `before` is the (created_at_epoch_ms, saga_id) of the last saga of the previous page."""
        where: list[str] = []
        args: list[object] = []
        if state is not None:
            where.append("state = ?")
            args.append(int(state))
        if before is not None:
            where.append("(created_at_epoch_ms, saga_id) < (?, ?)")
            args.extend(before)
        sql = f"SELECT {_SAGA_COLUMNS} FROM sagas"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at_epoch_ms DESC, saga_id DESC LIMIT ?"
        args.append(limit)
        async with self._reader.execute(sql, tuple(args)) as cur:
            recs = [_saga_from_row(r) for r in await cur.fetchall()]
        events = await self.events_for([r.saga_id for r in recs])
        for rec in recs:
            rec.steps = fold_steps(events[rec.saga_id])
        return recs

    async def dead_letters(self, step: int, include_closed: bool, limit: int, after_id: int) -> list[DeadLetterRow]:
        """Oldest first (by id, which follows parking order)."""
        sql = (
            "SELECT id, saga_id, order_id, step, last_error, attempts, parked_at_epoch_ms, closed_at_epoch_ms, "
            "closed_note FROM dead_letters WHERE id > ?"
        )
        args: list[object] = [after_id]
        if step:
            sql += " AND step = ?"
            args.append(step)
        if not include_closed:
            sql += " AND closed_at_epoch_ms IS NULL"
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        async with self._reader.execute(sql, tuple(args)) as cur:
            return [DeadLetterRow(*r) for r in await cur.fetchall()]

    async def open_dead_letters(self) -> int:
        async with self._reader.execute("SELECT count(*) FROM dead_letters WHERE closed_at_epoch_ms IS NULL") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # ---- sealed payment blobs (coordinator/sealing.py decides what they hold) ------------------------------------

    async def sealed_page(self, after_saga_id: str, limit: int) -> list[tuple[str, SagaState, bytes]]:
        """(saga_id, state, payment_sealed) of every saga, by saga_id, `limit` at a time after `after_saga_id`."""
        async with self._reader.execute(
            "SELECT saga_id, state, payment_sealed FROM sagas WHERE saga_id > ? ORDER BY saga_id LIMIT ?",
            (after_saga_id, limit),
        ) as cur:
            return [(str(r[0]), SagaState(int(r[1])), bytes(r[2])) for r in await cur.fetchall()]

    async def sealed_of_states(self, states: Sequence[SagaState]) -> list[tuple[str, SagaState, bytes]]:
        """(saga_id, state, payment_sealed) of the sagas in `states` (through the state index: unfinished sagas are
        few, however many finished ones the journal holds)."""
        marks = ",".join("?" * len(states))
        async with self._reader.execute(
            f"SELECT saga_id, state, payment_sealed FROM sagas WHERE state IN ({marks})", tuple(int(s) for s in states)
        ) as cur:
            return [(str(r[0]), SagaState(int(r[1])), bytes(r[2])) for r in await cur.fetchall()]

    async def sealed_counts(self, header: bytes) -> tuple[int, int]:
        """(sealed blobs, those not starting with `header`): counted inside SQLite, no blob crosses into Python."""
        async with self._reader.execute(
            "SELECT count(*), coalesce(sum(substr(payment_sealed, 1, ?) != ?), 0) FROM sagas "
            "WHERE length(payment_sealed) > 0",
            (len(header), header),
        ) as cur:
            row = await cur.fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    async def replace_sealed(self, rows: Sequence[tuple[str, bytes, bytes]]) -> int:
        """Swaps (saga_id, old blob, new blob) where the saga still holds the old blob; returns how many swapped.

        Its own short transaction on its own connection: it never interleaves with the writer task's batches, and is
        safe beside a shard process writing the same file (SQLite serialises writers; the old blob is the guard)."""
        if not rows:
            return 0
        async with aiosqlite.connect(self.path, isolation_level=None) as db:
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("BEGIN IMMEDIATE")
            try:
                swapped = 0
                for saga_id, old, new in rows:
                    cur = await db.execute(
                        "UPDATE sagas SET payment_sealed = ? WHERE saga_id = ? AND payment_sealed = ?",
                        (new, saga_id, old),
                    )
                    swapped += cur.rowcount
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return swapped

    async def key_fingerprint(self, purpose: str, fingerprint: str) -> str:
        """The fingerprint the journal holds for `purpose`, recording `fingerprint` first if it holds none."""
        async with aiosqlite.connect(self.path, isolation_level=None) as db:
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute(
                "INSERT INTO key_fingerprints (purpose, fingerprint) VALUES (?, ?) ON CONFLICT (purpose) DO NOTHING",
                (purpose, fingerprint),
            )
            async with db.execute("SELECT fingerprint FROM key_fingerprints WHERE purpose = ?", (purpose,)) as cur:
                row = await cur.fetchone()
        assert row is not None
        return str(row[0])

    async def stored_key_fingerprint(self, purpose: str) -> str | None:
        """The fingerprint the journal holds for `purpose`, or None (a journal no key file has opened yet)."""
        sql = "SELECT fingerprint FROM key_fingerprints WHERE purpose = ?"
        async with self._reader.execute(sql, (purpose,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def ring_history(self) -> str | None:
        """The ring history (JSON) save_ring_history last stored, or None."""
        async with self._reader.execute("SELECT history FROM ring_history WHERE id = 1") as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def save_ring_history(self, epoch: int, history: str, caught_up: bool = False) -> None:
        """Replaces the stored ring history; durable (one fsynced commit) when this returns. caught_up: in the same
        commit, clear the mark a restore left (mark_restored)."""

        async def run(db: aiosqlite.Connection) -> None:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(
                    "INSERT INTO ring_history (id, epoch, history) VALUES (1, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, history = excluded.history",
                    (epoch, history),
                )
                if caught_up:
                    await db.execute("DELETE FROM ring_catch_up")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            await db.execute("COMMIT")

        await self._upkeep("ring", run)

    async def mark_restored(self, now_epoch_ms: int) -> None:
        """Records that this journal was rebuilt from a replica: its ring history may be older than the one the shard
        had acknowledged (coordinator.ownership catches up before it creates a saga)."""

        async def run(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT INTO ring_catch_up (id, restored_at_epoch_ms) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET restored_at_epoch_ms = excluded.restored_at_epoch_ms",
                (now_epoch_ms,),
            )

        await self._upkeep("ring", run)

    async def restored_at(self) -> int | None:
        """When mark_restored marked the journal (wall-clock epoch ms), or None if it holds no such mark."""
        async with self._reader.execute("SELECT restored_at_epoch_ms FROM ring_catch_up WHERE id = 1") as cur:
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    # ---- retention and file upkeep (coordinator/retention.py decides when) ---------------------------------------

    async def retirable(self, finished_before_epoch_ms: int, limit: int) -> list[str]:
        """Ids of finished sagas (SUCCEEDED, FAILED, RESOLVED) last updated at or before the cutoff, oldest first."""
        async with self._reader.execute(
            # INDEXED BY: without it the planner (no ANALYZE statistics) picks sagas_by_state and sorts every finished
            # saga in the journal for each batch.
            f"SELECT saga_id FROM sagas INDEXED BY sagas_by_finished WHERE {_FINISHED} AND updated_at_epoch_ms <= ? "
            "ORDER BY updated_at_epoch_ms LIMIT ?",
            (finished_before_epoch_ms, limit),
        ) as cur:
            return [str(r[0]) for r in await cur.fetchall()]

    async def archived(self, saga_ids: Sequence[str]) -> list[ArchivedSaga]:
        """The sagas with their events and dead letters, payment blob blanked: what an archive line holds."""
        if not saga_ids:
            return []
        marks = ",".join("?" * len(saga_ids))
        async with self._reader.execute(
            f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE saga_id IN ({marks}) ORDER BY updated_at_epoch_ms",
            tuple(saga_ids),
        ) as cur:
            recs = [_saga_from_row(r) for r in await cur.fetchall()]
        events = await self.events_for([r.saga_id for r in recs])
        letters: dict[str, list[DeadLetterRow]] = {r.saga_id: [] for r in recs}
        async with self._reader.execute(
            "SELECT id, saga_id, order_id, step, last_error, attempts, parked_at_epoch_ms, closed_at_epoch_ms, "
            f"closed_note FROM dead_letters WHERE saga_id IN ({marks}) ORDER BY id",
            tuple(saga_ids),
        ) as cur:
            for row in await cur.fetchall():
                letters[str(row[1])].append(DeadLetterRow(*row))
        out = []
        for rec in recs:
            rec.payment_sealed = b""
            rec.steps = fold_steps(events[rec.saga_id])
            out.append(ArchivedSaga(rec, events[rec.saga_id], letters[rec.saga_id]))
        return out

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
                    _saga_from_row(r)
                    for r in conn.execute(
                        f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE saga_id IN ({marks}) AND +state IN (3, 4, 6) "
                        "AND +updated_at_epoch_ms <= ? AND NOT EXISTS (SELECT 1 FROM dead_letters d "
                        "WHERE d.saga_id = sagas.saga_id AND d.closed_at_epoch_ms IS NULL)",
                        (*saga_ids, finished_before_epoch_ms),
                    ).fetchall()
                ]
                if recs:
                    ids = tuple(r.saga_id for r in recs)
                    gone = ",".join("?" * len(ids))
                    conn.executemany(
                        f"INSERT OR REPLACE INTO order_dedup ({_DEDUP_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                        [
                            (
                                r.order_id,
                                r.payload_hash,
                                int(r.state),
                                r.message,
                                r.saga_id,
                                r.created_at_epoch_ms,
                                r.updated_at_epoch_ms,
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
                        f"AND e.kind IN ({_OPERATOR_KINDS}) ORDER BY e.saga_id, e.seq",
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
            return await _in_thread(db, _unsynced(work))

        return await self._upkeep("retire", run)

    async def forget_orders(self, finished_before_epoch_ms: int, limit: int) -> int:
        """Removes up to `limit` dedup records of orders finished at or before the cutoff; returns how many."""

        def work(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM order_dedup WHERE order_id IN (SELECT order_id FROM order_dedup "
                "WHERE finished_at_epoch_ms <= ? ORDER BY finished_at_epoch_ms LIMIT ?)",
                (finished_before_epoch_ms, limit),
            ).rowcount

        async def run(db: aiosqlite.Connection) -> int:
            return await _in_thread(db, _unsynced(work))

        return await self._upkeep("forget_orders", run)

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
            return await _in_thread(db, _unsynced(work))

        return await self._upkeep("forget_audit", run)

    async def operator_events(self, order_id: str) -> list[Event]:
        """The operators' actions on the order's removed saga(s), kept for the audit period, oldest first."""
        async with self._reader.execute(
            "SELECT saga_id, seq, at_epoch_ms, kind, 0, 0, 0, '', detail, state, 0, 0 FROM operator_events "
            "WHERE order_id = ? ORDER BY id",
            (order_id,),
        ) as cur:
            return [_event_from_row(r) for r in await cur.fetchall()]

    async def vacuum_step(self, pages: int) -> int:
        """Hands up to `pages` free pages back to the file system (journals created with auto_vacuum=INCREMENTAL;
        a no-op on older ones); returns how many."""

        def work(conn: sqlite3.Connection) -> int:
            before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            # executescript: through execute() the sqlite3 module steps the pragma once, and it frees one page a step.
            conn.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
            return before - int(conn.execute("PRAGMA freelist_count").fetchone()[0])

        async def run(db: aiosqlite.Connection) -> int:
            return await _in_thread(db, _unsynced(work))

        return await self._upkeep("vacuum", run)

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

        return await self._upkeep("checkpoint", run)

    async def passive_checkpoint(self) -> Checkpointed:
        """Copies committed WAL frames into the file from a connection of its own: the writer goes on committing
        meanwhile (frames appended after the checkpoint began wait for the next one). Once every frame is copied and no
        reader needs the old ones, the writer's next commit starts the WAL over from its beginning (and truncates it
        to journal_size_limit), so the file stays bounded under sustained load."""
        assert self._c is not None, "journal not open"
        started = time.perf_counter()
        async with self._c.execute("PRAGMA wal_checkpoint(PASSIVE)") as cur:
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

        await self._upkeep("wal_limit", run)

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

    async def integrity_check(self) -> str:
        async with self._reader.execute("PRAGMA integrity_check") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else "no answer"


def read_key_fingerprint(path: str, purpose: str) -> str | None:
    """The fingerprint a journal file holds for `purpose` (None: none, or a journal older than schema v3), read
    without opening it as a Journal: for a check before a shard starts on it (coordinator/restore.py)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'key_fingerprints'").fetchone():
            return None
        row = db.execute("SELECT fingerprint FROM key_fingerprints WHERE purpose = ?", (purpose,)).fetchone()
    finally:
        db.close()
    return None if row is None else str(row[0])


def _saga_from_row(r: sqlite3.Row | tuple[object, ...]) -> SagaRecord:
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
    )


def _event_from_row(r: sqlite3.Row | tuple[object, ...]) -> Event:
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
    )


def _order_query(order_id: str, kept: bool) -> tuple[str, tuple[str, ...]]:
    """The read of an order's saga row, or (kept) of what retention kept of it when the row is gone."""
    if not kept:
        return f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE order_id = ?", (order_id,)
    sql = (
        f"SELECT {_SAGA_COLUMNS} FROM sagas WHERE order_id = ? UNION ALL SELECT saga_id, order_id, NULL, NULL, "
        "NULL, payload_hash, state, created_at_epoch_ms, finished_at_epoch_ms, finished_at_epoch_ms, message, "
        "'', '' FROM order_dedup WHERE order_id = ? LIMIT 1"
    )
    return sql, (order_id, order_id)


def _kept_from_row(row: Any) -> SagaRecord:
    """An order_dedup row of _order_query(kept=True) (its user_id column is NULL) as a saga without steps."""
    return DedupRecord(
        str(row[1]), str(row[5]), SagaState(int(row[6])), str(row[10]), str(row[0]), int(row[7]), int(row[8])
    ).as_saga()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _unsynced(work: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
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


def _write(
    conn: sqlite3.Connection,
    sagas: list[tuple[Any, ...]],
    events: list[tuple[Any, ...]],
    changes: list[tuple[Any, ...]],
    dl_close: list[tuple[Any, ...]],
    dl_open: list[tuple[Any, ...]],
) -> None:
    """One group commit's transaction, run on the writer connection's thread in one hop (_in_thread): BEGIN, the
    inserts and guarded updates, COMMIT (the fsync), or ROLLBACK on any failure."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if sagas:
            conn.executemany(f"INSERT INTO sagas ({_SAGA_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", sagas)
        if events:
            conn.executemany(f"INSERT INTO saga_events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", events)
        if changes:
            # Pair assertion: the engine checked the transition; SQL checks the saga is in the expected state.
            cur = conn.executemany(
                "UPDATE sagas SET state = ?, last_error = ?, parked_note = ?, updated_at_epoch_ms = ? "
                "WHERE saga_id = ? AND state = ?",
                changes,
            )
            if cur.rowcount != len(changes):
                raise TransitionConflict(
                    f"{len(changes) - cur.rowcount} state change(s) found the saga in an unexpected state"
                )
        if dl_close:
            conn.executemany(
                "UPDATE dead_letters SET closed_at_epoch_ms = ?, closed_note = ? "
                "WHERE saga_id = ? AND closed_at_epoch_ms IS NULL",
                dl_close,
            )
        if dl_open:
            conn.executemany(
                "INSERT INTO dead_letters (saga_id, order_id, step, last_error, attempts, parked_at_epoch_ms) "
                "VALUES (?,?,?,?,?,?)",
                dl_open,
            )
        crashpoints.hit("mid_commit")
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


async def _in_thread(db: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    """Runs work(connection) on the connection's own thread in one hop: a transaction of several statements then costs
    one round trip through the event loop instead of one per statement, and a loop busy with sagas cannot stretch the
    time the transaction holds the write lock. Connection._execute is what aiosqlite's public methods call; it is not
    public API, so pyproject.toml bounds aiosqlite's version and the retention tests exercise this path."""
    result: T = await db._execute(work, db._conn)  # type: ignore[no-untyped-call]
    return result


def _ok(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: asyncio.Future[None], e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)
        # A failed write nobody awaits (fire-and-forget event) must not log "exception never retrieved".
        fut.exception()


__all__ = [
    "MIGRATIONS",
    "ArchivedSaga",
    "Checkpointed",
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
    "TransitionConflict",
    "read_key_fingerprint",
]
