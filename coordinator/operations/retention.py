"""Bounded growth of a shard's journal: retention of finished sagas, their archive, WAL checkpoints, file metrics.

- A retention pass removes SUCCEEDED, FAILED and RESOLVED sagas finished more than retention.finished_after_s ago, with
  their events, `batch_sagas` at a time: each batch is one short transaction of the journal's writer, queued behind
  the saga commits already waiting, so the hot path never waits long behind it. Each removed saga leaves a dedup
  record (order id, payload hash, outcome, saga id) that PlaceOrder and GetSaga answer from until
  retention.dedup_after_s; the pass then expires those older than that. Unfinished and dead-lettered sagas are never
  touched (the journal checks it again in SQL).
- Operators' actions are the audit trail: a removed saga's closed dead letters (who retried or resolved it, and why)
  stay, listed by ListDeadLetters(include_closed), and its ADMIN_RETRY / ADMIN_RESOLVE events stay in
  operator_events (GetSaga shows them with the dedup record's minimal view), until retention.audit_after_s.
- With retention.archive_dir set, each batch is first appended to <dir>/<shard>-<YYYY-MM-DD>.jsonl.gz (the UTC day the
  sagas finished; one gzip member per batch, fsynced before the rows go): one saga per line with its events and dead
  letters, never its sealed payment blob. A line can repeat if a pass stopped between archive and removal.
- A checkpoint check every wal.checkpoint_interval_s runs a TRUNCATE checkpoint from the writer when it is nearly idle,
  or whatever the load once the WAL is past wal.limit_bytes; readers can hold it up for checkpoint_busy_ms at most.
- After a pass that removed rows, incremental vacuum steps hand free pages back (journals created by this build;
  older journals keep auto_vacuum=NONE: their free pages are reused by new rows, so the file stops growing, and
  `python -m coordinator.operations.retention_cli vacuum` on a stopped shard converts them).

`python -m coordinator.operations.retention_cli run` runs one pass now (beside a running shard: SQLite serialises the
two writers); `export ORDER_ID` prints one saga's archive line, from the journal or the archive
(coordinator/operations/retention_cli.py)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from loguru import logger

from common.loops import run_every
from coordinator.clock import Clock
from coordinator.config import ShardConfig
from coordinator.journal import ArchivedSaga, Journal
from coordinator.metrics import ShardMetrics
from coordinator.saga.model import SagaState
from coordinator.saga.record import Event, EventKind, SagaRecord, fold_steps
from protos.saga.v1 import saga_pb2

ARCHIVE_VERSION = 1


@dataclass(frozen=True, slots=True)
class PassReport:
    removed: int
    archived: int
    forgotten: int
    audit_removed: int
    """Operator actions (closed dead letters, ADMIN events of removed sagas) past retention.audit_after_s."""
    batches: int
    vacuumed_pages: int
    duration_s: float
    longest_batch_s: float
    """The longest any one job held the journal's writer during the pass (a retire or forget batch, a vacuum step, or
    a checkpoint that ran between them)."""


class Upkeep:
    """The shard's background upkeep of its journal: retention passes, checkpoints, file metrics."""

    def __init__(self, cfg: ShardConfig, journal: Journal, clock: Clock, metrics: ShardMetrics | None = None) -> None:
        self.cfg = cfg
        self.journal = journal
        self.clock = clock
        self.metrics = metrics or ShardMetrics()
        self._tasks: list[asyncio.Task[None]] = []
        self._pass_lock = asyncio.Lock()  # a pass asked for now and the periodic one never run side by side

    async def start(self) -> None:
        await self.journal.set_wal_limit(self.cfg.wal.limit_bytes)
        loops: list[tuple[float, Any, str]] = [(self.cfg.wal.checkpoint_interval_s, self.checkpoint_once, "checkpoint")]
        if self.cfg.retention.interval_s > 0:
            loops.append((self.cfg.retention.interval_s, self.run_pass, "retention pass"))
        if self.cfg.retention.stats_interval_s > 0:
            loops.append((self.cfg.retention.stats_interval_s, self.refresh_stats, "journal stats"))
        for interval_s, body, name in loops:
            # The journal's figures are there from the start (a dashboard shows them at once); the rest waits a round.
            first_now = body == self.refresh_stats
            coro = run_every(interval_s, body, name=name, sleep=self.clock.sleep, wait_first=not first_now)
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # ---- retention ------------------------------------------------------------------------------------------------

    async def run_pass(self) -> PassReport:
        async with self._pass_lock:
            return await self._run_pass()

    async def _run_pass(self) -> PassReport:
        r = self.cfg.retention
        started = time.perf_counter()
        now = self.clock.now_epoch_ms()
        cutoff = now - r.finished_after_s * 1000
        removed = archived = forgotten = audit = batches = vacuumed = 0
        # Every job that held the writer during the pass counts (a checkpoint between two batches too): that is the
        # pause sagas saw while retention ran.
        self.journal.stats.longest_upkeep_s = 0.0
        while batches < r.max_batches_per_pass:
            ids = await self.journal.retirable(cutoff, r.batch_sagas)
            if not ids:
                break
            if r.archive_dir:
                rows = await self.journal.archived(ids)
                await asyncio.to_thread(write_archive, r.archive_dir, self.cfg.shard_id, rows)
                archived += len(rows)
                self.metrics.retention_archived.inc(len(rows))
            n = await self.journal.retire(ids, cutoff)
            await self._keep_wal_small()
            batches += 1
            removed += n
            self.metrics.retention_removed.labels("sagas").inc(n)
            if n == 0:
                break  # the journal refused them all (not finished after all): never spin on the same ids
        dedup_cutoff = now - r.dedup_after_s * 1000
        while batches < r.max_batches_per_pass:
            n = await self.journal.forget_orders(dedup_cutoff, r.batch_sagas)
            batches += 1
            forgotten += n
            self.metrics.retention_removed.labels("dedup").inc(n)
            if n < r.batch_sagas:
                break
        audit_cutoff = now - r.audit_after_s * 1000
        while batches < r.max_batches_per_pass:
            n = await self.journal.forget_audit(audit_cutoff, r.batch_sagas)
            batches += 1
            audit += n
            self.metrics.retention_removed.labels("audit").inc(n)
            if n == 0:
                break
        if removed or forgotten or audit:
            for _ in range(r.max_batches_per_pass):
                n = await self.journal.vacuum_step(r.vacuum_pages)
                vacuumed += n
                if n < r.vacuum_pages:
                    break
        longest = self.journal.stats.longest_upkeep_s
        took = time.perf_counter() - started
        report = PassReport(removed, archived, forgotten, audit, batches, vacuumed, took, longest)
        if removed or forgotten or audit:
            logger.info(
                "retention removed {} sagas ({} archived), forgot {} orders and {} operator actions, freed {} pages "
                "in {:.2f}s; longest batch {:.1f} ms",
                removed,
                archived,
                forgotten,
                audit,
                vacuumed,
                report.duration_s,
                longest * 1000,
            )
        return report

    # ---- the WAL and the file ----------------------------------------------------------------------------------

    async def checkpoint_once(self) -> bool:
        """Copies the WAL back into the file beside the writer (PASSIVE, from a connection of its own: the writer never
        waits for it), then, if the writer is nearly idle or the WAL is past its bound, a TRUNCATE from the writer,
        which has little left to copy by then; True if a checkpoint ran."""
        w = self.cfg.wal
        wal = _size(self.journal.path + "-wal")
        if wal == 0:
            return False
        if self.cfg.replication.litestream_socket and wal <= 4 * w.limit_bytes:
            # Litestream checkpoints a replicated journal itself (it must see every WAL frame before it is folded
            # in); the shard steps in only if the WAL grows far past its bound, e.g. while Litestream is down.
            return False
        await self.journal.passive_checkpoint()
        self.metrics.checkpoints.labels("passive").inc()
        busy = self.journal.queued > w.idle_queue or self._pass_lock.locked()
        if busy and wal <= w.limit_bytes:
            # The writer starts the WAL over by itself once every frame is copied back (truncating it to the limit);
            # a TRUNCATE, which holds the writer tens of ms, waits for a quiet moment (a retention pass is not one).
            return True
        done = await self.journal.checkpoint("TRUNCATE", w.checkpoint_busy_ms)
        self.metrics.checkpoints.labels("busy" if done.busy else "done").inc()
        return True

    async def _keep_wal_small(self) -> None:
        """Between retention batches: removals write many pages, faster than the periodic checkpoint copies them back,
        and a WAL that reached its bound would have SQLite checkpoint inside a batch's commit (measured: 241 ms holding
        the writer). A passive checkpoint beside the writer once a quarter of the bound has piled up keeps it small."""
        if self.cfg.replication.litestream_socket:
            return
        if _size(self.journal.path + "-wal") > self.cfg.wal.limit_bytes // 4:
            await self.journal.passive_checkpoint()
            self.metrics.checkpoints.labels("passive").inc()

    async def refresh_stats(self) -> None:
        stats = await asyncio.to_thread(self.journal.file_stats)
        now = self.clock.now_epoch_ms()
        for table, rows in stats.rows.items():
            self.metrics.journal_rows.labels(table).set(rows)
            oldest = stats.oldest_epoch_ms.get(table)
            self.metrics.journal_oldest_age.labels(table).set(0 if oldest is None else max(0, now - oldest) / 1000)
        self.metrics.journal_free_pages.set(stats.free_pages)


# ---- the archive ------------------------------------------------------------------------------------------------


def archive_line(a: ArchivedSaga) -> dict[str, Any]:
    """One saga as an archive line: everything GetSaga shows, never the payment details."""
    rec = a.saga
    request = saga_pb2.PlaceOrderRequest.FromString(rec.request)
    request.ClearField("payment_info")  # never stored with the request; cleared again in case an old row had it
    return {
        "v": ARCHIVE_VERSION,
        "saga_id": rec.saga_id,
        "order_id": rec.order_id,
        "user_id": rec.user_id,
        "state": rec.state.name,
        "items": [json_format.MessageToDict(i, preserving_proto_field_name=True) for i in request.items],
        "created_at_epoch_ms": rec.created_at_epoch_ms,
        "updated_at_epoch_ms": rec.updated_at_epoch_ms,
        "deadline_epoch_ms": rec.deadline_epoch_ms,
        "last_error": rec.last_error,
        "parked_note": rec.parked_note,
        "definition_hash": rec.definition_hash,
        "events": [
            {
                "seq": e.seq,
                "at_epoch_ms": e.at_epoch_ms,
                "kind": str(e.kind),
                "state": e.state.name,
                "step": e.step,
                "action": e.action,
                "attempt": e.attempt,
                "code": e.code,
                "detail": e.detail,
                "wait_ms": e.wait_ms,
                "spent_ms": e.spent_ms,
            }
            for e in a.events
        ],
        "dead_letters": [
            {
                "step": d.step,
                "last_error": d.last_error,
                "attempts": d.attempts,
                "parked_at_epoch_ms": d.parked_at_epoch_ms,
                "closed_at_epoch_ms": d.closed_at_epoch_ms,
                "closed_note": d.closed_note,
            }
            for d in a.dead_letters
        ],
    }


def saga_from_archive(line: dict[str, Any]) -> tuple[SagaRecord, list[Event]]:
    """The saga and events an archive line holds, as GetSaga would have read them (no payment details)."""
    if line.get("v") != ARCHIVE_VERSION:
        raise ValueError(f"archive line version {line.get('v')!r}, this build reads {ARCHIVE_VERSION}")
    items = [json_format.ParseDict(i, saga_pb2.Item()) for i in line["items"]]
    request = saga_pb2.PlaceOrderRequest(order_id=line["order_id"], user_id=line["user_id"], items=items)
    events = [
        Event(
            saga_id=line["saga_id"],
            seq=e["seq"],
            at_epoch_ms=e["at_epoch_ms"],
            kind=EventKind(e["kind"]),
            state=SagaState[e["state"]],
            step=e["step"],
            action=e["action"],
            attempt=e["attempt"],
            code=e["code"],
            detail=e["detail"],
            wait_ms=e["wait_ms"],
            spent_ms=e["spent_ms"],
        )
        for e in line["events"]
    ]
    rec = SagaRecord(
        saga_id=line["saga_id"],
        order_id=line["order_id"],
        user_id=line["user_id"],
        request=request.SerializeToString(deterministic=True),
        payment_sealed=b"",
        payload_hash="",
        state=SagaState[line["state"]],
        created_at_epoch_ms=line["created_at_epoch_ms"],
        updated_at_epoch_ms=line["updated_at_epoch_ms"],
        deadline_epoch_ms=line["deadline_epoch_ms"],
        last_error=line["last_error"],
        parked_note=line["parked_note"],
        definition_hash=line.get("definition_hash", ""),
        steps=fold_steps(events),
        next_seq=(events[-1].seq + 1) if events else 1,
    )
    return rec, events


def archive_path(archive_dir: str, shard_id: str, finished_at_epoch_ms: int) -> Path:
    day = datetime.fromtimestamp(finished_at_epoch_ms / 1000, UTC).strftime("%Y-%m-%d")
    return Path(archive_dir) / f"{shard_id}-{day}.jsonl.gz"


def write_archive(archive_dir: str, shard_id: str, sagas: list[ArchivedSaga]) -> None:
    """Appends the sagas to their days' files, one gzip member per file per call, fsynced before returning."""
    by_file: dict[Path, list[ArchivedSaga]] = defaultdict(list)
    for a in sagas:
        by_file[archive_path(archive_dir, shard_id, a.saga.updated_at_epoch_ms)].append(a)
    Path(archive_dir).mkdir(parents=True, exist_ok=True)
    for path, group in by_file.items():
        data = "".join(json.dumps(archive_line(a), separators=(",", ":")) + "\n" for a in group).encode()
        with open(path, "ab") as f:
            f.write(gzip.compress(data, compresslevel=6))
            f.flush()
            os.fsync(f.fileno())
    dir_fd = os.open(archive_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # a new day's file must survive a crash too
    finally:
        os.close(dir_fd)


def read_archive(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for text in f:
            if text.strip():
                yield json.loads(text)


def find_in_archive(archive_dir: str, shard_id: str, order_id: str) -> dict[str, Any] | None:
    """The order's last archive line (a line can repeat), reading every day's file: an operator's look-up."""
    last = None
    if Path(archive_dir).is_dir():
        for path in sorted(Path(archive_dir).glob(f"{shard_id}-*.jsonl.gz")):
            for line in read_archive(path):
                if line.get("order_id") == order_id:
                    last = line
    return last


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
