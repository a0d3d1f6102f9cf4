"""A shard in a box: the real Shard and Engine over a temporary journal file, with the fake services
(coordinator.tools.services) and virtual time (coordinator.tools.clock), running one saga at a time to its end.

    async with Sandbox(definition) as box:
        ran = await box.run(message, {"process_payment": Outcome.REJECTED})

The definition is installed as an operator's commit would install it (DefinitionBook.install), so the shard refuses
what it would refuse in production, and every decision (which call, which key, which attempt, retry or compensate) is
the engine's own. Time moves only when every task waits on the clock and the journal has nothing in flight: it then
jumps to the next wake-up, so a saga that retries for minutes runs in milliseconds, and the same run makes the same
calls every time (the backoff's jitter comes from a seeded random.Random).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from google.protobuf.message import Message
from loguru import logger

from common.definitions.model import Definition
from coordinator.config import Services as ServiceAddresses
from coordinator.config import ShardConfig
from coordinator.engine.book import Offered
from coordinator.journal import Journal, Record
from coordinator.saga import inputs
from coordinator.saga.model import SagaState
from coordinator.saga.record import SagaRecord
from coordinator.security.sealing import open_sealer
from coordinator.shard import Shard
from coordinator.tools.clock import VirtualClock
from coordinator.tools.services import CallRecord, Effect, FakeServices, Outcome, Tombstone

ENDED = frozenset({SagaState.SUCCEEDED, SagaState.FAILED, SagaState.DEAD_LETTERED})
VIRTUAL_LIMIT_S = 30 * 86_400.0
"""A saga still unfinished after this much virtual time is stuck (the longest default policy, a compensation's
operation, is one day)."""
IDLE_LIMIT_S = 60.0
"""Wall time the journal may stay busy before the sandbox gives up (real fsyncs on a loaded machine)."""
_UNREACHABLE = "127.0.0.1:9"
"""The address every service a definition names gets: the shard checks there is one; nothing ever dials it."""


class SandboxError(Exception):
    """The saga could not be run (its input refused, a definition the shard refuses, a saga that never ends)."""


@dataclass(frozen=True, slots=True)
class Ran:
    """One saga's run: where it ended, and what the services saw of it."""

    saga_id: str
    key: str
    state: SagaState
    message: str
    """The saga's cause and dead-letter note, as a client is told (SagaRecord.message)."""
    calls: tuple[CallRecord, ...]
    """Every call the coordinator made for it, in order; at_ms counted from the saga's start."""
    effects: tuple[Effect, ...]
    tombstones: tuple[Tombstone, ...]
    elapsed_ms: int
    """Virtual time from the start to the end."""


class ObservedJournal(Journal):
    """A real journal that says when it has nothing in flight: time must not move while a commit or a read is under
    way, or a saga's deadline would pass during its own write-ahead record."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.open_work = 0
        """Commits and reads submitted and not yet finished."""

    def submit(self, records: Sequence[Record], ends_round: bool = True) -> asyncio.Future[None]:
        fut = super().submit(records, ends_round)
        if not fut.done():
            self.open_work += 1
            fut.add_done_callback(self._finished)
        return fut

    def _finished(self, _: object) -> None:
        self.open_work -= 1

    async def find_order(self, order_id: str) -> SagaRecord | None:
        self.open_work += 1
        try:
            return await super().find_order(order_id)
        finally:
            self.open_work -= 1

    async def get_by_order(self, order_id: str, with_events: bool = True, kept: bool = False) -> SagaRecord | None:
        self.open_work += 1
        try:
            return await super().get_by_order(order_id, with_events, kept)
        finally:
            self.open_work -= 1


class Sandbox:
    def __init__(self, flow: Definition, seed: int = 0) -> None:
        self.flow = flow
        self.seed = seed
        self.clock = VirtualClock()
        self.services = FakeServices(self.clock)
        self._dir: Path | None = None
        self._journal: ObservedJournal | None = None
        self._shard: Shard | None = None

    async def __aenter__(self) -> Sandbox:
        # The shard's own logging (a saga dead-lettered is a WARNING) is the tools' output, not noise on stderr.
        logger.disable("coordinator")
        self._dir = Path(tempfile.mkdtemp(prefix="saga-defs-"))
        endpoints = {s.endpoint for s in self.flow.steps}
        cfg = ShardConfig(
            shard_id="sandbox",
            # A fixed secret: the sealer derives saga ids from its hash key, so the same plan prints the same keys.
            journal_key="saga-defs sandbox",
            journal_path=str(self._dir / "sandbox.db"),
            services=ServiceAddresses.all_at(_UNREACHABLE, {name: _UNREACHABLE for name in endpoints}),
            seed=self.seed,
        )
        try:
            self._journal = ObservedJournal(cfg.journal_path)
            await self._journal.open()
            sealer = await open_sealer(cfg, self._journal)
            self._shard = Shard(cfg, self._journal, self.services, self.clock, sealer, random.Random(self.seed))
            await self._shard.start()
            document: dict[str, Any] = json.loads(json.dumps(self.flow.document))
            await self._shard.book.install([Offered(self.flow.hash, document)], {self.flow.name: self.flow.hash}, 1)
        except Exception as e:
            await self.__aexit__(type(e), e, e.__traceback__)
            if isinstance(e, SandboxError):
                raise
            raise SandboxError(f"the shard refuses the definition: {e}") from e
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._shard is not None:
                await self._shard.stop()
            if self._journal is not None:
                await self._journal.close()
        finally:
            self._shard = self._journal = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            logger.enable("coordinator")

    async def run(
        self, message: Message, failures: Mapping[str, Outcome], then: Mapping[str, Sequence[Outcome]] | None = None
    ) -> Ran:
        """Starts a saga of the definition with `message` as its input, its steps' forward calls meeting `failures`
        (every other call OK; `then`: what a step's later attempts meet, in order, the last repeating), and drives it
        to SUCCEEDED, FAILED or DEAD_LETTERED."""
        shard = self._shard
        assert shard is not None, "use the sandbox as an async context manager"
        unknown = sorted(set(failures) - {s.id for s in self.flow.steps})
        if unknown:
            raise SandboxError(f"no step {', '.join(unknown)} in {self.flow.name}")
        self.services.failures = dict(failures)
        self.services.then = {step: tuple(seq) for step, seq in (then or {}).items()}
        key = self.flow.key_of(message)
        began_ms, first_call = self.clock.elapsed_ms, len(self.services.calls)
        task = asyncio.create_task(shard.start_saga(self.flow.name, key, message, None, False))
        try:
            record = await self._drive(task, inputs.journal_key(self.flow.name, key))
        finally:
            if not task.done():
                task.cancel()
        saga_id = record.saga_id
        calls = tuple(_shifted(c, began_ms) for c in self.services.calls[first_call:] if c.saga_id == saga_id)
        return Ran(
            saga_id,
            key,
            record.state,
            record.message,
            calls,
            tuple(e for e in self.services.effects if e.saga_id == saga_id),
            tuple(t for t in self.services.tombstones if t.saga_id == saga_id),
            self.clock.elapsed_ms - began_ms,
        )

    async def _drive(self, task: asyncio.Task[Any], journal_key: str) -> SagaRecord:
        assert self._shard is not None
        give_up = self.clock.monotonic() + VIRTUAL_LIMIT_S
        while True:
            await self._quiesce()
            if task.done():
                if (error := task.exception()) is not None:
                    raise SandboxError(f"the shard refused the saga: {error}") from error
                record, _ = await self._shard.get(journal_key)
                if record.state in ENDED:
                    return record
            if self.clock.monotonic() > give_up:
                raise SandboxError(f"the saga did not end within {VIRTUAL_LIMIT_S:g} s of virtual time")
            if not self.clock.wake_next():
                await asyncio.sleep(0.001)  # nothing sleeps: real I/O is under way

    async def _quiesce(self) -> None:
        """Returns once the journal has had nothing in flight for a few rounds of the loop."""
        assert self._journal is not None
        idle_rounds = 0
        give_up = time.monotonic() + IDLE_LIMIT_S
        while time.monotonic() < give_up:
            for _ in range(5):
                await asyncio.sleep(0)
            if self._journal.open_work == 0:
                idle_rounds += 1
                if idle_rounds >= 3:
                    return
            else:
                idle_rounds = 0
                await asyncio.sleep(0.0005)
        raise SandboxError(f"the journal stayed busy for {IDLE_LIMIT_S:g} s")


def _shifted(call: CallRecord, began_ms: int) -> CallRecord:
    return CallRecord(
        call.at_ms - began_ms,
        call.saga_id,
        call.step_id,
        call.action,
        call.method,
        call.request,
        call.key,
        call.attempt,
        call.result,
        call.asks,
    )
