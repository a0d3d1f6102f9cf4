"""Held effects and their final step: the services' side of the semantic lock (Order, Inventory, Shipping).

An applied forward call's effect is HELD until one of two final transitions, never both and never back:

    HELD --final step (ApproveOrder, ConfirmReservation, ReleaseShipment)--> FINAL     (APPROVED, SOLD, RELEASED)
    HELD --compensation (CancelOrder, ReleaseInventory, CancelShipment)----> UNDONE    (REJECTED, RELEASED, CANCELLED)

The state is derived from the forward call's key record (finalized_by, undone_by), never stored apart from it, so a
read, a ledger and a restart cannot disagree with what was applied. The final step is a call of its own, recorded under
its own idempotency key like a forward call and committed together with the forward record it marks. Each transition
is decided with no await between the check and the change (idempotency.py's module docstring), so a final step and a
compensation of the same effect cannot both win; the loser is FAILED_PRECONDITION.

A final step is long-running when the effect's items ask for it (lro_rules.py: "lro-approve-", "lro-confirm-",
"lro-dispatch-"): accepted, it is decided again when it comes due, and until then the effect's compensation is refused
(it will become final). A final step's record names the forward key it is about in its `effect` ({key: 1}), so it
completes against that effect even if the order has gained another one meanwhile.
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
from service_stubs.lro_rules import Lro
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

    @abc.abstractmethod
    def final_rule(self, forward: KeyRecord) -> Lro | None:
        """The long-running rule of the final step of `forward`'s effect (from its items); None: answered at once."""

    # ---- state ----

    def proto_state(self, hold: Hold | None) -> int:
        """The proto enum value of `hold`; 0 (UNSPECIFIED) for None."""
        return 0 if hold is None else self.proto_states[hold]

    def order_state(self, order_id: str) -> int:
        """The proto state of the order's effects, as one (summary()): what the ledger shows."""
        records = self.keys.for_order(order_id)
        return self.proto_state(summary(hold_of(r) for r in records if r.method == self.forward_method))

    def undo_refusal(self, forward: KeyRecord) -> Answer | None:
        what = self.describe.format(forward.order_id)
        final = self.state_names[Hold.FINAL]
        if forward.finalized_by is not None:
            message = f"{what} is {final}: that is final, it cannot be undone"
        elif any(r.method == self.final_method and forward.key in r.effect for r in self.in_progress.values()):
            message = f"{what} is becoming {final} (a {self.final_method} in progress): it cannot be undone"
        else:
            return None
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
        # An operation's outcome is decided by its due time, not by when one looked: the effect's, and its final step's.
        for record in self.keys.for_order(order_id):
            if record.in_progress and record.method in (self.forward_method, self.final_method):
                self._finish_if_due(record)
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
                    # From here to keys.put() (in _accept or below) there is no await.
                    forward = self._target(order_id, forward_key)
                    answer, applies = self._decide_final(forward, order_id)
                    lro = self.final_rule(forward) if applies and forward is not None else None
                    if forward is not None and lro is not None:
                        accepted = self._accept(key, method, digest, order_id, request, lro, None)
                        accepted.effect = {forward.key: 1}
                        return self._after_answer(fault, await self._commit_accepted(accepted))
                    record = KeyRecord(key=key, method=method, order_id=order_id, request_digest=digest, answer=None)
                    touched = self._settle_final(record, forward, answer, applies)
                    self.keys.put(record)
                    await self.store.commit([record, *touched])
                answer = await self._answer(record, digest)
            return self._after_answer(fault, answer)

        return response.FromString(await self._serve(method, context, body))

    def complete_other(self, record: KeyRecord) -> list[KeyRecord]:
        forward = self.keys.get(next(iter(record.effect)))
        answer, applies = self._decide_final(forward, record.order_id)
        return self._settle_final(record, forward, answer, applies)

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

    def _target(self, order_id: str, forward_key: str) -> KeyRecord | None:
        """The applied effect a final step is about (find()); raises, recording nothing, while it is still being
        applied: that outcome is not decided yet."""
        found = self.find(order_id, forward_key)
        hold = None if found.record is None else hold_of(found.record)
        if found.in_progress and hold in (None, Hold.UNDONE):
            raise StubError(
                grpc.StatusCode.UNAVAILABLE, f"{self.describe.format(order_id)} is still in progress: retry"
            )
        return found.record

    def _decide_final(self, forward: KeyRecord | None, order_id: str) -> tuple[Answer, bool]:
        """The final step's answer for `forward`'s effect now, and whether it makes it final (HELD -> FINAL)."""
        what = self.describe.format(order_id)
        names = self.state_names
        hold = None if forward is None else hold_of(forward)
        if forward is None or hold is None:
            return Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, f"{what} not found"), False
        if hold is Hold.UNDONE:
            message = f"{what} is {names[Hold.UNDONE]}: it cannot become {names[Hold.FINAL]}"
            return Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message), False
        if self._undo_in_progress(forward):
            message = f"{what} is being undone: it cannot become {names[Hold.FINAL]}"
            return Answer.rejection(grpc.StatusCode.FAILED_PRECONDITION, message), False
        # FINAL already: the same answer, nothing new.
        return Answer.success(self.final_reply(forward)), hold is Hold.HELD

    def _settle_final(
        self, record: KeyRecord, forward: KeyRecord | None, answer: Answer, applies: bool
    ) -> list[KeyRecord]:
        """Applies a decided final step in memory: its record's answer, and the effect it makes final; returns the
        other records to commit."""
        record.answer = answer
        record.applied_count = int(applies)
        touched: list[KeyRecord] = []
        if forward is not None:
            record.effect = {forward.key: 1}
            if applies:
                hold = hold_of(forward)
                assert hold is not None and Hold.FINAL in TRANSITIONS[hold], f"{forward.key}: {hold} -> FINAL"
                forward.finalized_by = record.key
                touched.append(forward)
        logger.debug(
            "{} {} order={} key={} -> {}", self.name, self.final_method, record.order_id, record.key, answer.code
        )
        return touched

    def _undo_in_progress(self, forward: KeyRecord) -> bool:
        """True if a compensation of `forward` was accepted as a long-running operation and has not settled yet."""
        for record in self.in_progress.values():
            if record.method == self.compensation_method and record.request is not None:
                request = common_pb2.CompensationRequest.FromString(record.request)
                if request.forward_idempotency_key == forward.key:
                    return True
        return False
