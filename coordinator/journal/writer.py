"""The journal's one writer: a task that commits whatever is pending in one transaction (group commit: the batch is
what piled up while the previous commit ran, not a timer, and the commit window may wait for more: window.py), then
resolves the submitters' futures. Jobs that must write alone (retention's batches, checkpoints, the ring history) queue
behind the commits already pending (run_alone), so they interleave with saga commits instead of racing them for the
write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiosqlite
from loguru import logger

from coordinator import crashpoints
from coordinator.journal.base import JournalBase
from coordinator.journal.records import DeadLetterOpen, NewSaga, Record, StateChange, TransitionConflict
from coordinator.journal.schema import EVENT_COLUMNS, SAGA_COLUMNS
from coordinator.journal.window import CommitWindow
from coordinator.saga.errors import JournalUnavailable
from coordinator.saga.model import check_transition
from coordinator.saga.record import Event

T = TypeVar("T")


@dataclass(slots=True)
class _AloneJob:
    """A job the writer runs alone, between two group commits."""

    name: str
    run: Callable[[aiosqlite.Connection], Awaitable[Any]]
    fut: asyncio.Future[Any]


class JournalWriter(JournalBase):
    window: CommitWindow
    _max_batch: int
    _pending: deque[tuple[Sequence[Record], asyncio.Future[None], bool] | _AloneJob]
    _wakeup: asyncio.Event
    _writer_task: asyncio.Task[None] | None
    _closing: bool

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
        self._wakeup.set()
        self.window.queued(ends_round)
        return fut

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
                if isinstance(head, _AloneJob):
                    self._pending.popleft()
                    await self._run_alone(head)
                    continue
                if not self._closing:
                    await self.window.gather()
                batch: list[tuple[Sequence[Record], asyncio.Future[None]]] = []
                size = 0
                while self._pending:
                    item = self._pending[0]
                    if isinstance(item, _AloneJob) or (batch and size + len(item[0]) > self._max_batch):
                        break
                    records, fut, ends_round = item
                    batch.append((records, fut))
                    size += len(records)
                    self.window.taken(ends_round)
                    self._pending.popleft()
                await self._commit_batch(batch)
            if self._closing and not self._pending:
                return

    @property
    def queued(self) -> int:
        """Submissions waiting for the writer (how busy it is: upkeep that can wait runs when this is low)."""
        return len(self._pending)

    async def run_alone(self, name: str, run: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Runs `run` on the writer's connection, alone, after what is already queued: upkeep interleaves with saga
        commits instead of racing them for the write lock."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._closing:
            raise JournalUnavailable("journal is closing")
        self._pending.append(_AloneJob(name, run, fut))
        self._wakeup.set()
        return await fut

    async def _run_alone(self, job: _AloneJob) -> None:
        assert self._writer_db is not None, "journal not open"
        started = time.perf_counter()
        try:
            result = await job.run(self._writer_db)
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
        db = self._writer_db
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
                        ev.output or None,
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
                        saga.definition_hash,
                    )
                )
            elif isinstance(record, DeadLetterOpen):
                dl = record
                dl_open.append((dl.saga_id, dl.order_id, dl.step, dl.last_error, dl.attempts, dl.at_epoch_ms))
            else:
                dl_close.append((record.at_epoch_ms, record.note, record.saga_id))
        await in_thread(db, lambda conn: _write(conn, sagas, events, changes, dl_close, dl_open))


def _write(
    conn: sqlite3.Connection,
    sagas: list[tuple[Any, ...]],
    events: list[tuple[Any, ...]],
    changes: list[tuple[Any, ...]],
    dl_close: list[tuple[Any, ...]],
    dl_open: list[tuple[Any, ...]],
) -> None:
    """One group commit's transaction, run on the writer connection's thread in one hop (in_thread): BEGIN, the
    inserts and guarded updates, COMMIT (the fsync), or ROLLBACK on any failure."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if sagas:
            conn.executemany(f"INSERT INTO sagas ({SAGA_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", sagas)
        if events:
            conn.executemany(f"INSERT INTO saga_events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", events)
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


async def in_thread(db: aiosqlite.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
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
