"""A shard's saga registry: accepts PlaceOrder (idempotently, with load shedding), runs each saga as its own task,
resumes unfinished sagas at start, answers queries, and performs the operators' dead-letter actions.

One asyncio loop, no locks: every check-then-act on the registry happens without an await in between.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message
from loguru import logger

from common import tracing
from common.definitions.model import Definition, Values
from common.loops import run_every
from coordinator.clock import Clock
from coordinator.config import ShardConfig
from coordinator.engine import preview, transitions
from coordinator.engine.book import DefinitionBook
from coordinator.engine.caller import Caller
from coordinator.engine.engine import Engine, SagaRun
from coordinator.engine.poller import Poller
from coordinator.journal import DeadLetterClose, DeadLetterRow, Journal, NewSaga, Record
from coordinator.logs import saga_context
from coordinator.metrics import ShardMetrics
from coordinator.operations.retention import Upkeep
from coordinator.ring.ownership import Ownership
from coordinator.ring.peers import PeerRings
from coordinator.saga import inputs
from coordinator.saga.errors import (
    InvalidRequest,
    JournalUnavailable,
    Overloaded,
    PayloadMismatch,
    SagaNotFound,
    ShuttingDown,
    WrongState,
)
from coordinator.saga.model import SagaState
from coordinator.saga.record import Event, EventKind, SagaRecord
from coordinator.security.sealing import Sealer
from protos.saga.v1 import saga_pb2


@dataclass(frozen=True, slots=True)
class Placed:
    """PlaceOrder's answer: the saga as durably known, and whether the caller asked not to wait."""

    saga: SagaRecord
    pending: bool


class Shard:
    def __init__(
        self,
        cfg: ShardConfig,
        journal: Journal,
        caller: Caller,
        clock: Clock,
        sealer: Sealer,
        rng: random.Random | None = None,
        metrics: ShardMetrics | None = None,
        peers: PeerRings | None = None,
    ) -> None:
        """peers: how the shard asks other shards for their ring history (a restored journal's catch-up, a first
        ring's check); None: it asks none (a restored journal then cannot start)."""
        self.metrics = metrics or ShardMetrics()
        self.cfg = cfg
        self.journal = journal
        self.clock = clock
        self._caller = caller
        self._sealer = sealer
        self._engine = Engine(cfg, journal, caller, clock, rng or random.Random(cfg.seed), self.metrics)
        self.book = DefinitionBook(cfg, journal, clock, self._engine.policies)
        self._live: dict[str, SagaRun] = {}
        self._creating: dict[str, asyncio.Future[None]] = {}
        self._claimed: set[str] = set()  # dead letters an admin call is acting on right now
        self._stopping = False
        self._redrive: asyncio.Task[None] | None = None
        self._resumer: asyncio.Task[None] | None = None
        self.upkeep = Upkeep(cfg, journal, clock, self.metrics)
        self.ownership = Ownership(cfg.shard_id, journal, self.metrics, peers)
        self._catching_up: asyncio.Task[None] | None = None
        self._poller = Poller(clock, self._engine.poll, self._start_task, cfg.limits.max_concurrent_polls)

    # The two below run on the metrics endpoint's thread while the loop changes what they read. They copy the
    # collections first, each in one C call under the GIL (list() of a dict view or a list): a Python loop over the
    # live dict met it mid-change under load, and the scrape answered 500 (RuntimeError).

    def _live_ages(self) -> list[tuple[str, float]]:
        now = self.clock.now_epoch_ms()
        return [
            (run.record.state.name.lower(), max(0, now - run.record.created_at_epoch_ms) / 1000)
            for run in list(self._live.values())
        ]

    def _waiting_ages(self) -> list[tuple[str, str, float]]:
        now = self.clock.now_epoch_ms()
        out = []
        for run in self._poller.waiting():
            waiting = run.record.waiting_on()
            if waiting is not None:
                step, action = waiting
                accepted = run.record.progress(step).accepted_at_epoch_ms
                out.append((run.flow.step(step).label, action.label, max(0, now - accepted) / 1000))
        return out

    @property
    def in_flight(self) -> int:
        return len(self._live)

    @property
    def waiting(self) -> int:
        """Sagas waiting on a long-running operation (no task each; Poller)."""
        return len(self._poller)

    # ---- life cycle ---------------------------------------------------------------------------------------------

    async def start(self) -> int:
        """Resumes every unfinished saga in the journal; returns how many."""
        await self.ownership.load()
        await self.book.load()
        if self.ownership.catching_up:
            self._catching_up = asyncio.create_task(self.ownership.catch_up(), name="ring-catch-up")
        self.metrics.dead_letters_open.set(await self.journal.open_dead_letters())
        self.metrics.watch_live(self._live_ages, self.journal.path + "-wal")
        self.metrics.watch_waiting(self._waiting_ages)
        recs = await self.journal.unfinished()
        # Every unfinished saga is registered now (a retried PlaceOrder joins it, GetSaga shows it), but their tasks
        # start at most limits.resume_per_s a second: a restart with thousands of them must not call the services all
        # at once. A tenth of a second's worth starts here, the rest from a background task at the same pace.
        runs = [run for rec in recs if (run := self._resume(rec)) is not None]
        # Sagas waiting on an operation get no task: they are asked about at their journaled due time, those that
        # fell due while the shard was down spread at the same pace (limits.resume_per_s).
        now = self.clock.now_epoch_ms()
        overdue = 0
        for run in runs:
            waiting = run.record.waiting_on()
            if waiting is None:
                continue
            due = run.record.progress(waiting[0]).next_poll_at_epoch_ms
            if due <= now:
                due = now + overdue * 1000 // self.cfg.limits.resume_per_s
                overdue += 1
            self._poller.add(run, due)
            run.done.set_result(None)
        runs = [run for run in runs if run.record.waiting_on() is None]
        self._poller.start()
        step = max(1, self.cfg.limits.resume_per_s // 10)
        for run in runs[:step]:
            self._start_task(run)
        if len(runs) > step:
            self._resumer = asyncio.create_task(self._resume_rest(runs[step:], step), name="resume")
        if recs:
            logger.info("resuming {} unfinished sagas, {} a second at most", len(recs), self.cfg.limits.resume_per_s)
        if self.cfg.dead_letter_redrive_s > 0:
            self._redrive = asyncio.create_task(self._redrive_loop(), name="dead-letter-redrive")
        await self.upkeep.start()
        return len(recs)

    async def stop(self) -> None:
        """Stops driving sagas (they resume at the next start) and lets queued journal writes commit."""
        self._stopping = True
        if self._catching_up:
            self._catching_up.cancel()
        if self._redrive:
            self._redrive.cancel()
        if self._resumer:
            self._resumer.cancel()
        await self._poller.stop()
        await self.upkeep.stop()
        tasks = [r.task for r in self._live.values() if r.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for run in self._live.values():
            if not run.done.done():
                run.done.set_exception(ShuttingDown("shard is shutting down; retry PlaceOrder to get the outcome"))
                run.done.exception()

    # ---- PlaceOrder -----------------------------------------------------------------------------------------------

    async def place_order(
        self, req: saga_pb2.PlaceOrderRequest, ring_epoch: int | None = None, trace_context: str = ""
    ) -> Placed:
        """A saga of type "order" (StartSaga with the order as its input and its order_id as the key)."""
        ttl_ms = req.ttl_ms if req.HasField("ttl_ms") else None
        return await self.start_saga(
            inputs.ORDER_TYPE, req.order_id, req, ttl_ms, req.no_wait, ring_epoch, trace_context
        )

    async def start_saga(
        self,
        saga_type: str,
        key: str,
        message: Message,
        ttl_ms: int | None,
        no_wait: bool,
        ring_epoch: int | None = None,
        trace_context: str = "",
    ) -> Placed:
        """Starts (or joins: idempotent per type and key) a saga of `saga_type` on the version its alias names now.
        ring_epoch: the ring the router routed the call by (None: not routed, not fenced). trace_context: the trace a
        new saga's spans join (common.tracing.carrier), kept in its journal row."""
        flow = self.book.for_new(saga_type)
        want = flow.input_type.DESCRIPTOR.full_name
        if message.DESCRIPTOR.full_name != want:
            raise InvalidRequest("input", f"saga type {saga_type} takes a {want}, not a {message.DESCRIPTOR.full_name}")
        inputs.validate(message, key, self.cfg.limits)
        if flow.key_of(message) != key:
            raise InvalidRequest("key", f"must equal the input's {flow.key_field} ({flow.key_of(message)!r})")
        if ttl_ms is not None and ttl_ms < 1:
            raise InvalidRequest("ttl_ms", "must be at least 1 when set")
        jkey = inputs.journal_key(flow.name, key)
        payload_hash = self._sealer.payload_hash(inputs.canonical(message))
        while True:
            if self._stopping:
                raise ShuttingDown("shard is shutting down")
            run = self._live.get(jkey)
            if run is not None:
                self._check_same(run.record, payload_hash)
                return await self._answer(run, no_wait)
            creating = self._creating.get(jkey)
            if creating is None:
                break
            # A concurrent start of the same saga is creating it: wait, then join it.
            await asyncio.shield(creating)
        if self.in_flight - self.waiting + len(self._creating) >= self.cfg.limits.max_in_flight:
            self.metrics.shed.inc()
            raise Overloaded(
                f"shard {self.cfg.shard_id} has {self.cfg.limits.max_in_flight} sagas in flight",
                self.cfg.limits.shed_retry_after_ms,
            )
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._creating[jkey] = gate
        try:
            # A saga of this key, or what retention kept of it: the original answer, never a second saga.
            existing = await self.journal.find_order(jkey)
            if existing is not None:
                self._check_same(existing, payload_hash)
                return Placed(existing, pending=False)
            # The fence and the registration of the new saga with no await in between: a router that installs a newer
            # ring here and then asks for this key sees either the saga or a refusal of this call, never neither.
            self.ownership.check(ring_epoch, key, creating=True)
            run = self._create(flow, jkey, key, message, ttl_ms, payload_hash, trace_context)
        finally:
            del self._creating[jkey]
            gate.set_result(None)
        return await self._answer(run, no_wait)

    def _create(
        self,
        flow: Definition,
        jkey: str,
        key: str,
        message: Message,
        ttl_ms: int | None,
        payload_hash: str,
        trace_context: str,
    ) -> SagaRun:
        now = self.clock.now_epoch_ms()
        ttl_default = flow.ttl_default_ms or self.cfg.default_ttl_ms
        ttl_ms = min(ttl_ms if ttl_ms is not None else ttl_default, flow.ttl_max_ms or self.cfg.max_ttl_ms)
        user_id, clear, secret = inputs.parts(message)
        # Derived, not random (coordinator.security.sealing.Sealer.saga_id): a saga re-created for the same request
        # after its record was lost sends the same idempotency keys. Sagas created before keep the random ids they have.
        saga_id = self._sealer.saga_id(jkey, payload_hash)
        rec = SagaRecord(
            saga_id=saga_id,
            order_id=jkey,
            user_id=user_id,
            request=clear,
            payment_sealed=self._sealer.seal(saga_id, secret),
            payload_hash=payload_hash,
            state=SagaState.RUNNING,
            created_at_epoch_ms=now,
            updated_at_epoch_ms=now,
            deadline_epoch_ms=now + ttl_ms,
            trace_context=trace_context,
            definition_hash=flow.hash,
        )
        created = Event(rec.saga_id, 1, now, EventKind.CREATED, SagaState.RUNNING, detail=f"ttl {ttl_ms} ms")
        rec.next_seq = 2
        # Not awaited here: the saga task's first write-ahead record joins the same commit (the journal's writer lets
        # ready tasks submit before it takes a batch). The engine sends nothing, and the caller is answered nothing,
        # before this future resolves: nothing goes out or is acknowledged before the saga is durable.
        creation = self.journal.submit([NewSaga(rec.copy()), created], ends_round=False)
        # The input in memory, not the sealed blob opened again: the values are the same either way.
        run = self._launch(rec, flow, created=creation, values=Values(saga_id, key, message, {}))
        self.metrics.started.inc()
        creation.add_done_callback(lambda f: None if f.cancelled() or f.exception() else run.view.apply(created))
        return run

    def _resume(self, rec: SagaRecord, start: bool = False) -> SagaRun | None:
        """A journaled saga, on the definition it started on; None (logged) if this shard does not hold that one."""
        try:
            flow = self.book.of(rec.definition_hash)
        except KeyError:
            logger.error(
                "saga {} of {} runs definition {}, which this shard does not hold: it waits until the definition is"
                " installed (saga-router defs commit)",
                rec.saga_id,
                rec.order_id,
                rec.definition_hash,
            )
            return None
        return self._launch(rec, flow, created=None, start=start)

    async def _resume_rest(self, runs: list[SagaRun], step: int) -> None:
        for i in range(0, len(runs), step):
            await self.clock.sleep(step / self.cfg.limits.resume_per_s)
            for run in runs[i : i + step]:
                if self._live.get(run.record.order_id) is run and run.task is None:
                    self._start_task(run)

    def _launch(
        self,
        rec: SagaRecord,
        flow: Definition,
        created: asyncio.Future[None] | None,
        start: bool = True,
        values: Values | None = None,
    ) -> SagaRun:
        if values is None:
            message = inputs.restore(flow.input_type, rec.request, self._sealer.open(rec.saga_id, rec.payment_sealed))
            outputs = {
                n: flow.step(n).call.response_type.FromString(p.output) for n, p in rec.steps.items() if p.output
            }
            values = Values(rec.saga_id, inputs.routing_key(rec.order_id), message, outputs)
        remaining_s = (rec.deadline_epoch_ms - self.clock.now_epoch_ms()) / 1000
        loop = asyncio.get_running_loop()
        run = SagaRun(
            record=rec,
            flow=flow,
            values=values,
            deadline_mono=self.clock.monotonic() + remaining_s,
            view=rec.copy(),
            done=loop.create_future(),
            created=created,
        )
        if tracing.enabled():
            run.resumed = created is None
            # The ids on every span (what an operator searches by); the rest of what is the same for the whole saga on
            # its first span and its state spans only: each attribute costs each span about 10 us of this process's
            # CPU, set and encoded (saga.shard is also the spans' resource attribute service.instance.id).
            fields: dict[str, object] = {"saga.id": rec.saga_id, "saga.order_id": rec.order_id}
            if run.resumed:
                fields["saga.resumed"] = True
            summary = {"saga.type": flow.name, "saga.shard": self.cfg.shard_id}
            # A saga loaded past its failure (compensating, dead-lettered, failed): exported whatever the sampler says.
            failing = "" if rec.state in (SagaState.RUNNING, SagaState.SUCCEEDED) else rec.state.name
            run.trace = tracing.saga(rec.trace_context, fields, failing, summary)
            run.trace.closes_caller = created is not None  # until it is answered before its end (_answer, _supervise)
            run.trace_id = run.trace.trace_id
        self._live[rec.order_id] = run
        if start:
            self._start_task(run)
        return run

    def _start_task(self, run: SagaRun) -> None:
        run.task = asyncio.create_task(self._supervise(run), name=f"saga:{run.record.order_id}")
        # A saga's task writes to the journal; one waiting on an operation, or not yet resumed after a restart, has no
        # task and writes nothing: the commit window counts tasks, not sagas.
        self.journal.window.writer_started()
        run.task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        self.journal.window.writer_stopped()  # an open commit window stops waiting for this saga

    async def _supervise(self, run: SagaRun) -> None:
        """Drives the saga; a journal failure re-drives it from what the journal holds, after a pause."""
        pause_s = 0.05
        try:
            while True:
                try:
                    if run.write_error is not None:
                        raise run.write_error  # from a poll: re-read the saga from the journal first
                    await self._engine.drive(run)
                    break
                except Exception as e:
                    # A journal failure (disk full, I/O error), or a bug: either way the journal holds the truth, so
                    # the saga is re-driven from it after a pause rather than left half-done in memory.
                    with saga_context(run.record.saga_id, run.record.order_id):
                        if isinstance(e, JournalUnavailable):
                            logger.error("journal write failed; re-driving from the journal in {:.2f}s: {}", pause_s, e)
                        else:
                            logger.exception("saga driver failed; re-driving from the journal in {:.2f}s", pause_s)
                    await self._engine.rest(pause_s)  # writes nothing meanwhile: the commit window does not wait
                    pause_s = min(pause_s * 2, 5.0)
                    fresh = await self.journal.get_by_order(run.record.order_id)
                    if fresh is None:
                        # The saga's creation never reached the disk: it was never acknowledged, so it never existed.
                        if self._live.get(run.record.order_id) is run:
                            del self._live[run.record.order_id]
                        _fail(run.done, e if isinstance(e, JournalUnavailable) else JournalUnavailable(str(e)))
                        return
                    run.record, run.view, run.write_error = fresh, fresh.copy(), None
        finally:
            current = not (run.task is not None and run.task.cancelled()) and self._live.get(run.record.order_id) is run
            if current:
                if run.record.state is not SagaState.RUNNING and run.record.state is not SagaState.COMPENSATING:
                    del self._live[run.record.order_id]
                elif (waiting := run.record.waiting_on()) is not None and not self._stopping:
                    # A service finishes a call of it later: the poller asks at the journaled time. PlaceOrder is
                    # answered now (PENDING while running, FAILED once compensating), not after hours.
                    self._poller.add(run, run.record.steps[waiting[0]].next_poll_at_epoch_ms)
            if not run.done.done() and not self._stopping:
                if run.trace is not None:
                    run.trace.closes_caller = False  # answered before its end (it waits on a service)
                run.done.set_result(None)

    async def _answer(self, run: SagaRun, no_wait: bool) -> Placed:
        if run.created is not None:
            # Creator and joiners alike are answered only once the saga's creation is durable.
            await asyncio.shield(run.created)
        if no_wait:
            if run.trace is not None:
                run.trace.closes_caller = False  # the caller's span ends now, not with the saga
            return Placed(run.view.copy(), pending=True)
        try:
            await asyncio.shield(run.done)
        except asyncio.CancelledError:
            if run.trace is not None:
                run.trace.closes_caller = False  # the caller gave up (its deadline): its span ended before the saga
            raise
        return Placed(run.view.copy(), pending=False)

    @staticmethod
    def _check_same(rec: SagaRecord, payload_hash: str) -> None:
        if rec.payload_hash != payload_hash:
            saga_type, key = inputs.split_key(rec.order_id)
            if saga_type == inputs.ORDER_TYPE:
                raise PayloadMismatch(f"order {key} already exists with a different payload")
            raise PayloadMismatch(f"saga {saga_type} {key} already exists with a different input")

    # ---- queries ----------------------------------------------------------------------------------------------------

    def flow_of(self, rec: SagaRecord) -> Definition | None:
        """The definition a saga runs, None if this shard does not hold it."""
        try:
            return self.book.of(rec.definition_hash)
        except KeyError:
            return None

    def flow_of_hash(self, definition_hash: str) -> Definition | None:
        try:
            return self.book.of(definition_hash)
        except KeyError:
            return None

    async def get(
        self, order_id: str, with_events: bool = False, ring_epoch: int | None = None
    ) -> tuple[SagaRecord, list[Event]]:
        """ring_epoch: the ring the router routed the call by; a NOT_FOUND is then fenced
        (coordinator.ring.ownership)."""
        key = inputs.routing_key(order_id)
        while True:
            run = self._live.get(order_id)
            if run is not None and run.created is not None and not run.created.done():
                # A saga being created is held already: a router asking whether this shard has the order must not hear
                # NOT_FOUND and start it elsewhere. Its answer waits for the creation's commit.
                await asyncio.gather(asyncio.shield(run.created), return_exceptions=True)
                continue
            if run is not None and run.view.next_seq > 1:
                rec = run.view.copy()
                break
            # The router asks earlier ring owners GetSaga to learn whether they hold an order: an order whose details
            # retention removed still exists (a minimal view, without steps or events).
            # Whether the fence would let this call hear NOT_FOUND, taken before the read: a saga started here during
            # the read (its start is on the event loop, the read on a reader thread) passed the fence under the ring
            # the shard held then. If the shard learnt the call's ring during the read, that saga may be this order,
            # created by a router still on the older ring: look again rather than answer NOT_FOUND (also if a saga of
            # this order was registered here meanwhile, whatever the ring).
            settled = self.ownership.allows(ring_epoch, key)
            found = await self.journal.get_by_order(order_id, kept=True)
            if found is not None:
                rec = found
                break
            if self._live.get(order_id) is not run or (not settled and self.ownership.allows(ring_epoch, key)):
                continue
            self.ownership.check(ring_epoch, key, creating=False)
            raise SagaNotFound(f"no saga for order {order_id}")
        events = await self.journal.events(rec.saga_id) if with_events else []
        if with_events and rec.retained_only:
            # What retention kept of a removed saga (DedupRecord.as_saga: no request, no events): the operators'
            # actions on it stay readable for the audit period.
            events = await self.journal.operator_events(order_id)
        return rec, events

    async def list_sagas(self, state: SagaState | None, limit: int, before: tuple[int, str] | None) -> list[SagaRecord]:
        return await self.journal.list_sagas(state, limit, before)

    async def watch(
        self, order_id: str, ring_epoch: int | None = None
    ) -> AsyncIterator[tuple[SagaRecord, Event | None]]:
        """The current snapshot, then one item per committed event, until the saga is terminal or parked."""
        rec, _ = await self.get(order_id, ring_epoch=ring_epoch)
        run = self._live.get(order_id)
        if run is None or rec.state not in (SagaState.RUNNING, SagaState.COMPENSATING):
            yield rec, None
            return
        if len(run.listeners) >= self.cfg.limits.watchers_per_saga:
            raise Overloaded(f"too many watchers on order {order_id}", self.cfg.limits.shed_retry_after_ms)
        queue: asyncio.Queue[tuple[SagaRecord, Event] | None] = asyncio.Queue(self.cfg.limits.watch_queue)

        def listener(ev: Event, view: SagaRecord) -> None:
            try:
                queue.put_nowait((view.copy(), ev))
                if view.state not in (SagaState.RUNNING, SagaState.COMPENSATING):
                    queue.put_nowait(None)
            except asyncio.QueueFull:
                # A watcher that cannot keep up is ended rather than buffered without bound.
                run.listeners.remove(listener) if listener in run.listeners else None
                queue.put_nowait(None) if not queue.full() else None

        run.listeners.append(listener)
        try:
            yield run.view.copy(), None
            while (item := await queue.get()) is not None:
                yield item
        finally:
            if listener in run.listeners:
                run.listeners.remove(listener)

    # ---- dead letters -----------------------------------------------------------------------------------------------

    async def dead_letters(self, step: int, include_closed: bool, limit: int, after_id: int) -> list[DeadLetterRow]:
        return await self.journal.dead_letters(step, include_closed, limit, after_id)

    async def retry_dead_letter(
        self, order_id: str, who: str, reason: str, ring_epoch: int | None = None
    ) -> SagaRecord:
        rec = await self._claim_parked(order_id, ring_epoch)
        try:
            return await self._retry_claimed(rec, who, reason)
        finally:
            self._claimed.discard(order_id)

    async def _retry_claimed(self, saga: SagaRecord, who: str, reason: str) -> SagaRecord:
        flow = self.book.of(saga.definition_hash)
        # Parked past its pivot, it goes on forward; else its compensation resumes where it stopped.
        new = SagaState.RUNNING if preview.resumes_forward(saga, flow) else SagaState.COMPENSATING
        await self._operator_move(saga, new, f"retried by {who}: {reason or 'no reason given'}")
        self._launch(saga, flow, created=None)
        logger.info("dead letter of order {} retried by {}", saga.order_id, who)
        return saga

    async def retry_all_dead_letters(self, step: int, who: str, reason: str) -> list[str]:
        rows = await self.journal.dead_letters(step, False, self.cfg.limits.bulk_retry_max, 0)
        retried = []
        for row in rows:
            try:
                await self.retry_dead_letter(row.order_id, who, reason)
                retried.append(row.order_id)
            except WrongState:
                continue  # retried concurrently by someone else
        return retried

    async def resolve_dead_letter(
        self, order_id: str, who: str, reason: str, ring_epoch: int | None = None
    ) -> SagaRecord:
        rec = await self._claim_parked(order_id, ring_epoch)
        try:
            return await self._resolve_claimed(rec, who, reason)
        finally:
            self._claimed.discard(order_id)

    async def _resolve_claimed(self, saga: SagaRecord, who: str, reason: str) -> SagaRecord:
        await self._operator_move(saga, SagaState.RESOLVED, f"resolved by {who}: {reason}")
        logger.info("dead letter of order {} resolved by {}", saga.order_id, who)
        return saga

    async def _operator_move(self, saga: SagaRecord, new: SagaState, note: str) -> None:
        """An operator's retry or resolve: the state event names what they did, and their dead letter closes with it
        in the same commit. Such a saga has no task driving it, so its record is folded here once committed."""
        now = self.clock.now_epoch_ms()
        kind = EventKind.ADMIN_RESOLVE if new is SagaState.RESOLVED else EventKind.ADMIN_RETRY

        async def write(records: Sequence[Record]) -> None:
            await self.journal.write(records)
            for record in records:
                if isinstance(record, Event):
                    saga.apply(record)

        close = DeadLetterClose(saga.saga_id, note, now)
        await transitions.move(saga, new, now, write, self.metrics, kind=kind, note=note, extra=[close])

    async def _claim_parked(self, order_id: str, ring_epoch: int | None = None) -> SagaRecord:
        """Reads a dead-lettered saga and claims it, so two concurrent admin calls cannot both act on it."""
        rec = await self._read_parked(order_id, ring_epoch)
        # _read_parked checked after its read and returned with no await since: this is the check-then-act.
        self._claimed.add(order_id)
        return rec

    async def _read_parked(self, order_id: str, ring_epoch: int | None = None) -> SagaRecord:
        """Reads a dead-lettered saga an admin action may act on now, or raises what that action would answer."""
        rec = await self.journal.get_by_order(order_id, kept=True)  # a removed saga is finished: WrongState
        if rec is None:
            self.ownership.check(ring_epoch, inputs.routing_key(order_id), creating=False)
            raise SagaNotFound(f"no saga for order {order_id}")
        if order_id in self._live or order_id in self._claimed:
            raise WrongState(f"saga of order {order_id} is being acted on already")
        if rec.state is not SagaState.DEAD_LETTERED:
            raise WrongState(f"saga of order {order_id} is {rec.state.name}, not DEAD_LETTERED")
        return rec

    # Dry runs: what the actions above would do, after the same checks with the same errors; nothing is written and
    # nothing is claimed (coordinator.engine.preview).

    async def preview_retry(self, order_id: str, ring_epoch: int | None = None) -> preview.SagaPlan:
        """What retry_dead_letter(order_id) would do."""
        rec = await self._read_parked(order_id, ring_epoch)
        return preview.plan_retry(rec, self.book.of(rec.definition_hash), self._engine.policies)

    async def preview_retry_all(self, step: int) -> list[preview.SagaPlan]:
        """What retry_all_dead_letters(step) would do: the same dead letters, the same skips."""
        rows = await self.journal.dead_letters(step, False, self.cfg.limits.bulk_retry_max, 0)
        plans = []
        for row in rows:
            try:
                plans.append(await self.preview_retry(row.order_id))
            except WrongState:
                continue  # being acted on: the real call skips it too
        return plans

    async def preview_resolve(
        self, order_id: str, ring_epoch: int | None = None
    ) -> tuple[SagaRecord, preview.SagaPlan]:
        """The saga as it stands and what resolve_dead_letter(order_id) would do."""
        rec = await self._read_parked(order_id, ring_epoch)
        return rec, preview.plan_resolve(rec)

    async def _redrive_loop(self) -> None:
        await run_every(
            self.cfg.dead_letter_redrive_s,
            self._redrive_once,
            name="auto re-drive",
            sleep=self.clock.sleep,
            wait_first=True,
        )

    async def _redrive_once(self) -> None:
        n = await self.retry_all_dead_letters(0, "auto-redrive", "periodic re-drive")
        if n:
            logger.info("auto re-drive resumed {} dead letters", len(n))


def _fail(fut: asyncio.Future[None], e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)
        fut.exception()
