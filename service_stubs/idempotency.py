"""The call protocol every shop service follows: idempotency keys, tombstones, faults, durability, statistics.

A service (order.py, inventory.py, ...) only says how to validate a request, how to apply it and how to undo it; this
base class runs the rest in the same order for all of them:

    validate -> fault (latency, then hang or error) -> per-key lock -> replay a recorded answer, or
    [forward] business wait (tok_slow) -> tombstone check + apply in memory -> durable commit -> answer
    [compensation] undo the forward key's effect, or tombstone it -> durable commit -> answer
    -> apply_then_fail fault turns the answer into an error after the fact

The check-then-apply sections contain no await: asyncio runs one coroutine at a time between awaits, so a forward call
and a compensation for the same forward key can never interleave inside them. A compensation never takes the forward
key's lock, so it does not wait behind a forward call that hangs.

Long-running operations (operations.py): where the request's rules ask for one, "apply" becomes "accept": the record is
committed in progress and the call answered `operation{done: false}`; `_complete()` applies it later, once. A reused key
gets the in-progress answer until then. A compensation cancels its forward call's operation in progress (it never
applies) and, for an applied forward call with an undo rule, is itself accepted and settled later.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from loguru import logger

from protos.shop.v1 import common_pb2
from service_stubs.errors import InvalidArgument, StoreFailed, StubError, abort
from service_stubs.faults import NO_FAULT, Fault, FaultAction, FaultInjector, hang_forever
from service_stubs.keys import TOMBSTONED, Answer, KeyRecord, KeyTable, request_digest
from service_stubs.lro_rules import NO_RULES, Lro, LroRules
from service_stubs.operations import (
    OperationSettings,
    OperationTimers,
    done_answer,
    in_progress_answer,
    operation_state,
)
from service_stubs.stats import CANCELLED, HANG, CallStats, OperationEvent
from service_stubs.store import Loaded, Store
from service_stubs.validation import read_idempotency_key, require_compensation, require_key

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


def _no_effect() -> Mapping[str, int]:
    return {}


@dataclass(frozen=True, slots=True)
class Decision:
    """What a forward call decided; returned by `apply()` after it has changed the service's memory."""

    answer: Answer
    effect: Mapping[str, int] = field(default_factory=_no_effect)
    """What was applied (see KeyRecord.effect); empty for a rejection."""
    stock: Sequence[tuple[str, int]] = ()
    """Stock levels changed by the apply, to commit with the key record."""
    details: bytes | None = None
    """What a read of the effect reports (KeyRecord.details); None for a rejection, or a service with no such read."""


class Call:
    """Per-call state the protocol needs after the fact."""

    __slots__ = ("hung", "method", "stat")

    def __init__(self, method: str, stat: str) -> None:
        self.method = method
        """The method's short name, for fault rules."""
        self.stat = stat
        """Its name in the statistics (GetOperation, which every service has, by its full path)."""
        self.hung = False


class ShopService(abc.ABC, Generic[Req]):
    """One shop service: its key table, its store, and the protocol above. Subclasses implement the generated servicer's
    two RPCs with `forward()` and `compensate()`; they do not inherit the generated servicer class, which mypy sees as
    Any, and registration (add_*Servicer_to_server) only needs the methods."""

    name: ClassVar[str]
    """Short name: "payment"; also the SQLite file name and KeyRecord.service in ledgers."""
    grpc_service: ClassVar[str]
    """Full service name for reflection, health and fault rules: "shop.v1.PaymentService"."""
    forward_method: ClassVar[str]
    compensation_method: ClassVar[str]
    forward_request: ClassVar[type[Message]]
    """The forward method's request message, to apply an operation accepted earlier."""
    forward_response: ClassVar[type[Message]]
    other_responses: ClassVar[Mapping[str, type[Message]]] = {}
    """Response messages of the service's other recorded methods (holds.py's final step), by method name."""

    def __init__(
        self,
        store: Store,
        loaded: Loaded,
        faults: FaultInjector,
        stats: CallStats,
        operations: OperationSettings | None = None,
    ) -> None:
        self.store = store
        self.keys = KeyTable(self.name)
        self._faults = faults
        self._stats = stats
        self._operations = operations or OperationSettings()
        self._clock = self._operations.clock
        self.in_progress: dict[str, KeyRecord] = {}
        """Operations accepted and not finished, by key."""
        self._timers = OperationTimers(self._finish_by_timer)
        for record in loaded.records:
            self.keys.put(record)
            if record.in_progress:
                self.in_progress[record.key] = record
        self.restore(loaded)

    # ---- what a service provides ----

    @abc.abstractmethod
    def validate(self, request: Req) -> None:
        """Raises InvalidArgument naming the first bad field."""

    @abc.abstractmethod
    def apply(self, key: str, request: Req) -> Decision:
        """Decides the business outcome and applies it to memory. Must not await (see module docstring)."""

    def undo(self, record: KeyRecord) -> Sequence[tuple[str, int]]:
        """Reverts in memory what the applied `record` did; returns changed stock levels. Must not await."""
        return ()

    def undo_refusal(self, forward: KeyRecord) -> Answer | None:
        """A rejection for a compensation of the applied `forward` call if it may no longer be undone, else None."""
        return None

    def complete_other(self, record: KeyRecord) -> list[KeyRecord]:
        """Decides and applies in memory an operation of another method (other_responses) that has come due: sets the
        record's answer and applied count; returns the other records to commit. Must not await."""
        raise AssertionError(f"{self.name} has no long-running {record.method}")

    def restore(self, loaded: Loaded) -> None:
        """Rebuilds derived in-memory state (e.g. open orders) from what the store loaded."""

    async def before_apply(self, request: Req, call: Call) -> None:
        """A business wait before the apply (payment's test tokens); the tombstone check comes after it."""

    def lro_rules(self, request: Req) -> LroRules:
        """The long-running rules the request carries (lro_rules.py); InvalidArgument for a rule out of bounds."""
        return NO_RULES

    # ---- operations: timers live from start_operations() (the store attached) to stop_operations() ----

    def start_operations(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arms a timer for every operation in progress, those accepted before a restart included."""
        self._timers.start(loop)
        for record in self.in_progress.values():
            self._arm(record)

    def stop_operations(self) -> None:
        self._timers.stop()

    async def GetOperation(
        self, request: common_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.GetOperationResponse:
        async def body(call: Call) -> Answer:
            key = request.idempotency_key
            require_key(key, "idempotency_key")
            self._check_store()
            record = self.keys.get(key)
            fault = await self._inject("" if record is None else record.order_id, call)
            record = self.keys.get(key)
            if record is not None:
                self._finish_if_due(record)
            response_type = None if record is None else self._response_type(record.method)
            reply = operation_state(key, record, self.keys.busy(key), response_type, self._clock())
            await self.store.barrier()  # what the reply says is durable before it is sent
            return self._after_answer(fault, Answer.success(reply))

        stat = f"/{self.grpc_service}/GetOperation"
        return common_pb2.GetOperationResponse.FromString(await self._serve("GetOperation", context, body, stat))

    # ---- the protocol ----

    async def forward(
        self, request: Req, order_id: str, context: grpc.aio.ServicerContext, response: type[Resp]
    ) -> Resp:
        method = self.forward_method

        async def body(call: Call) -> Answer:
            key = read_idempotency_key(context)
            self.validate(request)
            rules = self.lro_rules(request)
            self._check_store()
            fault = await self._inject(order_id, call)
            digest = request_digest(method, request)
            async with self.keys.locked(key):
                if self.keys.get(key) is None:
                    await self.before_apply(request, call)
                    # From this check to keys.put() there is no await: a compensation that ran during the wait has
                    # tombstoned the key (and the replay below refuses), one that runs after sees it applied.
                    if self.keys.get(key) is None:
                        if rules.forward is not None:
                            accepted = self._accept(key, method, digest, order_id, request, rules.forward, rules.undo)
                            return self._after_answer(fault, await self._commit_accepted(accepted))
                        applied, stock = self._apply_forward(key, digest, order_id, request, rules.undo)
                        await self.store.commit([applied], stock)
                record = self.keys.get(key)
                assert record is not None, "recorded above, or before this call"
                answer = await self._answer(record, digest)
            return self._after_answer(fault, answer)

        return response.FromString(await self._serve(method, context, body))

    async def compensate(
        self, request: common_pb2.CompensationRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompensationResponse:
        method = self.compensation_method

        async def body(call: Call) -> Answer:
            key = read_idempotency_key(context)
            require_compensation(request)
            if request.forward_idempotency_key == key:
                raise InvalidArgument("forward_idempotency_key", "must differ from the call's own idempotency-key")
            self._check_store()
            fault = await self._inject(request.order_id, call)
            digest = request_digest(method, request)
            # Only the compensation's own key is locked: a hanging forward call holds the forward key's lock forever.
            async with self.keys.locked(key):
                record = self.keys.get(key)
                if record is None:
                    record, touched, stock = self._apply_compensation(key, digest, request)
                    if record.in_progress:
                        return self._after_answer(fault, await self._commit_accepted(record))
                    await self.store.commit(touched, stock)
                answer = await self._answer(record, digest)
            return self._after_answer(fault, answer)

        return common_pb2.CompensationResponse.FromString(await self._serve(method, context, body))

    def _apply_forward(
        self, key: str, digest: str, order_id: str, request: Req, undo_lro: Lro | None
    ) -> tuple[KeyRecord, Sequence[tuple[str, int]]]:
        """Applies the forward call in memory; returns its new record and the stock levels to commit with it."""
        decision = self.apply(key, request)
        record = KeyRecord(
            key=key,
            method=self.forward_method,
            order_id=order_id,
            request_digest=digest,
            answer=decision.answer,
            applied_count=1 if decision.answer.ok else 0,
            effect=decision.effect,
            undo_lro=undo_lro if decision.answer.ok else None,
            details=decision.details,
        )
        self.keys.put(record)
        logger.debug("{} {} order={} key={} -> {}", self.name, self.forward_method, order_id, key, record.code)
        return record, decision.stock

    def _apply_compensation(
        self, key: str, digest: str, request: common_pb2.CompensationRequest
    ) -> tuple[KeyRecord, list[KeyRecord], Sequence[tuple[str, int]]]:
        """Undoes, tombstones or cancels the forward key in memory, or accepts the compensation as an operation (then
        the record is in progress); returns the new record, every record to commit, and stock levels."""
        forward = self.keys.get(request.forward_idempotency_key)
        if forward is not None:
            # A forward operation whose time has come is applied first, then undone: its outcome is decided by its
            # due time, not by when someone looked.
            self._finish_if_due(forward)
            undo_lro = forward.undo_lro
            undoable = forward.applied and not forward.undone_by and self.undo_refusal(forward) is None
            if undo_lro is not None and self._matches(forward, request) and undoable:
                record = self._accept(key, self.compensation_method, digest, request.order_id, request, undo_lro, None)
                return record, [record], ()
        record = KeyRecord(
            key=key, method=self.compensation_method, order_id=request.order_id, request_digest=digest, answer=None
        )
        touched, stock = self._settle_compensation(record, request)
        self.keys.put(record)
        return record, [record, *touched], stock

    def _matches(self, forward: KeyRecord, request: common_pb2.CompensationRequest) -> bool:
        return forward.method == self.forward_method and forward.order_id == request.order_id

    def _settle_compensation(
        self, record: KeyRecord, request: common_pb2.CompensationRequest
    ) -> tuple[list[KeyRecord], Sequence[tuple[str, int]]]:
        """Decides the compensation `record` against its forward key's state now and applies it in memory: sets the
        record's answer and applied count; returns the other records to commit, and stock levels."""
        forward_key = request.forward_idempotency_key
        forward = self.keys.get(forward_key)
        touched: list[KeyRecord] = []
        stock: Sequence[tuple[str, int]] = ()
        applied = 0
        reply = common_pb2.CompensationResponse()
        rejection: Answer | None = None
        if forward is None:
            # Never seen (lost, or still on its way): tombstone it so it can never apply later.
            forward = KeyRecord.tombstone(forward_key, self.forward_method, request.order_id)
            self.keys.put(forward)
            touched.append(forward)
            reply.tombstoned = True
            applied = 1
        elif forward.method != self.forward_method:
            message = f"forward_idempotency_key was used by {forward.method}, not {self.forward_method}"
            rejection = Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message)
        elif forward.order_id != request.order_id:
            message = "forward_idempotency_key belongs to another order"
            rejection = Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message)
        elif forward.in_progress:
            # Accepted and not finished: cancel it, so it never applies; a reused forward key is refused from now on.
            self._cancel(forward)
            touched.append(forward)
            reply.tombstoned = True
            applied = 1
        elif forward.applied and (refusal := self.undo_refusal(forward)) is not None:
            rejection = refusal
        elif forward.applied:
            reply.undone = True
            if forward.undone_by is None:  # else another compensation key undid it already: nothing new to apply
                stock = self.undo(forward)
                forward.undone_by = record.key
                touched.append(forward)
                applied = 1
        else:
            # Rejected, or in flight and not applied yet: tombstone it. A rejected key keeps its recorded answer.
            reply.tombstoned = True
            if not forward.tombstoned:
                forward.tombstoned = True
                touched.append(forward)
                applied = 1
        record.answer = rejection if rejection is not None else Answer.success(reply)
        record.applied_count = applied
        logger.debug(
            "{} {} order={} key={} forward_key={} -> {} undone={} tombstoned={}",
            self.name,
            self.compensation_method,
            request.order_id,
            record.key,
            forward_key,
            record.answer.code,
            reply.undone,
            reply.tombstoned,
        )
        return touched, stock

    # ---- operations ----

    def _accept(
        self,
        key: str,
        method: str,
        digest: str,
        order_id: str,
        request: Message,
        lro: Lro,
        undo_lro: Lro | None,
    ) -> KeyRecord:
        """Records the call as an operation in progress, in memory; commit it with `_commit_accepted`."""
        if len(self.in_progress) >= self._operations.max_in_progress:
            raise StubError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.name}: {self._operations.max_in_progress} operations in progress already",
            )
        record = KeyRecord(
            key=key,
            method=method,
            order_id=order_id,
            request_digest=digest,
            answer=None,
            in_progress=True,
            lro=lro,
            accepted_at_epoch_ms=self._clock(),
            request=request.SerializeToString(),
            undo_lro=undo_lro,
        )
        self.keys.put(record)
        self.in_progress[key] = record
        self._stats.operation(method, OperationEvent.ACCEPTED)
        logger.debug("{} {} order={} key={} -> accepted, runs {}", self.name, method, order_id, key, lro)
        return record

    async def _commit_accepted(self, record: KeyRecord) -> Answer:
        """Commits an accepted operation; its timer starts once that is durable (even if the caller gave up)."""
        answer = in_progress_answer(record, self._response_type(record.method), self._clock())
        committed = self.store.commit([record])

        def arm(future: asyncio.Future[None]) -> None:
            if not future.cancelled() and future.exception() is None:
                self._arm(record)

        committed.add_done_callback(arm)
        # Shielded: a caller that gives up must not cancel the commit's future, which the timer waits for.
        await asyncio.shield(committed)
        return answer

    async def _answer(self, record: KeyRecord, digest: str) -> Answer:
        """The answer to a call reusing `record`'s key. An operation is finished first if it is due, and answered only
        once what the answer says is durable."""
        if record.lro is None:
            return record.replay(digest)
        self._finish_if_due(record)
        try:
            if record.in_progress:
                record.check_request(digest)
                return in_progress_answer(record, self._response_type(record.method), self._clock())
            return record.replay(digest)
        finally:
            await self.store.barrier()

    def _arm(self, record: KeyRecord) -> None:
        due_at = record.due_at_epoch_ms
        if record.in_progress and due_at is not None:
            self._timers.schedule(record.key, due_at - self._clock())

    def _finish_by_timer(self, key: str) -> None:
        record = self.in_progress.get(key)
        if record is None or self.store.failure is not None:
            return  # finished or cancelled meanwhile; or the store failed, and the restart finishes it
        try:
            if record.due(self._clock()):
                self._complete(record)
            else:
                self._arm(record)  # the wall clock is behind the loop's: not due yet
        except Exception:
            logger.exception("{}: finishing operation {} failed", self.name, key)

    def _finish_if_due(self, record: KeyRecord) -> asyncio.Future[None] | None:
        """Finishes `record`'s operation if its time has come; returns the commit that makes it durable, if any."""
        if not record.due(self._clock()) or self.store.failure is not None:
            return None  # with a failed store it stays in progress: the restart finishes it
        return self._complete(record)

    def _complete(self, record: KeyRecord) -> asyncio.Future[None]:
        """Applies the operation in memory and commits it: the one place an operation finishes. No await: whoever
        calls it first finishes it, and everyone after sees it finished."""
        assert record.in_progress and record.request is not None, f"{record.key} is not in progress"
        record.in_progress = False
        del self.in_progress[record.key]
        self._timers.cancel(record.key)
        touched: list[KeyRecord] = []
        stock: Sequence[tuple[str, int]] = ()
        if record.method == self.forward_method:
            request = self.forward_request.FromString(record.request)
            decision = self.apply(record.key, request)  # type: ignore[arg-type]  # Req is forward_request
            record.answer = decision.answer
            record.applied_count = 1 if decision.answer.ok else 0
            record.effect = decision.effect
            record.details = decision.details
            if not decision.answer.ok:
                record.undo_lro = None
            stock = decision.stock
        elif record.method == self.compensation_method:
            touched, stock = self._settle_compensation(
                record, common_pb2.CompensationRequest.FromString(record.request)
            )
        else:
            touched = self.complete_other(record)
        assert record.answer is not None
        record.answer = done_answer(record.answer, self._response_type(record.method), record.key)
        record.request = None
        self._stats.operation(record.method, OperationEvent.COMPLETED)
        logger.debug(
            "{} {} order={} key={} -> finished {}", self.name, record.method, record.order_id, record.key, record.code
        )
        committed = self.store.commit([record, *touched], stock)
        committed.add_done_callback(_consume)  # a failure is the store's to report; readers see it in barrier()
        return committed

    def _cancel(self, forward: KeyRecord) -> None:
        """A forward operation in progress will never apply: it is done, ABORTED, and its key tombstoned."""
        forward.in_progress = False
        del self.in_progress[forward.key]
        self._timers.cancel(forward.key)
        forward.tombstoned = True
        forward.answer = TOMBSTONED
        forward.request = None
        forward.undo_lro = None
        self._stats.operation(forward.method, OperationEvent.CANCELLED)

    def _response_type(self, method: str) -> type[Message]:
        """The response message of one of this service's methods (a record's)."""
        if method == self.forward_method:
            return self.forward_response
        if method in self.other_responses:
            return self.other_responses[method]
        assert method == self.compensation_method, f"{self.name} has no method {method}"
        compensation: type[Message] = common_pb2.CompensationResponse
        return compensation

    def _check_store(self) -> None:
        if self.store.failure is not None:
            raise StoreFailed(self.store.failure)

    async def _inject(self, order_id: str, call: Call) -> Fault:
        """Latency, then hang or error; returns the fault so apply_then_fail can act once the answer is durable."""
        if not self._faults.plan.rules:  # the usual case: skip building the method path
            return NO_FAULT
        fault = self._faults.decide(f"/{self.grpc_service}/{call.method}", call.method, order_id)
        if fault.latency_s > 0:
            await asyncio.sleep(fault.latency_s)
        if fault.action is FaultAction.HANG:
            await self.hang(call)
        if fault.action is FaultAction.ERROR:
            raise StubError(fault.code, f"injected fault: {fault.code.name}")
        return fault

    async def hang(self, call: Call) -> None:
        """Never answers; the call is counted as HANG now, since it may never end."""
        call.hung = True
        self._stats.record(call.stat, HANG)
        await hang_forever()

    @staticmethod
    def _after_answer(fault: Fault, answer: Answer) -> Answer:
        if fault.action is FaultAction.APPLY_THEN_FAIL:
            raise StubError(fault.code, f"injected fault after apply: {fault.code.name}")
        return answer

    async def _serve(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        body: Callable[[Call], Awaitable[Answer]],
        stat: str | None = None,
    ) -> bytes:
        """Runs `body`, counts the outcome (under `stat`, default the method), and turns errors and rejections into
        statuses (errors.abort)."""
        call = Call(method, stat or method)
        try:
            answer = await body(call)
            if not answer.ok:
                raise answer.error()
        except StubError as error:
            self._stats.record(call.stat, error.code.name)
            await abort(context, error)
        except asyncio.CancelledError:
            if not call.hung:
                self._stats.record(call.stat, CANCELLED)
            raise
        except Exception:
            self._stats.record(call.stat, grpc.StatusCode.UNKNOWN.name)
            logger.exception("{} {}: unexpected error", self.name, method)
            raise
        self._stats.record(call.stat, grpc.StatusCode.OK.name)
        return answer.response


def _consume(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log "exception never retrieved"
