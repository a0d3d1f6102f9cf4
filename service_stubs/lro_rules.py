"""Which calls are long-running operations: the test rules read from the request (shop/v1/common.proto).

    "lro-<what>-<N>s"    finishes N whole seconds (0 to MAX_LRO_S) after the call was accepted; 0: at the first poll
    "lro-<what>-never"   never finishes (a forward call stays in progress until its compensation cancels it)

found anywhere in a payment token (Payment), in any item id of the order (Inventory, Shipping, Order) or in the user id
(Loyalty). <what> is one
of WHATS: each service reads one word for its forward call and one for its compensation, whose rule comes from the
request of the forward call it undoes. Several rules for the same word in one request: the longest wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protos.shop.v1 import common_pb2
from service_stubs.errors import InvalidArgument

WHATS: tuple[str, ...] = (
    "charge",
    "refund",
    "reserve",
    "release",
    "schedule",
    "cancel",
    "create",
    "cancelorder",
    "award",
    "revoke",
    "approve",
    "confirm",
    "dispatch",
)
"""The calls a rule can name: ChargePayment, RefundPayment, ReserveInventory, ReleaseInventory, ScheduleShipment,
CancelShipment, CreateOrder, CancelOrder, AwardPoints, RevokePoints, and the final steps ApproveOrder,
ConfirmReservation and ReleaseShipment (holds.py), whose rule comes from the items of the effect they make final."""
MAX_LRO_S = 86_400
"""Bound on N: a day is longer than any test or demo waits, and keeps due times far from int64 overflow."""
_PREFIX = "lro-"
# "-" after the word, so "lro-cancel-" never matches inside "lro-cancelorder-".
_PATTERNS = {what: re.compile(rf"lro-{what}-(?:(\d+)s|never)") for what in WHATS}


@dataclass(frozen=True, slots=True)
class Lro:
    """How long an operation runs once accepted: `duration_ms`, or forever (None)."""

    duration_ms: int | None

    @property
    def never(self) -> bool:
        return self.duration_ms is None

    def due_at_epoch_ms(self, accepted_at_epoch_ms: int) -> int | None:
        """When it finishes; None: never."""
        return None if self.duration_ms is None else accepted_at_epoch_ms + self.duration_ms

    def longer(self, other: Lro | None) -> Lro:
        if other is None:
            return self
        if self.duration_ms is None or other.duration_ms is None:
            return NEVER
        return self if self.duration_ms >= other.duration_ms else other


NEVER = Lro(None)


@dataclass(frozen=True, slots=True)
class LroRules:
    """The rules one forward request carries: for itself, and for the compensation that would undo it."""

    forward: Lro | None = None
    undo: Lro | None = None
    final: Lro | None = None
    """The final step's (holds.py): read again from the effect when that step comes, checked here so a bad rule is
    refused with the forward call."""


NO_RULES = LroRules()


def lro_rule(what: str, fields: Iterable[tuple[str, str]]) -> Lro | None:
    """The longest "lro-<what>-..." rule in any of the (field name, value) pairs; None if none names `what`.

    InvalidArgument names the field of a rule longer than MAX_LRO_S (without its value: it may be a payment token)."""
    pattern = _PATTERNS[what]
    found: Lro | None = None
    for field, value in fields:
        if _PREFIX not in value:  # the usual case: no regex at all
            continue
        for match in pattern.finditer(value):
            seconds = match.group(1)
            if seconds is None:
                found = NEVER
                continue
            if len(seconds) > len(str(MAX_LRO_S)) or int(seconds) > MAX_LRO_S:
                raise InvalidArgument(field, f"long-running rule lro-{what}: more than {MAX_LRO_S} s")
            found = Lro(int(seconds) * 1000).longer(found)
    return found


def field_rules(field: str, value: str, forward: str, undo: str) -> LroRules:
    """The rules for `forward` and its compensation `undo` in one request field (a payment token, a user id)."""
    if _PREFIX not in value:  # the usual case: nothing to look for
        return NO_RULES
    fields = ((field, value),)
    return LroRules(forward=lro_rule(forward, fields), undo=lro_rule(undo, fields))


def item_rules(items: Sequence[common_pb2.Item], forward: str, undo: str, final: str | None = None) -> LroRules:
    """The rules for `forward`, its compensation `undo` and its final step `final` in the item ids of an order."""
    if not any(_PREFIX in item.item_id for item in items):  # the usual case: nothing to look for
        return NO_RULES
    fields = [(f"items[{index}].item_id", item.item_id) for index, item in enumerate(items)]
    return LroRules(
        forward=lro_rule(forward, fields),
        undo=lro_rule(undo, fields),
        final=None if final is None else lro_rule(final, fields),
    )


def item_id_rule(what: str, item_ids: Iterable[str]) -> Lro | None:
    """The rule for `what` in item ids already accepted (a held effect's): never out of bounds, item_rules checked."""
    return lro_rule(what, [(f"items[{index}].item_id", item_id) for index, item_id in enumerate(item_ids)])
