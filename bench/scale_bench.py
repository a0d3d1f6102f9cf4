"""How a shard's cost grows with the work it has done (`python -m bench scale --scale-sagas N`).

One journal is filled with N finished sagas by the fast path (NewSaga plus each saga's events, in large batches through
coordinator.journal.Journal, no services called). At 0, N/10 and N finished sagas it measures, on an in-process shard
(coordinator.shard.Shard over the real journal, a caller that answers OK at once, so the figures are the coordinator's
and the journal's, not the network's): start-up time (journal open + migrations + sealer + resume), PlaceOrder
throughput and p99 at concurrency 64, GetSaga p99 (with events), ListSagas first page and a state-filtered page p99,
journal bytes per saga, and the WAL's peak during the load. Then a retention pass removing half the sagas: its
duration, the longest a batch held the journal's writer, the file size after (incremental vacuum included).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop
from loguru import logger

from common.definitions.check import order_flow
from common.definitions.model import Step, Values
from coordinator.clock import SystemClock
from coordinator.config import Limits, Retention, ShardConfig
from coordinator.journal import Journal, NewSaga
from coordinator.saga.errors import CallResult, OperationAnswer, OperationState
from coordinator.saga.model import Action, SagaState
from coordinator.saga.record import Event, EventKind, SagaRecord
from coordinator.security.sealing import open_sealer
from coordinator.shard import Shard
from protos.saga.v1 import saga_pb2

CREATE_ORDER, RESERVE_INVENTORY, PROCESS_PAYMENT, SCHEDULE_SHIPMENT = order_flow().steps

CONCURRENCY = 64
DAY_MS = 86_400_000
FILL_BATCH = 500  # sagas per fill transaction: the fast path, far past what the hot path commits at once


class InstantCaller:
    """Every call answers at once (OK, or a decline at payment for tok_declined): the figures are the coordinator's.
    It notes when each saga made its first call (how fast a restart resumes them)."""

    def __init__(self) -> None:
        self.first_call: dict[str, float] = {}

    async def call(self, payload: Values, step: Step, action: Action, timeout_s: float) -> CallResult:
        self.first_call.setdefault(payload.saga_id, time.perf_counter())
        order: saga_pb2.PlaceOrderRequest = payload.input
        declined = order.payment_info.payment_token == "tok_declined"
        if step == PROCESS_PAYMENT and action is Action.FORWARD and declined:
            return CallResult(grpc.StatusCode.FAILED_PRECONDITION, "payment declined")
        return CallResult(grpc.StatusCode.OK)

    async def get_operation(self, payload: Values, step: Step, action: Action, timeout_s: float) -> OperationAnswer:
        return OperationAnswer(OperationState.NOT_FOUND)  # never asked: every call answers

    async def close(self) -> None:
        return None


def _events(saga_id: str, at: int, failed: bool) -> list[Event]:
    """The events a real saga leaves: success 10, declined at payment 15 (with its two compensations)."""
    evs = [Event(saga_id, 1, at, EventKind.CREATED, SagaState.RUNNING, detail="ttl 30000 ms")]
    every = list(order_flow().steps)
    steps = every[:3] if failed else every
    for step in steps:
        evs.append(Event(saga_id, len(evs) + 1, at, EventKind.STARTED, SagaState.RUNNING, int(step), 1, 1))
        if failed and step == PROCESS_PAYMENT:
            evs.append(Event(saga_id, len(evs) + 1, at, EventKind.FAILED, SagaState.RUNNING, int(step), 1, 1,
                             "FAILED_PRECONDITION", "payment declined"))  # fmt: skip
        else:
            evs.append(Event(saga_id, len(evs) + 1, at, EventKind.SUCCEEDED, SagaState.RUNNING, int(step), 1, 1, "OK"))
    if failed:
        evs.append(Event(saga_id, len(evs) + 1, at, EventKind.STATE, SagaState.COMPENSATING, detail="payment declined"))
        for step in (RESERVE_INVENTORY, CREATE_ORDER):
            evs.append(Event(saga_id, len(evs) + 1, at, EventKind.STARTED, SagaState.COMPENSATING, int(step), 2, 1))
            evs.append(
                Event(saga_id, len(evs) + 1, at, EventKind.SUCCEEDED, SagaState.COMPENSATING, int(step), 2, 1, "OK")
            )
    end = SagaState.FAILED if failed else SagaState.SUCCEEDED
    evs.append(Event(saga_id, len(evs) + 1, at, EventKind.STATE, end, detail="payment declined" if failed else ""))
    return evs


async def _fill(journal: Journal, start: int, count: int, now_ms: int, rng: random.Random) -> int:
    """Sagas start..start+count, finished 8 to 9 days ago for the first half of N, 1 to 2 days ago after; returns
    how many events were written."""
    written = 0
    for lo in range(start, start + count, FILL_BATCH):
        records: list[Any] = []
        for i in range(lo, min(lo + FILL_BATCH, start + count)):
            failed = rng.random() < 0.1
            age = (8 if i % 2 == 0 else 1) * DAY_MS + rng.randrange(DAY_MS)
            at = now_ms - age
            req = saga_pb2.PlaceOrderRequest(
                order_id=f"filled-{i}", user_id=f"user-{i % 997}", items=[saga_pb2.Item(item_id="sku-1", quantity=2)]
            )
            rec = SagaRecord(
                saga_id=f"{i:032x}",
                order_id=f"filled-{i}",
                user_id=f"user-{i % 997}",
                request=req.SerializeToString(deterministic=True),
                payment_sealed=rng.randbytes(96),
                payload_hash=rng.randbytes(32).hex(),
                state=SagaState.FAILED if failed else SagaState.SUCCEEDED,
                created_at_epoch_ms=at - 40,
                updated_at_epoch_ms=at,
                deadline_epoch_ms=at + 30_000,
                last_error="process_payment: payment declined" if failed else "",
            )
            evs = _events(rec.saga_id, at, failed)
            written += len(evs)
            records.append(NewSaga(rec))
            records.extend(evs)
        await journal.write(records)
    return written


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2) if values else 0.0


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


async def _measure(cfg: ShardConfig, filled: int, orders: int, tag: str) -> dict[str, Any]:
    started = time.perf_counter()
    journal = Journal(cfg.journal_path, max_batch=cfg.limits.journal_max_batch)
    await journal.open()
    sealer = await open_sealer(cfg, journal)
    shard = Shard(cfg, journal, InstantCaller(), SystemClock(), sealer, random.Random(1))
    await shard.start()
    startup_s = time.perf_counter() - started
    wal_peak = 0
    stop = asyncio.Event()

    async def sample_wal() -> None:
        nonlocal wal_peak
        while not stop.is_set():
            wal_peak = max(wal_peak, _size(cfg.journal_path + "-wal"))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample_wal())
    try:
        queue = [f"{tag}-{i}" for i in range(orders)]
        latencies: list[float] = []

        async def placer() -> None:
            while queue:
                oid = queue.pop()
                t0 = time.perf_counter()
                req = saga_pb2.PlaceOrderRequest(
                    order_id=oid,
                    user_id="bench",
                    items=[saga_pb2.Item(item_id="sku-1", quantity=1)],
                    payment_info=saga_pb2.PaymentInfo(payment_token="tok_ok", amount_cents=100, currency="EUR"),
                )
                if len(queue) % 10 == 0:  # a tenth declined, as in the fill: ListSagas(FAILED) has a page at 0 too
                    req.payment_info.payment_token = "tok_declined"
                placed = await shard.place_order(req)
                assert placed.saga.state.terminal, placed.saga
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(placer() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - t0
        rng = random.Random(filled)
        gets: list[float] = []
        for _ in range(300):
            oid = f"filled-{rng.randrange(filled)}" if filled else f"{tag}-{rng.randrange(orders)}"
            t1 = time.perf_counter()
            await shard.get(oid, with_events=True)
            gets.append(time.perf_counter() - t1)
        pages: list[float] = []
        filtered: list[float] = []
        for _ in range(100):
            t1 = time.perf_counter()
            await shard.list_sagas(None, 50, None)
            pages.append(time.perf_counter() - t1)
            t1 = time.perf_counter()
            await shard.list_sagas(SagaState.FAILED, 50, None)
            filtered.append(time.perf_counter() - t1)
    finally:
        stop.set()
        await sampler
        await shard.stop()
        await journal.close()
    sagas = filled + orders
    size = _size(cfg.journal_path) + _size(cfg.journal_path + "-wal")
    return {
        "finished_sagas": filled,
        "startup_ms": round(startup_s * 1000, 1),
        "place_per_s": round(orders / elapsed, 1),
        "place_p99_ms": _p(latencies, 0.99),
        "place_p50_ms": _p(latencies, 0.5),
        "get_p99_ms": _p(gets, 0.99),
        "list_p99_ms": _p(pages, 0.99),
        "list_failed_p99_ms": _p(filtered, 0.99),
        "bytes_per_saga": round(size / max(sagas, 1), 1),
        "file_bytes": size,
        "wal_peak_bytes": wal_peak,
    }


async def _retention(cfg: ShardConfig) -> dict[str, Any]:
    journal = Journal(cfg.journal_path, max_batch=cfg.limits.journal_max_batch)
    await journal.open()
    try:
        before = _size(cfg.journal_path)
        sealer = await open_sealer(cfg, journal)
        shard = Shard(cfg, journal, InstantCaller(), SystemClock(), sealer, random.Random(1))
        report = await shard.upkeep.run_pass()
        commits = journal.stats
        await journal.checkpoint("TRUNCATE", 1000)
    finally:
        await journal.close()
    return {
        "removed": report.removed,
        "batches": report.batches,
        "duration_s": round(report.duration_s, 2),
        "longest_batch_ms": round(report.longest_batch_s * 1000, 2),
        "pass_ms_per_batch": round(report.duration_s * 1000 / max(report.batches, 1), 2),
        "vacuumed_pages": report.vacuumed_pages,
        "file_bytes_before": before,
        "file_bytes_after": _size(cfg.journal_path),
        "upkeep_jobs": commits.upkeep_jobs,
    }


async def _recovery(cfg: ShardConfig, unfinished: int) -> dict[str, Any]:
    """Adds `unfinished` RUNNING sagas (created, nothing called yet) to the journal, then restarts a shard on it: how
    long until it serves, and how fast it resumes them (limits.resume_per_s)."""
    journal = Journal(cfg.journal_path)
    await journal.open()
    try:
        sealer = await open_sealer(cfg, journal)
        now = int(time.time() * 1000)
        payment = saga_pb2.PaymentInfo(payment_token="tok_ok", amount_cents=100, currency="EUR")
        for lo in range(0, unfinished, FILL_BATCH):
            records: list[Any] = []
            for i in range(lo, min(lo + FILL_BATCH, unfinished)):
                saga_id = f"u{i:031x}"
                req = saga_pb2.PlaceOrderRequest(
                    order_id=f"unfinished-{i}", user_id="bench", items=[saga_pb2.Item(item_id="sku-1", quantity=1)]
                )
                rec = SagaRecord(
                    saga_id=saga_id,
                    order_id=f"unfinished-{i}",
                    user_id="bench",
                    request=req.SerializeToString(deterministic=True),
                    payment_sealed=sealer.seal(saga_id, payment.SerializeToString(deterministic=True)),
                    payload_hash="0" * 64,
                    state=SagaState.RUNNING,
                    created_at_epoch_ms=now,
                    updated_at_epoch_ms=now,
                    deadline_epoch_ms=now + 3_600_000,
                )
                records += [NewSaga(rec), Event(saga_id, 1, now, EventKind.CREATED, SagaState.RUNNING)]
            await journal.write(records)
    finally:
        await journal.close()
    caller = InstantCaller()
    started = time.perf_counter()
    journal = Journal(cfg.journal_path, max_batch=cfg.limits.journal_max_batch)
    await journal.open()
    sealer = await open_sealer(cfg, journal)
    shard = Shard(cfg, journal, caller, SystemClock(), sealer, random.Random(1))
    resumed = await shard.start()
    serving_s = time.perf_counter() - started
    try:
        while shard.in_flight:  # noqa: ASYNC110 - the shard keeps a count, no event, of its live sagas
            await asyncio.sleep(0.05)
        done_s = time.perf_counter() - started
    finally:
        await shard.stop()
        await journal.close()
    firsts = sorted(caller.first_call.values())
    peak, lo = 0, 0
    for hi, t in enumerate(firsts):  # most sagas that made their first call within any one second
        while t - firsts[lo] > 1.0:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return {
        "unfinished": resumed,
        "serving_ms": round(serving_s * 1000, 1),
        "all_finished_s": round(done_s, 2),
        "peak_resumed_per_s": peak,
        "resume_per_s_limit": cfg.limits.resume_per_s,
    }


async def _run(n: int, orders: int, workdir: Path) -> dict[str, Any]:
    cfg = ShardConfig(
        journal_path=str(workdir / "scale.db"),
        limits=Limits(max_in_flight=10_000),
        retention=Retention(interval_s=0, stats_interval_s=0),
    )
    rng = random.Random(7)
    now = int(time.time() * 1000)
    points: list[dict[str, Any]] = [await _measure(cfg, 0, orders, "p0")]
    events = 0
    fill_s = 0.0
    filled = 0
    for target in (n // 10, n):
        journal = Journal(cfg.journal_path)
        await journal.open()
        t0 = time.perf_counter()
        events += await _fill(journal, filled, target - filled, now, rng)
        fill_s += time.perf_counter() - t0
        await journal.close()
        filled = target
        points.append(await _measure(cfg, filled, orders, f"p{target}"))
    retention = await _retention(cfg)
    recovery = await _recovery(cfg, 10_000)
    base, last = points[0], points[-1]
    return {
        "mode": "scale",
        "n": n,
        "orders_per_point": orders,
        "concurrency": CONCURRENCY,
        "fill_sagas_per_s": round(n / fill_s, 1) if fill_s else 0.0,
        "events_per_filled_saga": round(events / max(n, 1), 2),
        "points": points,
        "retention_half": retention,
        "recovery": recovery,
        "hot_path_at_n_vs_0": {
            k: round(last[k] / base[k], 2) if base[k] else None
            for k in ("place_per_s", "place_p99_ms", "get_p99_ms", "list_p99_ms", "list_failed_p99_ms")
        },
        "cores": os.cpu_count() or 0,
    }


def run(n: int, orders: int, workdir_root: str | None = None) -> dict[str, Any]:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-scale-", dir=workdir_root))
    try:
        return uvloop.run(_run(n, orders, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def table(figures: dict[str, Any]) -> str:
    cols = (
        "finished_sagas",
        "startup_ms",
        "place_per_s",
        "place_p99_ms",
        "get_p99_ms",
        "list_p99_ms",
        "list_failed_p99_ms",
        "bytes_per_saga",
        "wal_peak_bytes",
    )
    rows = figures["points"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    out = [
        f"scale: N={figures['n']} finished sagas ({figures['events_per_filled_saga']} events each, filled at "
        f"{figures['fill_sagas_per_s']} sagas/s), {figures['orders_per_point']} PlaceOrders at c={CONCURRENCY} "
        "per point",
        "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)),
    ]
    out += ["  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)) for r in rows]
    r = figures["retention_half"]
    out.append(
        f"retention of half: {r['removed']} sagas in {r['duration_s']} s ({r['batches']} batches), writer's longest "
        f"pause {r['longest_batch_ms']} ms (the pass took {r['pass_ms_per_batch']} ms per batch), "
        f"file {r['file_bytes_before']} -> "
        f"{r['file_bytes_after']} bytes ({r['vacuumed_pages']} pages vacuumed)"
    )
    out.append(f"hot path at N / at 0: {figures['hot_path_at_n_vs_0']}")
    rc = figures["recovery"]
    out.append(
        f"restart with {rc['unfinished']} unfinished sagas (and N/2 finished): serving after {rc['serving_ms']} ms, "
        f"all finished after {rc['all_finished_s']} s, at most {rc['peak_resumed_per_s']} resumed in any second "
        f"(limit {rc['resume_per_s_limit']}/s)"
    )
    return "\n".join(out)


__all__ = ["run", "table"]
