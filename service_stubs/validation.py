"""Request checks shared by the services: each failure is an InvalidArgument naming the field."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from common.metadata import IDEMPOTENCY_KEY
from protos.shop.v1 import common_pb2
from service_stubs.errors import InvalidArgument

"""The metadata key every shop call must carry."""
MAX_ID_LENGTH = 256
"""Bound on ids (order, user, item, token, currency): they are stored and indexed, and no real one is longer."""
MAX_KEY_LENGTH = 512
"""Bound on idempotency keys; they are derived from saga id, step and action, so a little longer than an id."""
MAX_ITEMS = 1_000
"""Bound on order lines per request."""


def read_idempotency_key(context: grpc.aio.ServicerContext) -> str:
    """The call's idempotency key; InvalidArgument if it is missing, empty or oversized."""
    for name, value in context.invocation_metadata() or ():
        if name == IDEMPOTENCY_KEY:
            key = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
            if not key:
                break
            if len(key) > MAX_KEY_LENGTH:
                raise InvalidArgument(IDEMPOTENCY_KEY, f"longer than {MAX_KEY_LENGTH} characters")
            return key
    raise InvalidArgument(IDEMPOTENCY_KEY, "metadata is required and must not be empty")


def require_id(value: str, field: str) -> None:
    if not value:
        raise InvalidArgument(field, "required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_ID_LENGTH} characters")


def require_items(items: Sequence[common_pb2.Item], field: str = "items") -> None:
    if not items:
        raise InvalidArgument(field, "at least one item is required")
    if len(items) > MAX_ITEMS:
        raise InvalidArgument(field, f"more than {MAX_ITEMS} items")
    for index, item in enumerate(items):
        require_id(item.item_id, f"{field}[{index}].item_id")
        if item.quantity < 1:
            raise InvalidArgument(f"{field}[{index}].quantity", f"must be at least 1, got {item.quantity}")


def require_compensation(request: common_pb2.CompensationRequest) -> None:
    require_id(request.order_id, "order_id")
    if not request.forward_idempotency_key:
        raise InvalidArgument("forward_idempotency_key", "required")
    if len(request.forward_idempotency_key) > MAX_KEY_LENGTH:
        raise InvalidArgument("forward_idempotency_key", f"longer than {MAX_KEY_LENGTH} characters")
    if len(request.reason) > 4 * MAX_ID_LENGTH:
        raise InvalidArgument("reason", f"longer than {4 * MAX_ID_LENGTH} characters")


def units_per_item(items: Sequence[common_pb2.Item]) -> dict[str, int]:
    """Quantities summed per item id (an item may appear on several lines)."""
    totals: dict[str, int] = {}
    for item in items:
        totals[item.item_id] = totals.get(item.item_id, 0) + item.quantity
    return totals


def require_key(key: str, field: str) -> None:
    """An idempotency key sent in a request field (GetOperation), bounded like the metadata one."""
    if not key:
        raise InvalidArgument(field, "required")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(field, f"longer than {MAX_KEY_LENGTH} characters")
