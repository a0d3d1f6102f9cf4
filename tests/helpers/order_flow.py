"""The order flow's definition and its four steps, for tests that name a step (the shipped order.yaml, compiled)."""

from __future__ import annotations

from common.definitions.check import order_flow

FLOW = order_flow()
STEPS = FLOW.steps
CREATE_ORDER, RESERVE_INVENTORY, PROCESS_PAYMENT, SCHEDULE_SHIPMENT = STEPS
