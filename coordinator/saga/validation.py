"""PlaceOrder input checks: every rule names its field, and a request that breaks one never reaches the journal."""

from __future__ import annotations

import re

from coordinator.config import Limits
from coordinator.saga.errors import InvalidRequest
from protos.saga.v1 import saga_pb2

_ID_RE = re.compile(r"[A-Za-z0-9._:-]+")
_CURRENCY_RE = re.compile(r"[A-Z]{3}")
# 13-19 digits, optionally grouped by spaces or dashes: what a primary account number looks like.
_CARD_RE = re.compile(r"(?:\d[ -]?){12,18}\d")
_TOKEN_MAX_LEN = 256


def check_id(field: str, value: str, limits: Limits) -> None:
    if not value:
        raise InvalidRequest(field, "is required")
    if len(value) > limits.id_max_len:
        raise InvalidRequest(field, f"must be at most {limits.id_max_len} characters")
    if not _ID_RE.fullmatch(value):
        raise InvalidRequest(field, "may only contain letters, digits and . _ : -")


def validate_place_order(req: saga_pb2.PlaceOrderRequest, limits: Limits) -> None:
    """Raises InvalidRequest for the first field that breaks a rule."""
    check_id("order_id", req.order_id, limits)
    check_id("user_id", req.user_id, limits)
    if not req.items:
        raise InvalidRequest("items", "at least one item is required")
    if len(req.items) > limits.max_items:
        raise InvalidRequest("items", f"at most {limits.max_items} items per order")
    seen: set[str] = set()
    for i, item in enumerate(req.items):
        check_id(f"items[{i}].item_id", item.item_id, limits)
        if item.item_id in seen:
            raise InvalidRequest(f"items[{i}].item_id", "is listed twice; merge the quantities")
        seen.add(item.item_id)
        if not 1 <= item.quantity <= limits.max_quantity:
            raise InvalidRequest(f"items[{i}].quantity", f"must be between 1 and {limits.max_quantity}")
    if not req.HasField("payment_info"):
        raise InvalidRequest("payment_info", "is required")
    pay = req.payment_info
    if not pay.payment_token:
        raise InvalidRequest("payment_info.payment_token", "is required")
    if len(pay.payment_token) > _TOKEN_MAX_LEN:
        raise InvalidRequest("payment_info.payment_token", f"must be at most {_TOKEN_MAX_LEN} characters")
    if _CARD_RE.fullmatch(pay.payment_token.strip()):
        raise InvalidRequest("payment_info.payment_token", "looks like a card number; send a provider token instead")
    if not pay.payment_token.isprintable() or not pay.payment_token.isascii():
        raise InvalidRequest("payment_info.payment_token", "must be printable ASCII")
    if not 1 <= pay.amount_cents <= limits.max_amount_cents:
        raise InvalidRequest("payment_info.amount_cents", f"must be between 1 and {limits.max_amount_cents}")
    if not _CURRENCY_RE.fullmatch(pay.currency):
        raise InvalidRequest("payment_info.currency", "must be three uppercase letters (ISO 4217)")
    if req.HasField("ttl_ms") and req.ttl_ms < 1:
        raise InvalidRequest("ttl_ms", "must be at least 1 when set")
