"""Pure tables: transitions, reply classification, input validation, configuration, sealing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.config import ConfigError, GroupCommit, Limits, ShardConfig, load
from coordinator.saga.errors import CallClass, InvalidRequest, classify
from coordinator.saga.model import TRANSITIONS, IllegalTransition, SagaState, StepStatus, check_transition
from coordinator.saga.record import SagaRecord, StepProgress
from coordinator.saga.validation import validate_place_order
from coordinator.security.sealing import Sealer, SealError, new_key_ring
from protos.saga.v1 import saga_pb2
from tests.helpers.order_flow import PROCESS_PAYMENT

from .conftest import order


def test_transition_table() -> None:
    legal = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert legal == {
        (SagaState.RUNNING, SagaState.SUCCEEDED),
        (SagaState.RUNNING, SagaState.COMPENSATING),
        # A retriable step (after the pivot) failed for good: parked, then resumed forward by an operator.
        (SagaState.RUNNING, SagaState.DEAD_LETTERED),
        (SagaState.DEAD_LETTERED, SagaState.RUNNING),
        (SagaState.COMPENSATING, SagaState.FAILED),
        (SagaState.COMPENSATING, SagaState.DEAD_LETTERED),
        (SagaState.DEAD_LETTERED, SagaState.COMPENSATING),
        (SagaState.DEAD_LETTERED, SagaState.RESOLVED),
    }
    for a in SagaState:
        for b in SagaState:
            if (a, b) in legal:
                check_transition(a, b)
            else:
                with pytest.raises(IllegalTransition):
                    check_transition(a, b)
    assert {s for s in SagaState if s.terminal} == {SagaState.SUCCEEDED, SagaState.FAILED, SagaState.RESOLVED}


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("OK", CallClass.OK),
        ("UNAVAILABLE", CallClass.TRANSIENT),
        ("DEADLINE_EXCEEDED", CallClass.TRANSIENT),
        ("RESOURCE_EXHAUSTED", CallClass.TRANSIENT),
        ("ABORTED", CallClass.TRANSIENT),
        ("FAILED_PRECONDITION", CallClass.REJECTED),
        ("INVALID_ARGUMENT", CallClass.REJECTED),
        ("INTERNAL", CallClass.UNKNOWN),
        ("ALREADY_EXISTS", CallClass.UNKNOWN),
        ("UNKNOWN", CallClass.UNKNOWN),
    ],
)
def test_reply_classification(code: str, cls: CallClass) -> None:
    assert classify(grpc.StatusCode[code]) is cls
    assert cls.may_have_applied == (cls is not CallClass.REJECTED)


def test_every_status_code_is_classified() -> None:
    for code in grpc.StatusCode:
        assert isinstance(classify(code), CallClass)


@pytest.mark.parametrize(
    ("field", "mutate"),
    [
        ("order_id", lambda r: setattr(r, "order_id", "a b")),
        ("user_id", lambda r: setattr(r, "user_id", "")),
        ("items", lambda r: [r.items.add(item_id=f"i{i}", quantity=1) for i in range(100)]),
        ("items[1].item_id", lambda r: r.items.add(item_id="sku-1", quantity=1)),
        ("payment_info.payment_token", lambda r: setattr(r.payment_info, "payment_token", "4242424242424242")),
        ("payment_info.payment_token", lambda r: setattr(r.payment_info, "payment_token", "tok\n")),
        ("payment_info.amount_cents", lambda r: setattr(r.payment_info, "amount_cents", 10**10 + 1)),
        ("payment_info.currency", lambda r: setattr(r.payment_info, "currency", "EURO")),
    ],
)
def test_validation_names_the_field(field: str, mutate) -> None:
    req = order()
    mutate(req)
    with pytest.raises(InvalidRequest) as e:
        validate_place_order(req, Limits())
    assert e.value.field == field


@given(
    order_id=st.text(max_size=200),
    qty=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    amount=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    token=st.text(max_size=300),
)
def test_validation_never_crashes(order_id: str, qty: int, amount: int, token: str) -> None:
    req = saga_pb2.PlaceOrderRequest(
        order_id=order_id,
        user_id="u",
        items=[saga_pb2.Item(item_id="i", quantity=qty)],
        payment_info=saga_pb2.PaymentInfo(payment_token=token, amount_cents=amount, currency="EUR"),
    )
    try:
        validate_place_order(req, Limits())
    except InvalidRequest as e:
        assert e.field


def test_config_layers_and_errors(tmp_path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('shard_id = "s-9"\ndefault_ttl_ms = 1000\n[forward]\nmax_attempts = 3\n')
    cfg = load(f, env={"SAGA_SERVICES": "127.0.0.1:1", "SAGA_DATA_DIR": str(tmp_path)}, overrides={"listen": None})
    assert cfg.shard_id == "s-9" and cfg.forward.max_attempts == 3 and cfg.services.payment == "127.0.0.1:1"
    assert cfg.journal_path == str(tmp_path / "s-9.db")
    # A partial table changes what it names and keeps that table's own defaults for the rest.
    f.write_text("[compensate]\nmax_attempts = 4\n")
    compensate = load(f, env={}).compensate
    assert (compensate.max_attempts, compensate.max_backoff_ms) == (4, ShardConfig().compensate.max_backoff_ms)
    f.write_text("[group_commit]\nwindow_ms = 2\n")  # an int where the setting is a float: taken as 2.0
    assert load(f, env={}).group_commit == GroupCommit(window_ms=2.0, siblings=4)
    for text, message in [
        ("bogus = 1", "unknown setting bogus"),
        ("default_ttl_ms = 'x'", "default_ttl_ms must be int"),
        ("[forward]\nmax_attempts = 0", "forward.max_attempts"),
        ("listen = 'nope'", "listen must be host:port"),
        ("default_ttl_ms = 5\nmax_ttl_ms = 1", "default_ttl_ms <= max_ttl_ms"),
        ("[limits]\nmax_in_flight = 0", "limits.max_in_flight"),
        ("[group_commit]\nwindow_ms = -1", "group_commit: need 0 <= window_ms"),
        ("[group_commit]\nsiblings = 1", "siblings >= 2"),
        ("x = [", "not valid TOML"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load(f, env={})


def test_sealing_round_trip_and_tamper(tmp_path: Path) -> None:
    s = Sealer(new_key_ring(str(tmp_path / "keys")))
    blob = s.seal("saga-1", b"tok_ok|2599|EUR")
    assert b"tok_ok" not in blob and s.open("saga-1", blob) == b"tok_ok|2599|EUR"
    with pytest.raises(SealError):
        s.open("saga-1", blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(SealError):
        s.open("saga-2", blob)


def test_saga_record_copy_is_deep_for_steps_and_complete() -> None:
    rec = SagaRecord(
        "s",
        "o",
        "u",
        b"r",
        b"p",
        "h",
        SagaState.RUNNING,
        1,
        2,
        3,
        "err",
        "parked",
        next_seq=7,
        trace_context="00-tp",
        definition_hash="d1",
        retained_only=True,
    )
    rec.progress(PROCESS_PAYMENT.number).forward_attempts = 2
    # Every field holds a value other than its default (a field added later must be set here, and in copy()) ...
    assert all(getattr(rec, f.name) != f.default for f in dataclasses.fields(rec))
    c = rec.copy()
    # ... and is carried over ...
    assert c == rec and c == dataclasses.replace(rec)
    # ... and the steps are the copy's own.
    c.steps[PROCESS_PAYMENT.number].forward_attempts = 3
    assert rec.steps[PROCESS_PAYMENT.number].forward_attempts == 2


def test_step_progress_copy_is_complete() -> None:
    progress = StepProgress(
        PROCESS_PAYMENT.number, StepStatus.COMPENSATING, *range(1, 3), "e", "OK", *range(3, 18), b"response"
    )
    assert all(getattr(progress, f.name) != f.default for f in dataclasses.fields(progress))
    assert progress.copy() == progress and progress.copy() is not progress
