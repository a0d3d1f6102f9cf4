"""Where the dashboard counts a live saga on its definition's graph (shard_router.dashboard.step_counts), from
saga.v1 messages as shards send them: one bucket at one step per live saga, only the version asked for, and the
bottleneck as the step with the most sagas in flight. The live test (test_dashboard.py) covers the endpoint."""

from __future__ import annotations

from protos.saga.v1 import saga_pb2
from shard_router.dashboard.step_counts import bottleneck, current_step, step_counts

LOYALTY = ("create_order", "reserve_inventory", "schedule_shipment", "process_payment", "award_points")
LOYALTY_HASH = "b" * 32
ORDER_HASH = "a" * 32
P, F, S = saga_pb2.STEP_STATUS_PENDING, saga_pb2.STEP_STATUS_IN_FLIGHT, saga_pb2.STEP_STATUS_SUCCEEDED
FAILED, COMPENSATING = saga_pb2.STEP_STATUS_FAILED, saga_pb2.STEP_STATUS_COMPENSATING
COMPENSATED, STUCK = saga_pb2.STEP_STATUS_COMPENSATED, saga_pb2.STEP_STATUS_COMPENSATION_FAILED


def saga(state: int, *statuses: int, definition_hash: str = LOYALTY_HASH, waiting: int = -1) -> saga_pb2.Saga:
    steps = [
        saga_pb2.StepInfo(step_id=sid, status=status, waiting=i == waiting)
        for i, (sid, status) in enumerate(zip(LOYALTY, statuses, strict=False))
    ]
    return saga_pb2.Saga(state=state, definition_hash=definition_hash, steps=steps)


RUNNING, COMP, DEAD = saga_pb2.SAGA_STATE_RUNNING, saga_pb2.SAGA_STATE_COMPENSATING, saga_pb2.SAGA_STATE_DEAD_LETTERED


def test_each_live_saga_counts_once_at_its_current_step() -> None:
    assert current_step(saga(RUNNING, S, F, P, P, P)) == ("reserve_inventory", "in_flight")
    assert current_step(saga(RUNNING, S, S, P, P, P)) == ("schedule_shipment", "in_flight")  # between two steps
    assert current_step(saga(COMP, S, S, FAILED, P, P)) == ("schedule_shipment", "failed")  # undo not started yet
    assert current_step(saga(COMP, S, COMPENSATING, FAILED, P, P)) == ("reserve_inventory", "compensating")
    # Parked: by a compensation past its budget, or by a retriable step past its bounds (after the pivot).
    assert current_step(saga(DEAD, S, STUCK, COMPENSATED, P, P)) == ("reserve_inventory", "parked")
    assert current_step(saga(DEAD, S, S, S, S, FAILED)) == ("award_points", "parked")
    assert current_step(saga(saga_pb2.SAGA_STATE_SUCCEEDED, S, S, S, S, S)) is None
    assert current_step(saga(saga_pb2.SAGA_STATE_FAILED, COMPENSATED, FAILED, P, P, P)) is None


def test_counts_cover_one_version_and_every_step_and_the_bottleneck_is_the_most_in_flight() -> None:
    sagas = [
        saga(RUNNING, S, S, S, F, P, waiting=3),
        saga(RUNNING, S, S, S, F, P),
        saga(RUNNING, F, P, P, P, P),
        saga(DEAD, S, S, S, S, FAILED),
        saga(COMP, S, COMPENSATING, FAILED, P, P),
        saga(RUNNING, S, F, P, P, P, definition_hash=ORDER_HASH),  # another version: not counted here
        saga(saga_pb2.SAGA_STATE_SUCCEEDED, S, S, S, S, S),
    ]
    counts = step_counts(sagas, LOYALTY_HASH, LOYALTY)
    assert list(counts) == list(LOYALTY)
    assert counts["process_payment"] == {"in_flight": 2, "failed": 0, "compensating": 0, "parked": 0, "waiting": 1}
    assert counts["create_order"]["in_flight"] == 1
    assert counts["award_points"]["parked"] == 1
    assert counts["reserve_inventory"]["compensating"] == 1
    assert counts["schedule_shipment"] == dict.fromkeys(("in_flight", "failed", "compensating", "parked", "waiting"), 0)
    assert bottleneck(counts) == "process_payment"
    # A tie goes to the earliest step; nothing in flight, no bottleneck.
    assert bottleneck(step_counts(sagas[1:3], LOYALTY_HASH, LOYALTY)) == "create_order"
    assert bottleneck(step_counts(sagas[3:5], LOYALTY_HASH, LOYALTY)) is None
