"""A saga's input as the journal keeps it, and its identity for idempotency.

The input is stored in two parts: a clear part GetSaga may show, and a part sealed with the journal's key
(coordinator/security/sealing.py). For the order flow's PlaceOrderRequest the clear part is the order without its
payment details and the sealed part the PaymentInfo, exactly as journals before definitions hold them. Any other input
type is sealed whole: the coordinator cannot know which of its fields are secret, so none is shown or kept in clear.

A saga's journal key (the sagas table's order_id column, unique) is its key for the order flow, as always, and
"<type>/<key>" for any other type: a key never holds "/", so the return flow of order o-1 and the order flow of o-1
are two sagas, and the router routes both by the key alone (routing_key).
"""

from __future__ import annotations

from typing import Any, TypeGuard

from google.protobuf.message import Message

from coordinator.config import Limits
from coordinator.saga.validation import check_id, validate_place_order
from protos.saga.v1 import saga_pb2

ORDER_TYPE = "order"
"""The saga type PlaceOrder starts."""
_PLACE_ORDER = saga_pb2.PlaceOrderRequest.DESCRIPTOR.full_name


_LEGACY_STEP = {v.name.removeprefix("STEP_").lower(): v.number for v in saga_pb2.Step.DESCRIPTOR.values if v.number}


def legacy_step(step_id: str) -> int:
    """The saga.v1 Step enum value of a step id (the order flow's four steps; 0 for any other): the API fills the
    enum field beside step_id so clients of the order flow read what they always did."""
    return int(_LEGACY_STEP.get(step_id, 0))


def journal_key(saga_type: str, key: str) -> str:
    return key if saga_type == ORDER_TYPE else f"{saga_type}/{key}"


def split_key(journal_key: str) -> tuple[str, str]:
    """(saga type, key) of a journal key."""
    saga_type, sep, key = journal_key.partition("/")
    return (saga_type, key) if sep else (ORDER_TYPE, journal_key)


def routing_key(journal_key: str) -> str:
    """What the ring hashes: the key, whatever the type."""
    return split_key(journal_key)[1]


def is_place_order(message: Any) -> TypeGuard[saga_pb2.PlaceOrderRequest]:
    return bool(message.DESCRIPTOR.full_name == _PLACE_ORDER)


def validate(message: Message, key: str, limits: Limits) -> None:
    """InvalidRequest naming the field: the order flow's input by PlaceOrder's rules, any other by its key's."""
    if is_place_order(message):
        validate_place_order(message, limits)
    else:
        check_id("key", key, limits)


def canonical(message: Message) -> bytes:
    """The bytes two starts of the same saga share: a retry may change how to run it (ttl_ms, no_wait), not what."""
    if is_place_order(message):
        req: saga_pb2.PlaceOrderRequest = message
        canon = saga_pb2.PlaceOrderRequest(
            order_id=req.order_id, user_id=req.user_id, items=req.items, payment_info=req.payment_info
        )
        return bytes(canon.SerializeToString(deterministic=True))
    name: str = message.DESCRIPTOR.full_name
    return name.encode() + b"\0" + message.SerializeToString(deterministic=True)


def parts(message: Message) -> tuple[str, bytes, bytes]:
    """(user id shown, clear part, part to seal)."""
    if is_place_order(message):
        req: saga_pb2.PlaceOrderRequest = message
        stripped = saga_pb2.PlaceOrderRequest(order_id=req.order_id, user_id=req.user_id, items=req.items)
        return (
            req.user_id,
            stripped.SerializeToString(deterministic=True),
            req.payment_info.SerializeToString(deterministic=True),
        )
    return "", b"", message.SerializeToString(deterministic=True)


def restore(input_type: Any, clear: bytes, opened: bytes) -> Message:
    """The input from its journaled parts (the sealed one already opened)."""
    if input_type.DESCRIPTOR.full_name == _PLACE_ORDER:
        req = saga_pb2.PlaceOrderRequest.FromString(clear)
        req.payment_info.ParseFromString(opened)
        placed: Message = req
        return placed
    restored: Message = input_type.FromString(opened)
    return restored
