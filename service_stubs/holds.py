"""Held effects and their final step: the services' side of the semantic lock (Order, Inventory, Shipping).

An applied forward call's effect is HELD until one of two final transitions, never both and never back:

    HELD --final step (ApproveOrder, ConfirmReservation, ReleaseShipment)--> FINAL     (APPROVED, SOLD, RELEASED)
    HELD --compensation (CancelOrder, ReleaseInventory, CancelShipment)----> UNDONE    (REJECTED, RELEASED, CANCELLED)

The state is derived from the forward call's key record (finalized_by, undone_by), never stored apart from it, so a
read, a ledger and a restart cannot disagree with what was applied. The final step is a call of its own, recorded under
its own idempotency key like a forward call and committed together with the forward record it marks. Each transition
is decided with no await between the check and the change (idempotency.py's module docstring), so a final step and a
compensation of the same effect cannot both win; the loser is FAILED_PRECONDITION.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import grpc
from google.protobuf.message import Message
from loguru import logger

from protos.shop.v1 import common_pb2
from service_stubs.errors import StubError
from service_stubs.idempotency import Call, Req, ShopService
from service_stubs.keys import Answer, KeyRecord, request_digest
from service_stubs.validation import read_idempotency_key, require_id, require_key

Resp = TypeVar("Resp", bound=Message)


class Hold(enum.Enum):
    """Where an applied forward call's effect is."""

    HELD = "held"
    """Applied, and neither final nor undone: PENDING, HELD, SCHEDULED."""
    FINAL = "final"
    """Made final by the final step: APPROVED, SOLD, RELEASED."""
    UNDONE = "undone"
    """Undone by the compensation: REJECTED, RELEASED, CANCELLED."""


TRANSITIONS: dict[Hold, frozenset[Hold]] = {
    Hold.HELD: frozenset({Hold.FINAL, Hold.UNDONE}),
    Hold.FINAL: frozenset(),
    Hold.UNDONE: frozenset(),
}


def hold_of(record: KeyRecord) -> Hold | None:
    """The state of a forward call's effect; None if nothing was applied (refused, tombstoned, in progress)."""
    if not record.applied:
        return None
    if record.undone_by is not None:
        return Hold.UNDONE
    if record.finalized_by is not None:
        return Hold.FINAL
    return Hold.HELD


def summary(holds: Iterable[Hold | None]) -> Hold | None:
    """Several effects of one order as one state (ledgers): FINAL if any is, else HELD if any is, else UNDONE if any."""
    seen = set(holds)
    return next((hold for hold in (Hold.FINAL, Hold.HELD, Hold.UNDONE) if hold in seen), None)


@dataclass(frozen=True, slots=True)
class Found:
    """The effect a final step or a read is about."""

    record: KeyRecord | None
    """The applied forward call; None if none was applied."""
    in_progress: bool
    """A forward call for it is a long-running operation not finished yet."""


class HoldingService(ShopService[Req]):
    """A shop service whose forward effect is held until a final step, and which answers a read of it."""

    final_method: ClassVar[str]
    """The final step's method: "ApproveOrder"."""
    read_method: ClassVar[str]
    """The read's method, for fault rules and statistics: "GetOrder"."""
    describe: ClassVar[str]
    """What the effect is called in messages, with {} for the order id: "order {}"."""
    state_names: ClassVar[Mapping[Hold, str]]
    """The proto's name of each state, for messages: {Hold.HELD: "PENDING", ...}."""
    proto_states: ClassVar[Mapping[Hold, int]]
    """The proto enum value of each state."""

    # ---- what a service provides ----

    @abc.abstractmethod
    def final_reply(self, forward: KeyRecord) -> Message:
        """The final step's response for the (now FINAL) `forward` effect."""

    @abc.abstractmethod
    def read_reply(self, forward: KeyRecord) -> Message:
        """The read's response for the `forward` effect, in whatever state it is."""

    # ---- state ----

    def proto_state(self, hold: Hold | None) -> int:
        """The proto enum value of `hold`; 0 (UNSPECIFIED) for None."""
        return 0 if hold is None else self.proto_states[hold]

    def order_state(self, order_id: str) -> int:
        """The proto state of the order's effects, as one (summary()): what the ledger shows."""
        records = self.keys.for_order(order_id)
        return self.proto_state(summary(hold_of(r) for r in records if r.method == self.forward_method))

    def undo_refusal(self, forward: KeyRecord) -> Answer | None:
        if forward.finalized_by is None:
            return None
        what = self.describe.format(forward.order_id)
        message = f"{what} is {self.state_names[Hold.FINAL]}: that is final, it cannot be undone"
        return Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message)

    def find(self, order_id: str, forward_key: str = "") -> Found:
        """The effect named by its forward key, or else the order's one effect (the live one; if none is, the last
        undone). FAILED_PRECONDITION if the order holds several live ones and no key names one."""
        if forward_key:
            record = self.keys.get(forward_key)
            if record is None or record.method != self.forward_method or record.order_id != order_id:
                return Found(None, False)
            records = [record]
        else:
            records = [r for r in self.keys.for_order(order_id) if r.method == self.forward_method]
        for record in records:
            self._finish_if_due(record)  # an operation's outcome is decided by its due time, not by when one looked
        applied = [r for r in records if r.applied]
        in_progress = any(r.in_progress for r in records)
        live = [r for r in applied if r.undone_by is None]
        if len(live) > 1:
            message = f"order {order_id} holds {len(live)}: name one by its forward call's idempotency key"
            raise StubError(grpc.StatusCode.FAILED_PRECONDITION, message)
        if live:
            return Found(live[0], in_progress)
        return Found(applied[-1] if applied else None, in_progress)

    # ---- the final step and the read ----

    async def finalize(
        self,
        request: Message,
        order_id: str,
        forward_key: str,
        context: grpc.aio.ServicerContext,
        response: type[Resp],
        key_field: str = "",
    ) -> Resp:
        """HELD -> FINAL for the effect `find(order_id, forward_key)` names, under the call's idempotency key."""
        method = self.final_method

        async def body(call: Call) -> Answer:
            key = read_idempotency_key(context)
            require_id(order_id, "order_id")
            if forward_key:
                require_key(forward_key, key_field)
            self._check_store()
            fault = await self._inject(order_id, call)
            digest = request_digest(method, request)
            async with self.keys.locked(key):
                record = self.keys.get(key)
                if record is None:
                    record, touched = self._apply_final(key, digest, order_id, forward_key)
                    await self.store.commit(touched)
                answer = await self._answer(record, digest)
            return self._after_answer(fault, answer)

        return response.FromString(await self._serve(method, context, body))

    async def read(
        self,
        order_id: str,
        forward_key: str,
        context: grpc.aio.ServicerContext,
        response: type[Resp],
        key_field: str = "",
    ) -> Resp:
        """The effect `find(order_id, forward_key)` names and its state; NOT_FOUND if none was applied. Like
        GetOperation, faults apply and apply_then_fail fails it after reading."""

        async def body(call: Call) -> Answer:
            require_id(order_id, "order_id")
            if forward_key:
                require_key(forward_key, key_field)
            self._check_store()
            fault = await self._inject(order_id, call)
            forward = self.find(order_id, forward_key).record
            if forward is None:
                raise StubError(grpc.StatusCode.NOT_FOUND, f"{self.describe.format(order_id)} not found")
            reply = self.read_reply(forward)
            await self.store.barrier()  # what the reply says is durable before it is sent
            return self._after_answer(fault, Answer.success(reply))

        return response.FromString(await self._serve(self.read_method, context, body))

    def _apply_final(self, key: str, digest: str, order_id: str, forward_key: str) -> tuple[KeyRecord, list[KeyRecord]]:
        """Decides the final step and applies it in memory (no await); returns its record and every record to commit.
        Raises (recording nothing) while the effect is still being applied: that outcome is not decided yet."""
        found = self.find(order_id, forward_key)
        forward = found.record
        hold = None if forward is None else hold_of(forward)
        what = self.describe.format(order_id)
        if found.in_progress and hold in (None, Hold.UNDONE):
            raise StubError(grpc.StatusCode.UNAVAILABLE, f"{what} is still in progress: retry")
        names = self.state_names
        touched: list[KeyRecord] = []
        applied = 0
        if forward is None or hold is None:
            answer = Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, f"{what} not found")
        elif hold is Hold.UNDONE:
            message = f"{what} is {names[Hold.UNDONE]}: it cannot become {names[Hold.FINAL]}"
            answer = Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message)
        elif self._undo_in_progress(forward):
            message = f"{what} is being undone: it cannot become {names[Hold.FINAL]}"
            answer = Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message)
        else:
            if hold is Hold.HELD:
                assert Hold.FINAL in TRANSITIONS[hold]
                forward.finalized_by = key
                touched.append(forward)
                applied = 1
            answer = Answer.success(self.final_reply(forward))  # FINAL already: the same answer, nothing new
        record = KeyRecord(key=key, method=self.final_method, order_id=order_id, request_digest=digest, answer=answer)
        record.applied_count = applied
        self.keys.put(record)
        logger.debug("{} {} order={} key={} -> {}", self.name, self.final_method, order_id, key, record.code)
        return record, [record, *touched]

    def _undo_in_progress(self, forward: KeyRecord) -> bool:
        """True if a compensation of `forward` was accepted as a long-running operation and has not settled yet."""
        for record in self.in_progress.values():
            if record.method == self.compensation_method and record.request is not None:
                request = common_pb2.CompensationRequest.FromString(record.request)
                if request.forward_idempotency_key == forward.key:
                    return True
        return False
