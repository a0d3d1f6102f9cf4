"""The long-running rule grammar (lro_rules.py) and the operation arithmetic, without a server or a clock."""

from __future__ import annotations

import pytest

from protos.shop.v1 import common_pb2
from service_stubs.errors import InvalidArgument
from service_stubs.keys import KeyRecord
from service_stubs.lro_rules import MAX_LRO_S, NEVER, NO_RULES, Lro, LroRules, field_rules, item_rules, lro_rule
from service_stubs.operations import MAX_POLL_AFTER_MS, MIN_POLL_AFTER_MS, poll_after_ms


def rule(what: str, *values: str) -> Lro | None:
    return lro_rule(what, [(f"field{index}", value) for index, value in enumerate(values)])


@pytest.mark.parametrize(
    ("what", "values", "expected"),
    [
        ("charge", ["tok_lro-charge-2s"], Lro(2_000)),
        ("charge", ["tok_lro-charge-0s"], Lro(0)),
        ("charge", ["tok_lro-charge-never"], NEVER),
        ("charge", ["tok_lro-refund-3s"], None),  # the refund's rule, not the charge's
        ("refund", ["tok_lro-refund-3s"], Lro(3_000)),
        ("charge", ["tok_lro-charge-1s-lro-refund-5s"], Lro(1_000)),
        ("reserve", ["lro-reserve-2s-sku1"], Lro(2_000)),
        ("reserve", ["x-lro-reserve-007s"], Lro(7_000)),
        ("reserve", ["lro-reserve-1s-a", "lro-reserve-4s-b", "plain"], Lro(4_000)),  # the longest wins
        ("reserve", ["lro-reserve-1s-a", "lro-reserve-never-b"], NEVER),
        ("cancel", ["lro-cancelorder-2s"], None),  # "cancel" is not a prefix match of "cancelorder"
        ("cancelorder", ["lro-cancelorder-2s"], Lro(2_000)),
        ("cancel", ["lro-cancel-2s"], Lro(2_000)),
        ("schedule", ["lro-schedule-s"], None),  # no number
        ("schedule", ["lro-schedule-2"], None),  # no unit
        ("create", ["LRO-create-2s"], None),  # case matters
        ("create", ["tok_visa"], None),
    ],
)
def test_grammar(what: str, values: list[str], expected: Lro | None) -> None:
    assert rule(what, *values) == expected


def test_a_rule_longer_than_the_bound_names_the_field_not_the_value() -> None:
    assert rule("charge", f"tok_lro-charge-{MAX_LRO_S}s") == Lro(MAX_LRO_S * 1000)
    with pytest.raises(InvalidArgument) as info:
        lro_rule("charge", [("payment_token", f"tok_secret_lro-charge-{MAX_LRO_S + 1}s")])
    assert info.value.field == "payment_token"
    assert "secret" not in str(info.value)
    with pytest.raises(InvalidArgument):
        rule("charge", "tok_lro-charge-99999999999999999999999s")


def test_item_rules_read_every_item_for_both_calls() -> None:
    items = [common_pb2.Item(item_id="sku-1", quantity=1), common_pb2.Item(item_id="lro-release-3s-x", quantity=1)]
    assert item_rules(items, "reserve", "release") == LroRules(forward=None, undo=Lro(3_000))
    assert item_rules(items[:1], "reserve", "release") is NO_RULES
    with pytest.raises(InvalidArgument) as info:
        item_rules([*items, common_pb2.Item(item_id="lro-reserve-100000s", quantity=1)], "reserve", "release")
    assert info.value.field == "items[2].item_id"


def test_field_rules_read_one_field_for_both_calls() -> None:
    assert field_rules("user_id", "u-lro-award-2s-lro-revoke-never", "award", "revoke") == LroRules(
        forward=Lro(2_000), undo=NEVER
    )
    assert field_rules("user_id", "u-plain", "award", "revoke") is NO_RULES
    with pytest.raises(InvalidArgument) as info:
        field_rules("user_id", "u-lro-revoke-100000s", "award", "revoke")
    assert info.value.field == "user_id"


def operation(lro: Lro, accepted_at_ms: int) -> KeyRecord:
    return KeyRecord(
        key="k",
        method="ChargePayment",
        order_id="o",
        request_digest="d",
        answer=None,
        in_progress=True,
        lro=lro,
        accepted_at_epoch_ms=accepted_at_ms,
        request=b"",
    )


def test_due_and_poll_hint_follow_the_acceptance_time() -> None:
    record = operation(Lro(3_000), accepted_at_ms=10_000)
    assert record.due_at_epoch_ms == 13_000
    assert not record.due(12_999) and record.due(13_000)
    assert poll_after_ms(record, 10_000) == MAX_POLL_AFTER_MS
    assert poll_after_ms(record, 12_600) == 400
    assert poll_after_ms(record, 13_000) == MIN_POLL_AFTER_MS  # due: finished at the next read
    record.in_progress = False
    assert not record.due(20_000)


def test_never_is_never_due() -> None:
    record = operation(NEVER, accepted_at_ms=0)
    assert record.due_at_epoch_ms is None and not record.due(2**62)
    assert poll_after_ms(record, 0) == MAX_POLL_AFTER_MS
    assert record.code == ""
