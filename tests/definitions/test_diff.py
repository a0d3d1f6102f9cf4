"""saga-defs diff: the changes between two definitions, by step id, each with what it means for new sagas, and the
statement that sagas in flight finish on their own version; the command's text, --json and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.definitions import Definition, check, from_document, load
from common.definitions.diff import Change, Op, diff
from tests.definitions.conftest import BROKEN, ORDER, REPO_ROOT, order_doc, saga_defs

LOYALTY = REPO_ROOT / "docs" / "definitions" / "order_loyalty.yaml"


def version(doc: dict[str, Any]) -> Definition:
    return from_document(doc, "variant")


def changes(doc: dict[str, Any]) -> list[tuple[str, Op, Any, Any]]:
    """The order flow against the variant `doc`: (where, op, old, new) of every change."""
    return [(c.where, c.op, c.old, c.new) for c in diff(check.order_flow(), version(doc)).changes]


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_file_against_itself_is_the_same_definition() -> None:
    found = diff(check.order_flow(), load(ORDER))
    assert found.same and found.changes == ()
    assert found.lines() == [f"same definition: order version 1 hash {check.order_flow().hash}"]


def test_layout_and_implicit_defaults_do_not_make_a_difference() -> None:
    doc = order_doc()
    del doc["steps"][0]["kind"]  # compensable is the default
    assert diff(check.order_flow(), version(doc)).same


def test_a_reordered_step_is_a_reorder_not_a_removal() -> None:
    doc = order_doc()
    doc["steps"][2], doc["steps"][3] = doc["steps"][3], doc["steps"][2]
    found = diff(check.order_flow(), version(doc))
    assert [(c.where, c.op) for c in found.changes] == [("/steps", Op.CHANGED)]
    assert found.changes[0].new == ["create_order", "reserve_inventory", "schedule_shipment", "process_payment"]
    assert found.new_sagas == [
        "new sagas run the steps in the order create_order, reserve_inventory, schedule_shipment, process_payment"
    ]


def test_a_changed_policy_is_shown_per_key_with_old_and_new() -> None:
    a, b = order_doc(), order_doc()
    a["steps"][2]["policy"] = {"forward": {"max_attempts": 3}}
    b["steps"][2]["policy"] = {"forward": {"max_attempts": 5}, "codes": {"rejected": ["ABORTED"]}}
    found = diff(version(a), version(b))
    assert [(c.where, c.op, c.old, c.new) for c in found.changes] == [
        ("/steps/process_payment/policy/codes/rejected", Op.ADDED, None, ["ABORTED"]),
        ("/steps/process_payment/policy/forward/max_attempts", Op.CHANGED, 3, 5),
    ]
    assert str(found.changes[1]) == "changed /steps/process_payment/policy/forward/max_attempts: 3 -> 5"
    assert found.new_sagas == ["new sagas retry process_payment by another policy"]


def test_defaults_show_on_every_step_they_reach() -> None:
    doc = order_doc()
    doc["defaults"] = {"compensate": {"max_attempts": 50}}
    assert [w for w, *_ in changes(doc)] == [
        f"/steps/{s}/policy/compensate/max_attempts"
        for s in ("create_order", "reserve_inventory", "process_payment", "schedule_shipment")
    ]


def test_a_removed_step_is_skipped_by_new_sagas() -> None:
    doc = order_doc()
    del doc["steps"][3]
    found = diff(check.order_flow(), version(doc))
    [removed] = found.changes
    assert (removed.where, removed.op, removed.new) == ("/steps/schedule_shipment", Op.REMOVED, None)
    assert removed.old["method"] == "shop.v1.ShippingService/ScheduleShipment"
    assert found.new_sagas == ["new sagas skip schedule_shipment"]


def test_a_changed_request_field_is_named_by_its_pointer() -> None:
    doc = order_doc()
    doc["steps"][2]["call"]["request"]["currency"] = "EUR"
    doc["steps"][0]["compensation"]["request"] = {"order_id": "$input.order_id", "reason": "undo"}
    assert changes(doc) == [
        ("/steps/create_order/compensation/request/forward_idempotency_key", Op.REMOVED, "$forward_key", None),
        ("/steps/create_order/compensation/request/reason", Op.CHANGED, "saga compensation", "undo"),
        ("/steps/process_payment/call/request/currency", Op.CHANGED, "$input.payment_info.currency", "EUR"),
    ]


def test_labels_input_and_ttl() -> None:
    doc = order_doc()
    doc["version"] = "2"
    doc["ttl_ms"] = {"default": 60000, "max": 120000}
    found = diff(check.order_flow(), version(doc))
    assert [(c.where, c.op, c.old, c.new) for c in found.changes] == [
        ("/version", Op.CHANGED, "1", "2"),
        ("/ttl_ms/default", Op.ADDED, None, 60000),
        ("/ttl_ms/max", Op.ADDED, None, 120000),
    ]
    assert "new sagas get 60000 ms as the default TTL" in found.new_sagas


def test_order_against_order_loyalty() -> None:
    found = diff(check.order_flow(), load(LOYALTY))
    by_where = {c.where: c for c in found.changes}
    assert by_where["/name"].new == "order_loyalty"
    assert by_where["/steps/award_points"].op is Op.ADDED
    assert by_where["/steps/award_points"].new["kind"] == "retriable"
    assert by_where["/steps/process_payment/kind"] == Change(
        "/steps/process_payment/kind",
        Op.CHANGED,
        "compensable",
        "pivot",
        "in new sagas process_payment is the point of no return: once it succeeded the saga only goes forward",
    )
    assert by_where["/steps"].new[-1] == "process_payment"  # schedule_shipment now runs before the payment
    assert "new sagas also run award_points (shop.v1.LoyaltyService/AwardPoints)" in found.new_sagas
    assert found.in_flight.startswith("different saga types (order, order_loyalty): committing B moves the alias")
    assert "pinned to the hash of the definition it started on" in found.in_flight


def test_in_flight_sagas_always_finish_on_their_version() -> None:
    doc = order_doc()
    del doc["steps"][3]
    found = diff(check.order_flow(), version(doc))
    assert found.in_flight.startswith("sagas started on A can finish while B is the alias order's target: every saga")


def test_diff_command_prints_both_files_the_changes_and_what_they_mean(tmp_path: Path) -> None:
    doc = order_doc()
    del doc["steps"][3]
    b = write(tmp_path / "v2.yaml", doc)
    run = saga_defs("diff", ORDER, b)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"A: {ORDER}: order version 1 hash {check.order_flow().hash}"
    assert lines[1].startswith(f"B: {b}: order version 1 hash ")
    assert lines[2].startswith('removed /steps/schedule_shipment: {"compensation": "shop.v1.ShippingService/Cancel')
    assert lines[3].startswith("in-flight: sagas started on A can finish while B is the alias order's target")
    assert lines[4:] == ["new sagas:", "  - new sagas skip schedule_shipment"]


def test_diff_command_same_definition() -> None:
    run = saga_defs("diff", ORDER, ORDER)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == f"same definition: order version 1 hash {check.order_flow().hash}"


def test_diff_json() -> None:
    run = saga_defs("diff", "--json", ORDER, LOYALTY)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert [f["ok"] for f in out["files"]] == [True, True]
    assert (out["a"]["name"], out["b"]["name"], out["same"]) == ("order", "order_loyalty", False)
    assert {"where": "/steps/award_points", "op": "added"}.items() <= out["changes"][2].items()
    assert "pinned" in out["in_flight"]
    assert "new sagas also run award_points (shop.v1.LoyaltyService/AwardPoints)" in out["new_sagas"]


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_diff_with_a_broken_file_prints_its_problems_and_exits_1(json_flag: list[str]) -> None:
    broken = BROKEN / "pivot.more-than-one.yaml"
    run = saga_defs("diff", *json_flag, ORDER, broken)
    assert run.returncode == 1
    if json_flag:
        out = json.loads(run.stdout)
        assert [f["ok"] for f in out["files"]] == [True, False]
        assert "changes" not in out
    else:
        assert run.stdout.startswith(f"{broken}:/steps/3/kind: pivot.more-than-one: ")


def test_diff_takes_two_files() -> None:
    assert saga_defs("diff", ORDER).returncode == 2
