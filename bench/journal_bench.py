"""Journal micro-benchmark (`python -m bench journal`): durable state transitions per second through
coordinator.journal.Journal (aiosqlite, WAL, synchronous=FULL), with group commit and without it.

Each writer task journals sagas the way the engine does: the creation (not awaited), then per step a "started" intent
the engine waits on before its RPC and a "succeeded" outcome it does not wait on (it rides with the next intent), then
the terminal state change, awaited. A "transition" is one awaited write: 5 per saga (4 intents + the end), 12 records.

Without group commit = max_batch 1: every submission is its own transaction and fsync, whatever is pending.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from loguru import logger

from common.definitions.check import order_flow
from coordinator.journal import Journal, NewSaga, StateChange
from coordinator.saga.model import Action, SagaState
from coordinator.saga.record import Event, EventKind, SagaRecord

STEPS = order_flow().steps

AWAITED_PER_SAGA = 5
RECORDS_PER_SAGA = 12


@dataclass(frozen=True)
class JournalCase:
    name: str
    writers: int
    max_batch: int


def cases(writers: int) -> list[JournalCase]:
    return [
        JournalCase("group commit", writers, 4_096),
        JournalCase("no group commit", writers, 1),
        JournalCase("one writer", 1, 4_096),
    ]


async def _saga(journal: Journal, saga_id: str) -> None:
    now = int(time.time() * 1000)
    rec = SagaRecord(
        saga_id=saga_id,
        order_id=f"order-{saga_id}",
        user_id="bench-user",
        request=b"\x0a\x05order" * 4,
        payment_sealed=b"\x00" * 64,
        payload_hash="0" * 64,
        state=SagaState.RUNNING,
        created_at_epoch_ms=now,
        updated_at_epoch_ms=now,
        deadline_epoch_ms=now + 30_000,
    )
    seq = 1
    journal.submit(
        [NewSaga(rec), Event(saga_id, seq, now, EventKind.CREATED, SagaState.RUNNING, detail="ttl 30000 ms")]
    )
    for step in STEPS:
        seq += 1
        await journal.submit(
            [Event(saga_id, seq, now, EventKind.STARTED, SagaState.RUNNING, int(step), int(Action.FORWARD), 1)]
        )
        seq += 1
        journal.submit(
            [Event(saga_id, seq, now, EventKind.SUCCEEDED, SagaState.RUNNING, int(step), int(Action.FORWARD), 1, "OK")]
        )
    seq += 1
    await journal.submit(
        [
            Event(saga_id, seq, now, EventKind.STATE, SagaState.SUCCEEDED),
            StateChange(saga_id, SagaState.RUNNING, SagaState.SUCCEEDED, "", "", now),
        ]
    )


async def _run_case(case: JournalCase, sagas: int, workdir: Path) -> dict[str, Any]:
    path = workdir / f"journal-{case.max_batch}-{case.writers}.db"
    journal = Journal(str(path), max_batch=case.max_batch)
    await journal.open()
    try:
        next_index = 0

        async def writer() -> None:
            nonlocal next_index
            while next_index < sagas:
                i = next_index
                next_index += 1
                await _saga(journal, f"s{i:08d}")

        started = time.perf_counter()
        cpu_started = time.process_time()
        await asyncio.gather(*(writer() for _ in range(case.writers)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        await journal.close()
    stats = journal.stats
    transitions = sagas * AWAITED_PER_SAGA
    return {
        "case": case.name,
        "writers": case.writers,
        "max_batch": case.max_batch,
        "sagas": sagas,
        "transitions_per_s": round(transitions / elapsed, 1),
        "records_per_s": round(stats.records / elapsed, 1),
        "commits_per_s": round(stats.commits / elapsed, 1),
        "sagas_per_s": round(sagas / elapsed, 1),
        "records_per_commit": round(stats.records / max(stats.commits, 1), 2),
        "fsyncs_per_saga": round(stats.commits / sagas, 3),
        "cpu_us_per_transition": round(cpu * 1e6 / transitions, 1),
        "elapsed_s": round(elapsed, 3),
    }


def run(sagas: int, writers: int, workdir_root: str | None = None) -> dict[str, Any]:
    logger.remove()  # the journal's INFO lines (one migration per case) would break up the table
    logger.add(sys.stderr, level="WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-journal-", dir=workdir_root))
    try:
        rows = []
        for case in cases(writers):
            # The unbatched cases are slow by design (one fsync per write): fewer sagas keep them within seconds.
            n = sagas if case.max_batch > 1 and case.writers > 1 else max(1, sagas // 5)
            rows.append(uvloop.run(_run_case(case, n, workdir)))
        return {"mode": "journal", "synchronous": "FULL", "cases": rows, "cores": os.cpu_count() or 0}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
