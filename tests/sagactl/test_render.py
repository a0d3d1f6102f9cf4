"""How sagactl prints what the coordinator answers, from saga.v1 messages alone: a step waiting on a long-running
operation (in `get` and `top`), the events of such operations, and a dry run's plan."""

from __future__ import annotations

import io

from google.protobuf.timestamp_pb2 import Timestamp

from protos.saga.v1 import saga_pb2
from sagactl import render, top

T0 = 1_700_000_000.0


def ts(at: float) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(round(at * 1000))
    return t


def waiting_saga() -> saga_pb2.Saga:
    """Payment accepted the charge 12 s after the saga started and will finish it later; asked next at +18 s."""
    return saga_pb2.Saga(
        saga_id="saga-1",
        order_id="o-1",
        user_id="u-1",
        state=saga_pb2.SAGA_STATE_RUNNING,
        shard_id="shard-1",
        created_at=ts(T0),
        updated_at=ts(T0 + 14),
        deadline=ts(T0 + 600),
        steps=[
            saga_pb2.StepInfo(
                step=saga_pb2.STEP_CREATE_ORDER,
                status=saga_pb2.STEP_STATUS_SUCCEEDED,
                forward_attempts=1,
                started_at=ts(T0),
                updated_at=ts(T0 + 0.1),
            ),
            saga_pb2.StepInfo(
                step=saga_pb2.STEP_PROCESS_PAYMENT,
                status=saga_pb2.STEP_STATUS_IN_FLIGHT,
                forward_attempts=1,
                started_at=ts(T0 + 11.9),
                updated_at=ts(T0 + 14),
                waiting=True,
                waiting_action=saga_pb2.ACTION_FORWARD,
                waiting_since=ts(T0 + 12),
                next_poll_at=ts(T0 + 18),
            ),
        ],
        events=[
            saga_pb2.SagaEvent(
                seq=5,
                at=ts(T0 + 12),
                kind="accepted",
                step=saga_pb2.STEP_PROCESS_PAYMENT,
                action=saga_pb2.ACTION_FORWARD,
                attempt=1,
                code="IN_PROGRESS",
                detail="accepted; asking in 2000 ms",
                next_attempt_at=ts(T0 + 14),
            ),
            saga_pb2.SagaEvent(
                seq=6,
                at=ts(T0 + 14),
                kind="polled",
                step=saga_pb2.STEP_PROCESS_PAYMENT,
                action=saga_pb2.ACTION_FORWARD,
                attempt=1,
                code="IN_PROGRESS",
                next_attempt_at=ts(T0 + 18),
            ),
            saga_pb2.SagaEvent(
                seq=7,
                at=ts(T0 + 14.5),
                kind="asked",
                step=saga_pb2.STEP_CREATE_ORDER,
                action=saga_pb2.ACTION_FORWARD,
                attempt=1,
                code="DONE:OK",
            ),
        ],
    )


def test_get_shows_how_long_a_step_has_waited_and_when_the_service_is_asked_next() -> None:
    out = io.StringIO()
    render.saga_detail(waiting_saga(), out, now=T0 + 15)
    text = out.getvalue()
    assert "waiting   process_payment forward: accepted by the service 3.0s ago; next poll in 3.0s (" in text
    payment = next(line for line in text.splitlines() if line.startswith("process_payment"))
    assert "IN_FLIGHT (waiting)" in payment
    create = next(line for line in text.splitlines() if line.startswith("create_order"))
    assert "waiting" not in create
    # The operation's events, with when the coordinator asks next.
    events = {line.split()[2]: line for line in text.splitlines() if line[:1].isdigit()}
    assert "next poll at +14.0s" in events["accepted"] and "accepted; asking in 2000 ms" in events["accepted"]
    assert "next poll at +18.0s" in events["polled"] and "IN_PROGRESS" in events["polled"]
    assert "DONE:OK" in events["asked"]


def test_a_poll_that_is_due_says_so() -> None:
    out = io.StringIO()
    render.saga_detail(waiting_saga(), out, now=T0 + 20)
    assert "accepted by the service 8.0s ago; next poll due now" in out.getvalue()


def test_a_saga_that_waits_on_nothing_shows_no_waiting_line() -> None:
    saga = waiting_saga()
    del saga.steps[1]
    out = io.StringIO()
    render.saga_detail(saga, out, now=T0 + 15)
    assert "waiting" not in out.getvalue()


def test_top_counts_waiting_sagas_and_shows_where_they_wait() -> None:
    saga = waiting_saga()
    assert top._waiting(saga) and top._current_step(saga, T0 + 42) == "process_payment forward waiting 30.0s"
    data = {
        "at": T0,
        "router": "127.0.0.1:50051",
        "in_flight": {"running": 3, "compensating": 1},
        "in_flight_capped": False,
        "waiting": 2,
        "dead_letters_open": 0,
        "started_last_minute": 4,
        "started_last_minute_capped": False,
        "recent_outcomes": {},
        "steps": [],
        "oldest_in_flight": [
            {"order_id": "o-1", "state": "RUNNING", "shard_id": "shard-1", "age_seconds": 42.0, "at": "x waiting"}
        ],
    }
    assert "in flight: 3 running, 1 compensating (2 waiting on a service)" in top.frame(data)
    data["waiting"] = 0
    assert "1 compensating   dead letters" in top.frame(data)


def test_a_dry_run_prints_every_call_with_its_full_key() -> None:
    key = "s" * 64 + "/process_payment/compensate"  # longer than a table cell usually gets
    preview = saga_pb2.SagaPreview(
        order_id="o-1",
        saga_id="s" * 64,
        shard_id="shard-2",
        state_now=saga_pb2.SAGA_STATE_DEAD_LETTERED,
        end_state=saga_pb2.SAGA_STATE_FAILED,
        calls=[
            saga_pb2.PlannedCall(
                step=saga_pb2.STEP_PROCESS_PAYMENT,
                action=saga_pb2.ACTION_COMPENSATE,
                service="payment",
                method="/shop.v1.PaymentService/RefundPayment",
                idempotency_key=key,
                attempt=4,
                retry_of_earlier_attempt=True,
            ),
            saga_pb2.PlannedCall(
                step=saga_pb2.STEP_CREATE_ORDER,
                action=saga_pb2.ACTION_COMPENSATE,
                service="order",
                method="/shop.v1.OrderService/CancelOrder",
                idempotency_key="k2",
                attempt=1,
                asks_first=True,
            ),
        ],
    )
    out = io.StringIO()
    render.preview(preview, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"o-1 (saga {'s' * 64} on shard-2): DEAD_LETTERED -> FAILED, 2 calls"
    assert lines[1].split()[:5] == ["#", "STEP", "ACTION", "SERVICE", "METHOD"]
    assert lines[2].split()[:7] == [
        "1",
        "process_payment",
        "compensate",
        "payment",
        "/shop.v1.PaymentService/RefundPayment",
        "4",
        key,
    ]
    assert "repeats an earlier attempt" in lines[2] and "asks GetOperation first" in lines[3]
    resolve = io.StringIO()
    render.preview(saga_pb2.SagaPreview(order_id="o-2", end_state=saga_pb2.SAGA_STATE_RESOLVED), resolve)
    assert resolve.getvalue().endswith("-> RESOLVED, no calls to any service\n")


def test_a_saga_of_another_type_is_named_by_type_and_key_its_steps_by_id_and_top_groups_steps_by_type() -> None:
    saga = saga_pb2.Saga(
        saga_id="saga-2",
        saga_type="order_loyalty",
        key="o-9",
        definition_hash="917436a53f0dcf569f1e327fc6456151",
        definition_version="1",
        state=saga_pb2.SAGA_STATE_SUCCEEDED,
        created_at=ts(T0),
        updated_at=ts(T0 + 1),
        steps=[
            saga_pb2.StepInfo(
                step=saga_pb2.STEP_PROCESS_PAYMENT,
                step_id="process_payment",
                kind="pivot",
                status=saga_pb2.STEP_STATUS_SUCCEEDED,
                started_at=ts(T0),
                updated_at=ts(T0 + 0.5),
            ),
            saga_pb2.StepInfo(
                step_id="award_points",
                kind="retriable",
                status=saga_pb2.STEP_STATUS_SUCCEEDED,
                started_at=ts(T0 + 0.5),
                updated_at=ts(T0 + 1),
            ),
        ],
    )
    out = io.StringIO()
    render.saga_detail(saga, out, now=T0 + 2)
    text = out.getvalue()
    assert "order " not in text.splitlines()[0]  # no order id to show
    assert "type      order_loyalty   key o-9" in text and "order_loyalty v1 · 917436a5" in text
    (award,) = [line for line in text.splitlines() if line.startswith("award_points")]
    assert award.split()[:3] == ["award_points", "retriable", "SUCCEEDED"]
    assert "pivot *" in text
    assert render.saga_rows([saga])[0][:3] == ["order_loyalty/o-9", "order_loyalty v1 · 917436a5", "SUCCEEDED"]
    letter = saga_pb2.DeadLetter(
        saga_type="order_loyalty", key="o-9", step_id="award_points", action=saga_pb2.ACTION_FORWARD
    )
    assert render.dead_letter_rows([letter])[0][:4] == ["o-9", "order_loyalty", "award_points", "forward"]
    old = saga_pb2.DeadLetter(order_id="o-1", step=saga_pb2.STEP_PROCESS_PAYMENT)
    assert render.dead_letter_rows([old])[0][:4] == ["o-1", "order", "process_payment", "compensate"]
