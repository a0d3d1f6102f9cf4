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
from service_stubs.keys import Answer, KeyRecord, KeyTable, request_digest
from service_stubs.stats import CANCELLED, HANG, CallStats
from service_stubs.store import Loaded, Store
from service_stubs.validation import idempotency_key, require_compensation

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


class Call:
    """Per-call state the protocol needs after the fact."""

    __slots__ = ("hung", "method")

    def __init__(self, method: str) -> None:
        self.method = method
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

    def __init__(self, store: Store, loaded: Loaded, faults: FaultInjector, stats: CallStats) -> None:
        self.store = store
        self.keys = KeyTable(self.name)
        self._faults = faults
        self._stats = stats
        for record in loaded.records:
            self.keys.put(record)
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

    def restore(self, loaded: Loaded) -> None:
        """Rebuilds derived in-memory state (e.g. open orders) from what the store loaded."""

    async def before_apply(self, request: Req, call: Call) -> None:
        """A business wait before the apply (payment's test tokens); the tombstone check comes after it."""

    # ---- the protocol ----

    async def forward(
        self, request: Req, order_id: str, context: grpc.aio.ServicerContext, response: type[Resp]
    ) -> Resp:
        method = self.forward_method

        async def body(call: Call) -> Answer:
            key = idempotency_key(context)
            self.validate(request)
            self._check_store()
            fault = await self._inject(order_id, call)
            digest = request_digest(method, request)
            async with self.keys.locked(key):
                if self.keys.get(key) is None:
                    await self.before_apply(request, call)
                    # From this check to keys.put() there is no await: a compensation that ran during the wait has
                    # tombstoned the key (and the replay below refuses), one that runs after sees it applied.
                    if self.keys.get(key) is None:
                        applied, stock = self._apply_forward(key, digest, order_id, request)
                        await self.store.commit([applied], stock)
                record = self.keys.get(key)
                assert record is not None, "recorded above, or before this call"
                answer = record.replay(digest)
            return self._after_answer(fault, answer)

        return response.FromString(await self._serve(method, context, body))

    async def compensate(
        self, request: common_pb2.CompensationRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.CompensationResponse:
        method = self.compensation_method

        async def body(call: Call) -> Answer:
            key = idempotency_key(context)
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
                    await self.store.commit(touched, stock)
                answer = record.replay(digest)
            return self._after_answer(fault, answer)

        return common_pb2.CompensationResponse.FromString(await self._serve(method, context, body))

    def _apply_forward(
        self, key: str, digest: str, order_id: str, request: Req
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
        )
        self.keys.put(record)
        logger.debug("{} {} order={} key={} -> {}", self.name, self.forward_method, order_id, key, record.code)
        return record, decision.stock

    def _apply_compensation(
        self, key: str, digest: str, request: common_pb2.CompensationRequest
    ) -> tuple[KeyRecord, list[KeyRecord], Sequence[tuple[str, int]]]:
        """Undoes or tombstones the forward key, in memory; returns the new record, every record to commit, stock."""
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
        elif forward.applied:
            reply.undone = True
            if forward.undone_by is None:  # else another compensation key undid it already: nothing new to apply
                stock = self.undo(forward)
                forward.undone_by = key
                touched.append(forward)
                applied = 1
        else:
            # Rejected, or in flight and not applied yet: tombstone it. A rejected key keeps its recorded answer.
            reply.tombstoned = True
            if not forward.tombstoned:
                forward.tombstoned = True
                touched.append(forward)
                applied = 1
        answer = rejection if rejection is not None else Answer.success(reply)
        record = KeyRecord(
            key=key,
            method=self.compensation_method,
            order_id=request.order_id,
            request_digest=digest,
            answer=answer,
            applied_count=applied,
        )
        self.keys.put(record)
        logger.debug(
            "{} {} order={} key={} forward_key={} -> {} undone={} tombstoned={}",
            self.name,
            self.compensation_method,
            request.order_id,
            key,
            forward_key,
            answer.code,
            reply.undone,
            reply.tombstoned,
        )
        return record, [record, *touched], stock

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
        self._stats.record(call.method, HANG)
        await hang_forever()

    @staticmethod
    def _after_answer(fault: Fault, answer: Answer) -> Answer:
        if fault.action is FaultAction.APPLY_THEN_FAIL:
            raise StubError(fault.code, f"injected fault after apply: {fault.code.name}")
        return answer

    async def _serve(
        self, method: str, context: grpc.aio.ServicerContext, body: Callable[[Call], Awaitable[Answer]]
    ) -> bytes:
        """Runs `body`, counts the outcome, and turns errors and rejections into statuses (errors.abort)."""
        call = Call(method)
        try:
            answer = await body(call)
            if not answer.ok:
                raise answer.error()
        except StubError as error:
            self._stats.record(method, error.code.name)
            await abort(context, error)
        except asyncio.CancelledError:
            if not call.hung:
                self._stats.record(method, CANCELLED)
            raise
        except Exception:
            self._stats.record(method, grpc.StatusCode.UNKNOWN.name)
            logger.exception("{} {}: unexpected error", self.name, method)
            raise
        self._stats.record(method, grpc.StatusCode.OK.name)
        return answer.response
