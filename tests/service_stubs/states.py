"""Short names for the states the isolation tests speak of (order, reservation, shipment, saga), and a ledger builder:
the tests of the stubs' state model and of the invariants over it share them."""

from __future__ import annotations

from protos.saga.v1 import saga_pb2
from protos.service_stubs.v1.control_pb2 import OrderLedger
from protos.shop.v1 import inventory_pb2, order_pb2, shipping_pb2

NONE = order_pb2.ORDER_STATE_UNSPECIFIED
PENDING = order_pb2.ORDER_STATE_PENDING
APPROVED = order_pb2.ORDER_STATE_APPROVED
REJECTED = order_pb2.ORDER_STATE_REJECTED
HELD = inventory_pb2.RESERVATION_STATE_HELD
SOLD = inventory_pb2.RESERVATION_STATE_SOLD
RELEASED = inventory_pb2.RESERVATION_STATE_RELEASED
SCHEDULED = shipping_pb2.SHIPMENT_STATE_SCHEDULED
SHIPPED = shipping_pb2.SHIPMENT_STATE_RELEASED
"""A shipment RELEASED to the carrier (named apart from a RELEASED reservation)."""
CANCELLED = shipping_pb2.SHIPMENT_STATE_CANCELLED
SUCCEEDED = saga_pb2.SAGA_STATE_SUCCEEDED
FAILED = saga_pb2.SAGA_STATE_FAILED
RUNNING = saga_pb2.SAGA_STATE_RUNNING
DEAD = saga_pb2.SAGA_STATE_DEAD_LETTERED
NO_SAGA = saga_pb2.SAGA_STATE_UNSPECIFIED


def ledger(base: dict[str, object], fields: dict[str, object]) -> OrderLedger:
    """An order's ledger: `base` with `fields` laid over it (order id "o" unless given)."""
    return OrderLedger(**({"order_id": "o"} | base | fields))  # type: ignore[arg-type]
