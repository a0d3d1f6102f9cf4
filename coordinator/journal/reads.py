"""The journal's reads: committed data only, on connections that never write (a reader thread, and the event loop's
own connection for PlaceOrder's look-up of a new order)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from coordinator.journal.base import JournalBase
from coordinator.journal.records import ArchivedSaga, DeadLetterRow
from coordinator.journal.schema import (
    EVENT_COLUMNS,
    FINISHED,
    SAGA_COLUMNS,
    event_from_row,
    order_query,
    order_row,
    saga_from_row,
)
from coordinator.saga.model import SagaState
from coordinator.saga.record import Event, SagaRecord, fold_steps


class JournalReads(JournalBase):
    async def find_order(self, order_id: str) -> SagaRecord | None:
        """get_by_order(order_id, with_events=False, kept=True), asked on the event loop's own thread: PlaceOrder asks
        it for every new order, and a point read of two indexes in a WAL file (committed data, never waiting for the
        writer) costs far less than the hand-off to a reader thread and back (about 0.2 ms of a saga at c=1). Should
        SQLite answer busy (a WAL being recovered), the reader thread asks instead, with its patience."""
        assert self._loop_db is not None, "journal not open"
        sql, args = order_query(order_id, kept=True)
        try:
            row = self._loop_db.execute(sql, args).fetchone()
        except sqlite3.OperationalError:
            return await self.get_by_order(order_id, with_events=False, kept=True)
        if row is None:
            return None
        return order_row(row)[0]

    async def get_by_order(self, order_id: str, with_events: bool = True, kept: bool = False) -> SagaRecord | None:
        """The order's saga. kept: else what retention kept of it (DedupRecord.as_saga(): no steps), in the same
        read, so PlaceOrder's lookup of a new order costs one query either way."""
        sql, args = order_query(order_id, kept)
        async with self._reader.execute(sql, args) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        rec, kept_only = order_row(row)
        if kept_only:
            return rec
        if with_events:
            events = await self.events(rec.saga_id)
            rec.steps = fold_steps(events)
            rec.next_seq = (events[-1].seq + 1) if events else 1
        return rec

    async def events(self, saga_id: str) -> list[Event]:
        async with self._reader.execute(
            f"SELECT {EVENT_COLUMNS} FROM saga_events WHERE saga_id = ? ORDER BY seq", (saga_id,)
        ) as cur:
            return [event_from_row(r) for r in await cur.fetchall()]

    async def events_for(self, saga_ids: Sequence[str]) -> dict[str, list[Event]]:
        out: dict[str, list[Event]] = {sid: [] for sid in saga_ids}
        if not saga_ids:
            return out
        marks = ",".join("?" * len(saga_ids))
        async with self._reader.execute(
            f"SELECT {EVENT_COLUMNS} FROM saga_events WHERE saga_id IN ({marks}) ORDER BY saga_id, seq",
            tuple(saga_ids),
        ) as cur:
            for r in await cur.fetchall():
                out[r[0]].append(event_from_row(r))
        return out

    async def unfinished(self) -> list[SagaRecord]:
        """Every saga that still has work to do (RUNNING or COMPENSATING), with its steps folded from its log."""
        states = (int(SagaState.RUNNING), int(SagaState.COMPENSATING))
        async with self._reader.execute(
            f"SELECT {SAGA_COLUMNS} FROM sagas WHERE state IN (?, ?) ORDER BY created_at_epoch_ms", states
        ) as cur:
            recs = [saga_from_row(r) for r in await cur.fetchall()]
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
        sql = f"SELECT {SAGA_COLUMNS} FROM sagas"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at_epoch_ms DESC, saga_id DESC LIMIT ?"
        args.append(limit)
        async with self._reader.execute(sql, tuple(args)) as cur:
            recs = [saga_from_row(r) for r in await cur.fetchall()]
        events = await self.events_for([r.saga_id for r in recs])
        for rec in recs:
            rec.steps = fold_steps(events[rec.saga_id])
        return recs

    async def dead_letters(self, step: int, include_closed: bool, limit: int, after_id: int) -> list[DeadLetterRow]:
        """Oldest first (by id, which follows parking order)."""
        sql = (
            "SELECT id, saga_id, order_id, step, last_error, attempts, parked_at_epoch_ms, closed_at_epoch_ms, "
            "closed_note, coalesce((SELECT s.definition_hash FROM sagas s WHERE s.saga_id = dead_letters.saga_id), '') "
            "FROM dead_letters WHERE id > ?"
        )
        args: list[object] = [after_id]
        if step:
            # The saga.v1 Step enum names the order flow's steps: another type's step of that number is not one.
            sql += " AND step = ? AND order_id NOT LIKE '%/%'"
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

    async def operator_events(self, order_id: str) -> list[Event]:
        """The operators' actions on the order's removed saga(s), kept for the audit period, oldest first."""
        async with self._reader.execute(
            "SELECT saga_id, seq, at_epoch_ms, kind, 0, 0, 0, '', detail, state, 0, 0, NULL FROM operator_events "
            "WHERE order_id = ? ORDER BY id",
            (order_id,),
        ) as cur:
            return [event_from_row(r) for r in await cur.fetchall()]

    async def integrity_check(self) -> str:
        async with self._reader.execute("PRAGMA integrity_check") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else "no answer"

    async def retirable(self, finished_before_epoch_ms: int, limit: int) -> list[str]:
        """Ids of finished sagas (SUCCEEDED, FAILED, RESOLVED) last updated at or before the cutoff, oldest first."""
        async with self._reader.execute(
            # INDEXED BY: without it the planner (no ANALYZE statistics) picks sagas_by_state and sorts every finished
            # saga in the journal for each batch.
            f"SELECT saga_id FROM sagas INDEXED BY sagas_by_finished WHERE {FINISHED} AND updated_at_epoch_ms <= ? "
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
            f"SELECT {SAGA_COLUMNS} FROM sagas WHERE saga_id IN ({marks}) ORDER BY updated_at_epoch_ms",
            tuple(saga_ids),
        ) as cur:
            recs = [saga_from_row(r) for r in await cur.fetchall()]
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
